// LaunchKernel(kernel, grid, block, shared_bytes, stream, args...) and
// LaunchKernelPdl (the same with a programmatic-dependent-launch flag): the
// one place kernels are launched, so that a host build of the kernel sources can
// run them on the CPU instead (tests/emu/cuda_emu.h defines it there). Returns
// the launch's error (cudaGetLastError).
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>
#include <utility>

namespace mla::cuda::detail {

// Devices whose per-device state the kernels cache (opt-ins, SM counts).
inline constexpr int kMaxDevices = 64;

// Opts Kernel into `bytes` of dynamic shared memory (above the 48 KiB every
// kernel may use), once per device: the attribute belongs to the current
// device, and setting it twice from two threads is harmless. Runtime calls
// only, so the emulator's host build shares it.
template <auto Kernel>
cudaError_t OptIntoDynamicShared(int bytes) {
  static std::atomic<bool> done[kMaxDevices];
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  const bool cached = device >= 0 && device < kMaxDevices;
  if (cached && done[device].load(std::memory_order_acquire)) return cudaSuccess;
  err = cudaFuncSetAttribute(reinterpret_cast<const void*>(Kernel), cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (err == cudaSuccess && cached) done[device].store(true, std::memory_order_release);
  return err;
}

}  // namespace mla::cuda::detail

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
