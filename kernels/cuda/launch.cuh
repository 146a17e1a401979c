// LaunchKernel(kernel, grid, block, shared_bytes, stream, args...): the one
// place kernels are launched, so that a host build of the kernel sources can
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

}  // namespace mla::cuda::detail
#endif  // __CUDACC__
