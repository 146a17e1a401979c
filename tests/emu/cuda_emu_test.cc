// The emulator's own rules, where a real launch would fail and the kernel
// tests alone would not notice the emulator letting it through: the launch
// limits (grid y/z, block size), dynamic shared memory above 48 KiB only after
// cudaFuncSetAttribute on the same device, and (in the _asan build) a kernel
// reading past a cudaMalloc'd buffer stopped by AddressSanitizer.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdlib>

#include "kernels/cuda/launch.cuh"

namespace mla {
namespace {

using cuda::detail::LaunchKernel;

__global__ void FillShared(int* out, int n) {
  MLA_DYNAMIC_SHARED(raw);
  int* s = reinterpret_cast<int*>(raw);
  for (int i = static_cast<int>(threadIdx.x); i < n; i += static_cast<int>(blockDim.x)) s[i] = i;
  __syncthreads();
  if (threadIdx.x == 0) out[blockIdx.x] = s[n - 1];
}

constexpr size_t kBig = 100 * 1024;  // above the 48 KiB every kernel may use

TEST(CudaEmuTest, LaunchLimitsAsOnTheHardware) {
  int* out = nullptr;
  ASSERT_EQ(cudaMalloc(&out, sizeof(int) * 4), cudaSuccess);
  EXPECT_EQ(LaunchKernel(FillShared, dim3(1, 65535), 32, 64, nullptr, out, 16), cudaSuccess);
  EXPECT_EQ(LaunchKernel(FillShared, dim3(1, 65536), 32, 64, nullptr, out, 16), cudaErrorInvalidConfiguration);
  EXPECT_EQ(LaunchKernel(FillShared, dim3(1, 1, 65536), 32, 64, nullptr, out, 16), cudaErrorInvalidConfiguration);
  EXPECT_EQ(LaunchKernel(FillShared, 1, 1056, 64, nullptr, out, 16), cudaErrorInvalidConfiguration);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);  // read once, then cleared
  EXPECT_EQ(cudaFree(out), cudaSuccess);
}

TEST(CudaEmuTest, SharedMemoryAbove48KiBNeedsTheOptInOnThatDevice) {
  ::setenv("MLA_EMU_DEVICE_COUNT", "2", 1);
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  int* out = nullptr;
  ASSERT_EQ(cudaMalloc(&out, sizeof(int) * 2), cudaSuccess);
  const int n = static_cast<int>(kBig / sizeof(int));
  EXPECT_EQ(LaunchKernel(FillShared, 2, 128, 48 * 1024, nullptr, out, 16), cudaSuccess);
  EXPECT_EQ(LaunchKernel(FillShared, 2, 128, kBig, nullptr, out, n), cudaErrorInvalidConfiguration);
  cudaGetLastError();

  const void* fn = reinterpret_cast<const void*>(&FillShared);
  EXPECT_EQ(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, 228 * 1024),
            cudaErrorInvalidValue);  // above the H100's 227 KiB
  cudaGetLastError();
  ASSERT_EQ(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kBig)),
            cudaSuccess);
  ASSERT_EQ(LaunchKernel(FillShared, 2, 128, kBig, nullptr, out, n), cudaSuccess);
  int got[2] = {0, 0};
  ASSERT_EQ(cudaMemcpy(got, out, sizeof(got), cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(got[0], n - 1);
  EXPECT_EQ(got[1], n - 1);
  EXPECT_EQ(LaunchKernel(FillShared, 1, 128, kBig + 16, nullptr, out, n), cudaErrorInvalidConfiguration);
  cudaGetLastError();

  // The attribute is the device's: device 1 has not opted in.
  ASSERT_EQ(cudaSetDevice(1), cudaSuccess);
  EXPECT_EQ(LaunchKernel(FillShared, 1, 128, kBig, nullptr, out, n), cudaErrorInvalidConfiguration);
  cudaGetLastError();
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  EXPECT_EQ(cudaFree(out), cudaSuccess);
}

#if defined(__SANITIZE_ADDRESS__)
// Device buffers are exactly the size asked for: one element past the end is
// caught, where cudaMalloc's 256-byte rounding would have hidden it.
__global__ void CopyN(const int* in, int* out, int n) {
  for (int i = static_cast<int>(threadIdx.x); i < n; i += static_cast<int>(blockDim.x)) out[i] = in[i];
}

TEST(CudaEmuDeathTest, ReadPastADeviceBufferIsCaught) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  int *in = nullptr, *out = nullptr;
  ASSERT_EQ(cudaMalloc(&in, sizeof(int) * 10), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&out, sizeof(int) * 11), cudaSuccess);
  EXPECT_EQ(LaunchKernel(CopyN, 1, 32, 0, nullptr, in, out, 10), cudaSuccess);
  EXPECT_DEATH(LaunchKernel(CopyN, 1, 32, 0, nullptr, in, out, 11), "heap-buffer-overflow");
  cudaFree(in);
  cudaFree(out);
}
#endif

}  // namespace
}  // namespace mla
