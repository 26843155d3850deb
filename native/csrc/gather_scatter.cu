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
// One source, two compilers (native/kernels.py loads either):
// - nvcc builds it into a shared library (`nvcc -O3 -shared -Xcompiler -fPIC -arch=sm_XY`)
//   whose extern "C" host entry point launches on a cudaStream_t; loaded with ctypes;
// - NVRTC (through CuPy, where nvcc is absent: the usual pip-installed GPU machine) compiles
//   only the device part, __CUDACC_RTC__ defined; the module's kernels are looked up by their
//   extern "C" names (no C++ mangling) and launched with the driver API.
// Every index was validated in Python before either path launches.
#ifndef __CUDACC_RTC__
#include <cuda_runtime.h>
#include <stdint.h>
#endif

#include "gather_scatter_item.h"

// One CTA per (run, layer, K/V); its threads stride over (head, token, group). One kernel per
// group type: a 16-byte vector when the caller checked alignment and unit dim stride, else one
// element of the cache's width (elements are moved as raw bits, never interpreted).
#define TIERD_KERNEL(NAME, V)                                                                                        \
  extern "C" __global__ void __launch_bounds__(256)                                                                 \
      NAME(int gather, const int64_t* __restrict__ ptrs, const int64_t* __restrict__ strides, int64_t layer_lo,   \
           int64_t heads, int64_t head_dim, int64_t kvf, int64_t itemsize, const int64_t* __restrict__ chunk_ptrs, \
           int64_t chunk_tokens, const int64_t* __restrict__ runs) {                                                \
    copy_run<V>(gather != 0, ptrs, strides, layer_lo, heads, head_dim, kvf, itemsize, chunk_ptrs, chunk_tokens,    \
                runs, blockIdx.x, blockIdx.y, threadIdx.x, blockDim.x);                                             \
  }

// The names native/kernels.py looks up (ENTRY_POINTS there): keep the two lists equal.
TIERD_KERNEL(tierd_gather_scatter_u8, uint8_t)
TIERD_KERNEL(tierd_gather_scatter_u16, uint16_t)
TIERD_KERNEL(tierd_gather_scatter_u32, uint32_t)
TIERD_KERNEL(tierd_gather_scatter_u64, uint64_t)
TIERD_KERNEL(tierd_gather_scatter_v16, uint4)

#undef TIERD_KERNEL

#ifndef __CUDACC_RTC__  // the nvcc-built library's host side

namespace {

typedef void (*Kernel)(int, const int64_t*, const int64_t*, int64_t, int64_t, int64_t, int64_t, int64_t,
                       const int64_t*, int64_t, const int64_t*);

// The kernel for a launch, or null where no group type fits (an element width not 1, 2, 4, 8).
Kernel pick(int vectorise, int64_t itemsize) {
  if (vectorise) return tierd_gather_scatter_v16;
  switch (itemsize) {
    case 1: return tierd_gather_scatter_u8;
    case 2: return tierd_gather_scatter_u16;
    case 4: return tierd_gather_scatter_u32;
    case 8: return tierd_gather_scatter_u64;
    default: return nullptr;
  }
}

}  // namespace

extern "C" {

int tierd_cuda_abi(void) { return 3; }

// 0 when this library's kernels can run on the current device (its image loads: the driver is
// new enough for the runtime linked in, and the image has code for this GPU), else the cudaError.
// Called once when the library is chosen, so an unusable one is passed over for NVRTC.
int tierd_cuda_probe(void) {
  cudaFuncAttributes attributes;
  const cudaError_t rc = cudaFuncGetAttributes(&attributes, reinterpret_cast<const void*>(pick(0, 1)));
  cudaGetLastError();  // the probe's error is answered here, not left for the next launch
  return static_cast<int>(rc);
}

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
  const Kernel kernel = pick(vectorise, itemsize);
  if (kernel == nullptr) return static_cast<int>(cudaErrorInvalidValue);
  dim3 grid(static_cast<unsigned>(num_runs), static_cast<unsigned>(kv_factor * (layer_hi - layer_lo)));
  kernel<<<grid, 256, 0, static_cast<cudaStream_t>(stream)>>>(direction == 0, ptrs, strides, layer_lo, heads, head_dim,
                                                              kv_factor, itemsize, chunk_ptrs, chunk_tokens, runs);
  return static_cast<int>(cudaGetLastError());
}

}  // extern "C"

#endif  // __CUDACC_RTC__
