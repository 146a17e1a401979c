// Device helpers shared by the kernels in this folder: BF16 conversion, warp
// and block reductions. Included only by .cu files.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#if defined(__CUDACC__)
// The block's dynamic shared memory, as `unsigned char name[]`, 16-byte
// aligned. (A host build of the kernels, tests/emu/cuda_emu.h, defines its own.)
#define MLA_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#endif

namespace mla::cuda::detail {

constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }
// Round to nearest even, as kernels/cpu/float_convert.h FloatToBf16 does.
__device__ __forceinline__ __nv_bfloat16 ToBf16(float v) { return __float2bfloat16_rn(v); }

template <typename T>
__device__ __forceinline__ T WarpSum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

// Sum over the block, returned to every thread. blockDim.x must be a multiple
// of 32 and every thread must call it. scratch: [32] in shared memory. The
// summation order depends only on blockDim, so results are run-to-run stable.
template <typename T>
__device__ __forceinline__ T BlockSum(T v, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = WarpSum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  return WarpSum(lane < warps ? scratch[lane] : T(0));
}

// Max over the block, returned to every thread (same contract as BlockSum).
__device__ __forceinline__ float BlockMax(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = WarpMax(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  return WarpMax(lane < warps ? scratch[lane] : -INFINITY);
}

__host__ __device__ constexpr int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

#if defined(__CUDACC__)
// Programmatic dependent launch (launch.cuh's LaunchKernelPdl, sm_90). Wait:
// returns once the grids this one depends on have finished and their writes
// are visible (at once for a grid launched without the attribute). Launch:
// this block no longer holds back the next grid's launch (it still waits for
// this one's results through its own GridDependencyWait). (A host build of
// the kernels, tests/emu/cuda_emu.h, runs grids one after another and defines
// both as no-ops.)
__device__ __forceinline__ void GridDependencyWait() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }
__device__ __forceinline__ void GridDependentsLaunch() {
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
}
#endif

inline bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace mla::cuda::detail
