// The body of the CUDA gather/scatter kernel: what one CTA does for one (run, layer, K/V).
// Kept apart from the kernel so the tests can compile it for the host too
// (gather_scatter_emulated.cpp) and check its addressing against the pure-torch reference on
// machines without a GPU. Descriptor: see gather_scatter.cu.
#pragma once
#ifdef __CUDACC_RTC__
// NVRTC compiles without the C library's headers: the fixed-width types the kernels use.
typedef signed char int8_t;
typedef unsigned char uint8_t;
typedef unsigned short uint16_t;
typedef int int32_t;
typedef unsigned int uint32_t;
typedef long long int64_t;
typedef unsigned long long uint64_t;
#else
#include <stdint.h>
#endif

#ifndef TIERD_HD
#define TIERD_HD __host__ __device__
#endif

// Copies every element group of run `r` for grid row `y` (= kvf * (layer - layer_lo) + kv), the
// groups first, first + step, ... (a CTA passes threadIdx.x and blockDim.x). V is the group:
// a 16-byte vector when the caller checked alignment and unit dim stride, else one element.
template <typename V>
TIERD_HD inline void copy_run(bool gather, const int64_t* ptrs, const int64_t* strides, int64_t layer_lo,
                              int64_t heads, int64_t head_dim, int64_t kvf, int64_t itemsize, const int64_t* chunk_ptrs,
                              int64_t chunk_tokens, const int64_t* runs, int64_t r, int64_t y, int first, int step) {
  const int64_t layer = layer_lo + y / kvf;
  const int64_t kv = y % kvf;
  const int64_t* run = runs + 5 * r;
  const int64_t* s = strides + 4 * (kvf * layer + kv);  // block, head, token, dim
  const int64_t row = heads * head_dim;             // canonical elements per token
  char* paged = reinterpret_cast<char*>(ptrs[kvf * layer + kv]) + (run[2] * s[0] + run[3] * s[2]) * itemsize;
  char* chunk = reinterpret_cast<char*>(chunk_ptrs[run[0]]) + ((layer * kvf + kv) * chunk_tokens + run[1]) * row * itemsize;
  // 32-bit arithmetic inside one run (heads * tokens * vectors is far below 2^31): 64-bit
  // division would cost more than the 16-byte copy it addresses.
  const int per_vec = static_cast<int>(sizeof(V) / itemsize);  // elements per group
  const int vecs = static_cast<int>(head_dim) / per_vec;      // groups per head row
  const int tokens = static_cast<int>(run[4]);
  const int total = static_cast<int>(heads) * tokens * vecs;
  for (int i = first; i < total; i += step) {
    const int v = i % vecs;
    const int t = (i / vecs) % tokens;
    const int h = i / (vecs * tokens);
    const int64_t d = static_cast<int64_t>(v) * per_vec;
    // With a 16-byte group the paged dim stride is 1 (checked by the launcher).
    V* p = reinterpret_cast<V*>(paged + (h * s[1] + t * s[2] + d * s[3]) * itemsize);
    V* c = reinterpret_cast<V*>(chunk + (t * row + h * head_dim + d) * itemsize);
    if (gather)
      *c = *p;
    else
      *p = *c;
  }
}
