#include "tests/gpu/gpu_test_util.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <sstream>
#include <thread>
#include <utility>

namespace mla::gpu_test {

namespace {

// cudaGetDeviceCount once per process: its error, and the count.
std::pair<cudaError_t, int> DeviceCount() {
  static const std::pair<cudaError_t, int> result = [] {
    int n = 0;
    const cudaError_t err = cudaGetDeviceCount(&n);
    return std::make_pair(err, err == cudaSuccess ? n : 0);
  }();
  return result;
}

}  // namespace

bool HasGpu() { return DeviceCount().second > 0; }

std::string NoGpuReason() {
  const auto [err, n] = DeviceCount();
  if (err != cudaSuccess) {
    return std::string("cudaGetDeviceCount: ") + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")";
  }
  return std::to_string(n) + " CUDA devices";
}

bool GpuRequired() {
  const char* env = std::getenv("MLA_GPU_REQUIRED");
  return env != nullptr && std::string(env) == "1";
}

uint64_t BaseSeed() {
  const char* env = std::getenv("MLA_GPU_TEST_SEED");
  return env != nullptr ? std::strtoull(env, nullptr, 0) : 20250101ull;
}

std::mt19937_64 CaseRng(uint64_t case_id) {
  std::seed_seq seq{BaseSeed(), case_id};
  return std::mt19937_64(seq);
}

std::vector<float> RandomFloats(std::mt19937_64& rng, size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

std::vector<uint16_t> RandomBf16(std::mt19937_64& rng, size_t n, float lo, float hi) {
  std::vector<float> f = RandomFloats(rng, n, lo, hi);
  return ToBf16(f);
}

std::vector<float> ToFloats(std::span<const uint16_t> bf16) {
  std::vector<float> out(bf16.size());
  for (size_t i = 0; i < bf16.size(); ++i) out[i] = cpu::Bf16ToFloat(bf16[i]);
  return out;
}

std::vector<uint16_t> ToBf16(std::span<const float> values) {
  std::vector<uint16_t> out(values.size());
  for (size_t i = 0; i < values.size(); ++i) out[i] = cpu::FloatToBf16(values[i]);
  return out;
}

::testing::AssertionResult AllClose(std::span<const float> got, std::span<const float> want, double rtol,
                                    double atol) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure() << "size " << got.size() << " != expected " << want.size();
  }
  int64_t bad = 0, worst = -1;
  double worst_excess = 0.0;
  std::ostringstream first;
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = got[i], w = want[i], err = std::fabs(g - w), allowed = atol + rtol * std::fabs(w);
    if (std::isnan(g) || !(err <= allowed)) {
      if (bad < 5) first << " [" << i << "] got " << g << " want " << w << ";";
      ++bad;
      const double excess = std::isnan(g) ? INFINITY : err / allowed;
      if (worst < 0 || excess > worst_excess) {
        worst = static_cast<int64_t>(i);
        worst_excess = excess;
      }
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad << " of " << got.size() << " elements outside atol " << atol
                                       << " + rtol " << rtol << " * |want|; worst [" << worst << "] got "
                                       << got[worst] << " want " << want[worst] << " (" << worst_excess
                                       << "x the allowance); first:" << first.str();
}

::testing::AssertionResult BitsEqual(std::span<const uint16_t> got, std::span<const uint16_t> want) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure() << "size " << got.size() << " != expected " << want.size();
  }
  int64_t bad = 0;
  std::ostringstream first;
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i] != want[i]) {
      if (bad < 5) first << " [" << i << "] got 0x" << std::hex << got[i] << " want 0x" << want[i] << std::dec << ";";
      ++bad;
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad << " of " << got.size() << " values differ; first:" << first.str();
}

void ParallelFor(int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(n, std::thread::hardware_concurrency()));
  std::vector<std::thread> pool;
  for (int64_t t = 0; t < threads; ++t) {
    const int64_t b = n * t / threads, e = n * (t + 1) / threads;
    pool.emplace_back([&fn, b, e] { fn(b, e); });
  }
  for (std::thread& th : pool) th.join();
}

}  // namespace mla::gpu_test
