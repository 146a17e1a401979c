// The bounded mbarrier wait (warp_mma.cuh MbarWaitParity) through its probe
// (kernels/cuda/mbar_wait_probe.cuh): a phase completes by arrivals and by
// the bytes of a bulk copy, and a phase that never can (an arrival missing,
// bytes expected that no copy brings: the ways a TMA-staged decode kernel
// would hang) ends the launch with an error soon after the bound, instead of
// hanging the process. Those cases run in a child process (a death test:
// the failed launch loses the CUDA context); on a GPU the child reports the
// launch's error, on the CPU emulator (tests/emu) the emulator's deadlock
// check aborts it.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>
#include <thread>
#include <vector>

#include "kernels/cuda/mbar_wait_probe.cuh"
#include "tests/gpu/gpu_test_util.h"

namespace mla {
namespace {

using gpu_test::DeviceBuffer;

constexpr int kThreads = 64;

// Runs the probe to completion: every thread past the wait, and the copy's
// bytes (if any) landed as sent, into *landed.
void RunToCompletion(cuda::MbarWaitProbeParams p, std::vector<uint8_t>* landed) {
  std::vector<uint8_t> bytes(p.copy_bytes);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(37 * i + 11);
  DeviceBuffer<uint8_t> src(bytes), dst(bytes.size());
  DeviceBuffer<int32_t> passed(std::vector<int32_t>(kThreads, 0));
  p.threads = kThreads;
  p.src = src.get();
  p.dst = dst.get();
  p.passed = passed.get();
  MLA_ASSERT_CUDA(cuda::LaunchMbarWaitProbe(p, nullptr));
  MLA_ASSERT_CUDA(cudaDeviceSynchronize());
  std::vector<int32_t> through;
  MLA_ASSERT_CUDA(passed.Download(through));
  EXPECT_EQ(through, std::vector<int32_t>(kThreads, 1));
  MLA_ASSERT_CUDA(dst.Download(*landed));
  EXPECT_EQ(*landed, bytes);
}

TEST(MbarWaitGpuTest, EveryArrivalCompletesThePhase) {
  MLA_SKIP_WITHOUT_GPU();
  cuda::MbarWaitProbeParams p;
  p.expected = 3;
  p.arrivals = 3;
  std::vector<uint8_t> landed;
  RunToCompletion(p, &landed);
}

TEST(MbarWaitGpuTest, TheExpectedBytesCompleteThePhase) {
  MLA_SKIP_WITHOUT_GPU();
  cuda::MbarWaitProbeParams p;
  p.expected = 2;
  p.arrivals = 2;
  p.expect_bytes = p.copy_bytes = cuda::kMbarWaitProbeMaxBytes;
  std::vector<uint8_t> landed;
  RunToCompletion(p, &landed);
  EXPECT_EQ(landed.size(), static_cast<size_t>(cuda::kMbarWaitProbeMaxBytes));
}

TEST(MbarWaitGpuTest, BadParametersAreRefused) {
  cuda::MbarWaitProbeParams p;
  int32_t* not_null = reinterpret_cast<int32_t*>(uintptr_t{16});
  p.passed = not_null;
  p.threads = 48;
  EXPECT_EQ(cuda::LaunchMbarWaitProbe(p, nullptr), cudaErrorInvalidValue);
  p.threads = 32;
  p.arrivals = 33;
  EXPECT_EQ(cuda::LaunchMbarWaitProbe(p, nullptr), cudaErrorInvalidValue);
  p.arrivals = 1;
  p.expect_bytes = 24;
  EXPECT_EQ(cuda::LaunchMbarWaitProbe(p, nullptr), cudaErrorInvalidValue);
  p.expect_bytes = 0;
  p.copy_bytes = 16;  // no src
  EXPECT_EQ(cuda::LaunchMbarWaitProbe(p, nullptr), cudaErrorInvalidValue);
  p.copy_bytes = 0;
  p.passed = nullptr;
  EXPECT_EQ(cuda::LaunchMbarWaitProbe(p, nullptr), cudaErrorInvalidValue);
}

// The child of a death test: launches a probe whose phase cannot complete,
// bounded by 20 ms, and exits 3 when the launch ends with an error (printing
// it), 4 when it is still running 20 s later (the bound failed), 5 when the
// launch was refused, 6 when it succeeded.
[[noreturn]] void LaunchThatCannotComplete(cuda::MbarWaitProbeParams p) {
  void* src = nullptr;
  void* dst = nullptr;
  void* passed = nullptr;
  if (cudaMalloc(&src, cuda::kMbarWaitProbeMaxBytes) != cudaSuccess ||
      cudaMalloc(&dst, cuda::kMbarWaitProbeMaxBytes) != cudaSuccess ||
      cudaMalloc(&passed, kThreads * sizeof(int32_t)) != cudaSuccess) {
    std::fprintf(stderr, "cudaMalloc failed\n");
    std::_Exit(5);
  }
  p.threads = kThreads;
  p.src = src;
  p.dst = dst;
  p.passed = static_cast<int32_t*>(passed);
  p.limit_ns = 20'000'000;
  cudaError_t err = cuda::LaunchMbarWaitProbe(p, nullptr);
  if (err != cudaSuccess) {
    std::fprintf(stderr, "the launch was refused: %s\n", cudaGetErrorName(err));
    std::_Exit(5);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while ((err = cudaStreamQuery(nullptr)) == cudaErrorNotReady) {
    if (std::chrono::steady_clock::now() > deadline) {
      std::fprintf(stderr, "the launch still runs after 20 s\n");
      std::_Exit(4);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  std::fprintf(stderr, "the launch ended: %s\n", cudaGetErrorName(err));
  std::_Exit(err == cudaSuccess ? 6 : 3);
}

void ExpectTheLaunchToEnd(const cuda::MbarWaitProbeParams& p) {
  // Under compute-sanitizer (run.sh's MLA_GPU_SANITIZE=1) the trap, which is
  // the point here, would be reported as the binary's error.
  if (const char* s = std::getenv("MLA_GPU_SANITIZE"); s != nullptr && std::string_view(s) == "1") {
    GTEST_SKIP() << "MLA_GPU_SANITIZE=1: a trapping kernel is what this case runs";
  }
  GTEST_FLAG_SET(death_test_style, "threadsafe");  // a fresh process: no CUDA context inherited
#if defined(MLA_CUDA_EMULATED)
  EXPECT_EXIT(LaunchThatCannotComplete(p), ::testing::KilledBySignal(SIGABRT),
              "an mbarrier phase can never complete");
#else
  EXPECT_EXIT(LaunchThatCannotComplete(p), ::testing::ExitedWithCode(3), "the launch ended: cuda");
#endif
}

TEST(MbarWaitGpuTest, AMissingArrivalEndsTheLaunch) {
  MLA_SKIP_WITHOUT_GPU();
  cuda::MbarWaitProbeParams p;
  p.expected = 2;
  p.arrivals = 1;
  ExpectTheLaunchToEnd(p);
}

TEST(MbarWaitGpuTest, BytesThatNeverLandEndTheLaunch) {
  MLA_SKIP_WITHOUT_GPU();
  cuda::MbarWaitProbeParams p;
  p.expected = 1;
  p.arrivals = 1;
  p.expect_bytes = 256;
  p.copy_bytes = 128;
  ExpectTheLaunchToEnd(p);
}

}  // namespace
}  // namespace mla
