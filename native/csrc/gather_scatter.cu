// CUDA gather/scatter between a paged KV cache and tierd's canonical chunk layout.
//
// Same descriptor as the CPU library (gather_scatter_cpu.cpp): per (layer, K/V) the address
// of element (block 0, head 0, token 0, dim 0) and element strides (block, head, token, dim);
// runs of (chunk, chunk token, block, block token, count); chunks canonical
// [layers, 2, chunk_tokens, heads * head_dim]. One launch moves every run of every layer of a
// batch of chunks: strata/HiCache show a copy per block cannot fill PCIe.
//
// The chunk pointers may be device memory or pinned host memory registered with
// cudaHostRegister (UVA makes the host address valid on the device), so a gather can write
// straight into tierd's shared-memory arena with no staging copy.
//
// Loaded with ctypes from native/cuda.py; every index was validated there. Built with
// `nvcc -O3 -shared -Xcompiler -fPIC` only where nvcc and a CUDA-enabled torch exist.
#include <cuda_runtime.h>
#include <stdint.h>

#include "gather_scatter_item.h"

namespace {

// One CTA per (run, layer, K/V); its threads stride over (head, token, group).
template <typename V>
__global__ void copy_kernel(bool gather, const int64_t* __restrict__ ptrs, const int64_t* __restrict__ strides,
                            int64_t layer_lo, int64_t heads, int64_t head_dim, int64_t kvf, int64_t itemsize,
                            const int64_t* __restrict__ chunk_ptrs, int64_t chunk_tokens,
                            const int64_t* __restrict__ runs) {
  copy_run<V>(gather, ptrs, strides, layer_lo, heads, head_dim, kvf, itemsize, chunk_ptrs, chunk_tokens, runs,
              blockIdx.x, blockIdx.y, threadIdx.x, blockDim.x);
}

template <typename V>
void launch(bool gather, const int64_t* ptrs, const int64_t* strides, int64_t layer_lo, int64_t layer_hi,
            int64_t heads, int64_t head_dim, int64_t kvf, int64_t itemsize, const int64_t* chunk_ptrs,
            int64_t chunk_tokens, const int64_t* runs, int64_t num_runs, cudaStream_t stream) {
  dim3 grid(static_cast<unsigned>(num_runs), static_cast<unsigned>(kvf * (layer_hi - layer_lo)));
  copy_kernel<V><<<grid, 256, 0, stream>>>(gather, ptrs, strides, layer_lo, heads, head_dim, kvf, itemsize,
                                           chunk_ptrs, chunk_tokens, runs);
}

}  // namespace

extern "C" {

int tierd_cuda_abi(void) { return 2; }

// All pointer arrays (ptrs, strides, chunk_ptrs, runs) are device-readable (device memory or
// mapped pinned host memory). vectorise: 1 when the caller checked that every paged row has
// dim stride 1 and every row start is 16-byte aligned on both sides (then 16-byte loads and
// stores); 0 for element-wise copies. Returns the cudaError_t of the launch.
int tierd_cuda_gather_scatter(int direction, const int64_t* ptrs, const int64_t* strides, int64_t layer_lo,
                              int64_t layer_hi, int64_t heads, int64_t head_dim, int64_t kv_factor, int64_t itemsize,
                              const int64_t* chunk_ptrs, int64_t chunk_tokens, const int64_t* runs, int64_t num_runs,
                              int vectorise, void* stream) {
  if (num_runs == 0 || layer_hi <= layer_lo) return 0;
  if (kv_factor != 1 && kv_factor != 2) return static_cast<int>(cudaErrorInvalidValue);
  const bool gather = direction == 0;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  if (vectorise) {
    launch<uint4>(gather, ptrs, strides, layer_lo, layer_hi, heads, head_dim, kv_factor, itemsize, chunk_ptrs, chunk_tokens, runs,
                  num_runs, st);
  } else {
    switch (itemsize) {
      case 1:
        launch<uint8_t>(gather, ptrs, strides, layer_lo, layer_hi, heads, head_dim, kv_factor, itemsize, chunk_ptrs, chunk_tokens,
                        runs, num_runs, st);
        break;
      case 2:
        launch<uint16_t>(gather, ptrs, strides, layer_lo, layer_hi, heads, head_dim, kv_factor, itemsize, chunk_ptrs,
                         chunk_tokens, runs, num_runs, st);
        break;
      case 4:
        launch<uint32_t>(gather, ptrs, strides, layer_lo, layer_hi, heads, head_dim, kv_factor, itemsize, chunk_ptrs,
                         chunk_tokens, runs, num_runs, st);
        break;
      case 8:
        launch<uint64_t>(gather, ptrs, strides, layer_lo, layer_hi, heads, head_dim, kv_factor, itemsize, chunk_ptrs,
                         chunk_tokens, runs, num_runs, st);
        break;
      default:
        return static_cast<int>(cudaErrorInvalidValue);
    }
  }
  return static_cast<int>(cudaGetLastError());
}

}  // extern "C"
