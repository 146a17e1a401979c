// The emulator's own rules, where a real launch would fail and the kernel
// tests alone would not notice the emulator letting it through: the launch
// limits (grid y/z, block size), dynamic shared memory above 48 KiB only after
// cudaFuncSetAttribute on the same device, bulk copies that land only through
// their mbarrier's wait, and (in the _asan build) a kernel reading past a
// cudaMalloc'd buffer stopped by AddressSanitizer.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <vector>

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/warp_mma.cuh"

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

// Two phases of one mbarrier: lane 0 of warp 0 expects 2 rows of `words`
// ints, lanes 0 and 1 copy them in (bulk), every thread waits for the phase's
// parity and reads. Then the same with the next two rows. mode 1 skips the
// wait (reads the slot's old contents: -1); mode 2 expects one byte more than
// arrives (the phase never completes).
__global__ void BulkRows(const int* in, int* out, int words, int mode) {
  MLA_DYNAMIC_SHARED(raw);
  int* rows = reinterpret_cast<int*>(raw + 16);  // [2, words]
  const uint32_t bar = cuda::detail::SharedAddress(raw);
  for (int i = static_cast<int>(threadIdx.x); i < 2 * words; i += static_cast<int>(blockDim.x)) rows[i] = -1;
  if (threadIdx.x == 0) cuda::detail::MbarInit(bar, 1);
  cuda::detail::FenceMbarInit();
  __syncthreads();
  for (int phase = 0; phase < 2; ++phase) {
    if (threadIdx.x < 32) {
      const int bytes = static_cast<int>(sizeof(int)) * words;
      if (threadIdx.x == 0) cuda::detail::MbarArriveExpectTx(bar, 2 * bytes + (mode == 2 ? 16 : 0));
      __syncwarp();
      if (threadIdx.x < 2) {
        cuda::detail::FenceProxyAsync();
        cuda::detail::BulkCopyG2S(cuda::detail::SharedAddress(rows + threadIdx.x * words),
                                  in + (2 * phase + threadIdx.x) * words, bytes, bar);
      }
    }
    if (mode != 1) cuda::detail::MbarWaitParity(bar, phase & 1);
    for (int i = static_cast<int>(threadIdx.x); i < 2 * words; i += static_cast<int>(blockDim.x)) {
      out[2 * phase * words + i] = rows[i];
    }
    __syncthreads();  // every thread has read the rows before the next phase's copies
    if (mode == 1) cuda::detail::MbarWaitParity(bar, phase & 1);  // lands them late
    __syncthreads();
  }
}

TEST(CudaEmuTest, BulkCopiesLandThroughTheirMbarrier) {
  constexpr int kWords = 36;  // 144 bytes a row: a multiple of 16
  int *in = nullptr, *out = nullptr;
  ASSERT_EQ(cudaMalloc(&in, sizeof(int) * 4 * kWords), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&out, sizeof(int) * 4 * kWords), cudaSuccess);
  std::vector<int> host(4 * kWords);
  for (int i = 0; i < 4 * kWords; ++i) host[static_cast<size_t>(i)] = 1000 + i;
  ASSERT_EQ(cudaMemcpy(in, host.data(), sizeof(int) * host.size(), cudaMemcpyHostToDevice), cudaSuccess);
  std::vector<int> got(host.size());
  for (int mode : {0, 1}) {
    ASSERT_EQ(LaunchKernel(BulkRows, 1, 64, 16 + sizeof(int) * 2 * kWords, nullptr, in, out, kWords, mode),
              cudaSuccess);
    ASSERT_EQ(cudaMemcpy(got.data(), out, sizeof(int) * got.size(), cudaMemcpyDeviceToHost), cudaSuccess);
    if (mode == 0) {
      EXPECT_EQ(got, host);
    } else {
      // Without the wait the first phase reads the initial -1s, the second
      // the first phase's rows.
      EXPECT_EQ(got[0], -1);
      EXPECT_EQ(got[2 * kWords], 1000);
    }
  }
  cudaFree(in);
  cudaFree(out);
}

TEST(CudaEmuDeathTest, AnMbarrierPhaseThatCannotCompleteIsCaught) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  constexpr int kWords = 4;
  int *in = nullptr, *out = nullptr;
  ASSERT_EQ(cudaMalloc(&in, sizeof(int) * 4 * kWords), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&out, sizeof(int) * 4 * kWords), cudaSuccess);
  EXPECT_DEATH(LaunchKernel(BulkRows, 1, 64, 16 + sizeof(int) * 2 * kWords, nullptr, in, out, kWords, 2),
               "mbarrier phase can never complete");
  cudaFree(in);
  cudaFree(out);
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
