// Host emulation of the CUDA gather/scatter launch, for the tests only: it runs the kernel's
// own body (gather_scatter_item.h) over the same grid and thread striding on the CPU, with the
// same extern "C" entry point as gather_scatter.cu. On a machine without a GPU this is how the
// CUDA addressing, the 16-byte grouping and the launcher's alignment checks get checked
// against the pure-torch reference. It says nothing about streams, pinning or speed.
#include <cstdint>

#define TIERD_HD
struct alignas(16) uint4 {
  uint32_t x, y, z, w;
};
#include "gather_scatter_item.h"

namespace {

constexpr int kThreads = 256;  // as the real launch

template <typename V>
void emulate(bool gather, const int64_t* ptrs, const int64_t* strides, int64_t layer_lo, int64_t layer_hi,
             int64_t heads, int64_t head_dim, int64_t kvf, int64_t itemsize, const int64_t* chunk_ptrs,
             int64_t chunk_tokens, const int64_t* runs, int64_t num_runs) {
  for (int64_t r = 0; r < num_runs; ++r)
    for (int64_t y = 0; y < kvf * (layer_hi - layer_lo); ++y)
      for (int thread = 0; thread < kThreads; ++thread)
        copy_run<V>(gather, ptrs, strides, layer_lo, heads, head_dim, kvf, itemsize, chunk_ptrs, chunk_tokens, runs, r,
                    y, thread, kThreads);
}

}  // namespace

extern "C" {

int tierd_cuda_abi(void) { return 3; }

int tierd_cuda_probe(void) { return 0; }  // the host can always run the emulation

int tierd_cuda_gather_scatter(int direction, const int64_t* ptrs, const int64_t* strides, int64_t layer_lo,
                              int64_t layer_hi, int64_t heads, int64_t head_dim, int64_t kv_factor, int64_t itemsize,
                              const int64_t* chunk_ptrs, int64_t chunk_tokens, const int64_t* runs, int64_t num_runs,
                              int vectorise, void* /*stream*/) {
  const bool gather = direction == 0;
#define TIERD_EMULATE(T) \
  emulate<T>(gather, ptrs, strides, layer_lo, layer_hi, heads, head_dim, kv_factor, itemsize, chunk_ptrs, chunk_tokens, \
             runs, num_runs)
  if (vectorise) {
    TIERD_EMULATE(uint4);
    return 0;
  }
  switch (itemsize) {
    case 1: TIERD_EMULATE(uint8_t); return 0;
    case 2: TIERD_EMULATE(uint16_t); return 0;
    case 4: TIERD_EMULATE(uint32_t); return 0;
    case 8: TIERD_EMULATE(uint64_t); return 0;
    default: return 1;
  }
#undef TIERD_EMULATE
}

}  // extern "C"
