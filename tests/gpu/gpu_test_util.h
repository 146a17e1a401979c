// Helpers for the GPU kernel tests: device detection (every test skips itself
// without a GPU), RAII device buffers, BF16 data, seeded random inputs and a
// tolerance check that names the worst element.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "kernels/cpu/float_convert.h"

namespace mla::gpu_test {

// True when the CUDA runtime sees at least one device.
bool HasGpu();
// Why there is no device: cudaGetDeviceCount's error, or "0 devices".
std::string NoGpuReason();
// MLA_GPU_REQUIRED=1 (tests/gpu/run.sh sets it where nvidia-smi sees a GPU):
// a missing device fails the test instead of skipping it, so a driver too old
// for this CUDA runtime cannot pass as "all skipped".
bool GpuRequired();

#define MLA_SKIP_WITHOUT_GPU()                                                                       \
  do {                                                                                               \
    if (!::mla::gpu_test::HasGpu()) {                                                                \
      if (::mla::gpu_test::GpuRequired()) FAIL() << "MLA_GPU_REQUIRED=1 but " << ::mla::gpu_test::NoGpuReason(); \
      GTEST_SKIP() << "no CUDA device: " << ::mla::gpu_test::NoGpuReason();                         \
    }                                                                                                \
  } while (0)

// Built on the CPU emulator (tests/emu, the *_gpu_test_emu binaries), a case
// whose work (a count the test defines) is above `limit` skips: the emulator
// runs a kernel thousands of times slower than a GPU. On a GPU: nothing.
// Under AddressSanitizer (the *_emu_asan builds, another 2-3x slower) the limit
// is halved: those runs look for out-of-bounds accesses, which the small and
// edge-length cases reach as well as the large ones.
#if defined(MLA_CUDA_EMULATED)
#if defined(__SANITIZE_ADDRESS__)
#define MLA_EMULATOR_WORK_DIVISOR 2
#else
#define MLA_EMULATOR_WORK_DIVISOR 1
#endif
#define MLA_SKIP_LARGE_FOR_EMULATOR(work, limit)                                                      \
  do {                                                                                                \
    const auto mla_emu_limit_ = (limit) / MLA_EMULATOR_WORK_DIVISOR;                                  \
    if ((work) > mla_emu_limit_) {                                                                    \
      GTEST_SKIP() << "too large for the CPU emulator: " << (work) << " > " << mla_emu_limit_;       \
    }                                                                                                 \
  } while (0)
#else
#define MLA_SKIP_LARGE_FOR_EMULATOR(work, limit) \
  do {                                           \
  } while (0)
#endif

#define MLA_ASSERT_CUDA(expr)                                                                   \
  do {                                                                                          \
    const cudaError_t mla_test_err_ = (expr);                                                   \
    ASSERT_EQ(mla_test_err_, cudaSuccess) << #expr << ": " << cudaGetErrorName(mla_test_err_) \
                                          << " (" << cudaGetErrorString(mla_test_err_) << ")"; \
  } while (0)

// A device allocation of n elements of T (BF16 data travels as uint16_t bits).
template <typename T>
class DeviceBuffer {
 public:
  // A failed allocation or upload fails the running test (and leaves a null buffer).
  explicit DeviceBuffer(size_t n) : n_(n) {
    if (n_ > 0) status_ = cudaMalloc(&ptr_, n_ * sizeof(T));
    if (status_ != cudaSuccess) {
      ADD_FAILURE() << "cudaMalloc(" << n_ * sizeof(T) << " bytes): " << cudaGetErrorString(status_);
      ptr_ = nullptr;
    }
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) {
    if (status_ == cudaSuccess && n_ > 0) status_ = cudaMemcpy(ptr_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice);
    if (status_ != cudaSuccess) ADD_FAILURE() << "upload of " << n_ * sizeof(T) << " bytes: " << cudaGetErrorString(status_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }

  cudaError_t status() const { return status_; }
  size_t size() const { return n_; }
  T* get() const { return ptr_; }
  __nv_bfloat16* bf16() const { return reinterpret_cast<__nv_bfloat16*>(ptr_); }

  cudaError_t Upload(const std::vector<T>& host) {
    if (host.size() != n_) return cudaErrorInvalidValue;
    return n_ == 0 ? cudaSuccess : cudaMemcpy(ptr_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice);
  }
  // Synchronous: also surfaces errors of kernels launched before it.
  cudaError_t Download(std::vector<T>& host) const {
    host.resize(n_);
    return n_ == 0 ? cudaSuccess : cudaMemcpy(host.data(), ptr_, n_ * sizeof(T), cudaMemcpyDeviceToHost);
  }
  // All bytes 0xff: NaN as float and BF16, -1 as a signed integer.
  cudaError_t Poison() { return n_ == 0 ? cudaSuccess : cudaMemset(ptr_, 0xff, n_ * sizeof(T)); }

 private:
  size_t n_ = 0;
  T* ptr_ = nullptr;
  cudaError_t status_ = cudaSuccess;
};

inline constexpr uint16_t kBf16NaNBits = 0xffff;  // what Poison() leaves in a BF16 slot

// Seeded generator for one test case: MLA_GPU_TEST_SEED (default fixed) mixed
// with the case's own number. The seed is printed on failure.
std::mt19937_64 CaseRng(uint64_t case_id);
uint64_t BaseSeed();

// n values uniform in [lo, hi), rounded to BF16 (bits).
std::vector<uint16_t> RandomBf16(std::mt19937_64& rng, size_t n, float lo, float hi);
std::vector<float> RandomFloats(std::mt19937_64& rng, size_t n, float lo, float hi);

std::vector<float> ToFloats(std::span<const uint16_t> bf16);
std::vector<uint16_t> ToBf16(std::span<const float> values);

// Every got[i] within atol + rtol * |want[i]|; a NaN anywhere in got fails.
// The message counts the violations and names the worst and the first few.
::testing::AssertionResult AllClose(std::span<const float> got, std::span<const float> want, double rtol, double atol);

// Bitwise equality, with the first differing indices in the message.
::testing::AssertionResult BitsEqual(std::span<const uint16_t> got, std::span<const uint16_t> want);

// Runs fn(begin, end) over [0, n) on up to hardware_concurrency threads
// (the CPU references are the slow part of the large cases).
void ParallelFor(int64_t n, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace mla::gpu_test
