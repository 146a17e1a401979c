// LaunchKernel(kernel, grid, block, shared_bytes, stream, args...) and
// LaunchKernelPdl (the same with a programmatic-dependent-launch flag): the
// one place kernels are launched, so that a host build of the kernel sources can
// run them on the CPU instead (tests/emu/cuda_emu.h defines it there). Returns
// the launch's error (cudaGetLastError).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <utility>

#if defined(__CUDACC__)
namespace mla::cuda::detail {

template <typename... Params, typename... Args>
cudaError_t LaunchKernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream,
                         Args&&... args) {
  kernel<<<grid, block, shared_bytes, stream>>>(std::forward<Args>(args)...);
  return cudaGetLastError();
}

// The same, with programmatic dependent launch where `pdl` (sm_90): the grid
// may start before the kernel ahead of it in the stream has finished, once
// every block of that one has called GridDependentsLaunch (or exited), so its
// launch and block scheduling overlap the other's tail. The kernel must call
// GridDependencyWait (device_utils.cuh) before it reads anything the kernels
// ahead of it wrote.
template <typename... Params, typename... Args>
cudaError_t LaunchKernelPdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream,
                            bool pdl, Args&&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared_bytes;
  config.stream = stream;
  cudaLaunchAttribute attribute[1] = {};
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attribute;
  config.numAttrs = pdl ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

}  // namespace mla::cuda::detail
#endif  // __CUDACC__
