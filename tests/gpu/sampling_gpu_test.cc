// Sampling against runtime/sampler.cc on the same float logits.
// - CounterUniform: the device hash equals the host one bit for bit.
// - Greedy: exact, ties to the lowest id (planted ties, -0 == +0).
// - Seeded temperature/top-k/top-p: the GPU must pick exactly SampleToken's
//   token. Both sides read the same float logits and compute the probabilities
//   exp((l - max) / T) in double; only the summation order differs (and CUDA's
//   exp may differ from glibc's in the last double bit), ~1e-16 relative. A
//   pick could only differ where u * mass or top_p lands within that of a
//   cumulative boundary: about vocab * 1e-16 per draw, never in practice, so the
//   test asks for equality. Integer-valued rows make large tie groups, so the
//   cuts fall inside ties and exercise the (logit desc, id asc) order.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <span>
#include <ostream>
#include <vector>

#include "kernels/cuda/counter_uniform.cuh"
#include "kernels/cuda/sampling.cuh"
#include "runtime/sampler.h"
#include "tests/gpu/gpu_test_util.h"

namespace mla {
namespace {

using gpu_test::DeviceBuffer;

uint64_t Bits(double d) {
  uint64_t u;
  std::memcpy(&u, &d, sizeof u);
  return u;
}

std::vector<std::pair<uint64_t, uint64_t>> SeedSteps(size_t n) {
  auto rng = gpu_test::CaseRng(99);
  std::vector<std::pair<uint64_t, uint64_t>> v = {
      {0, 0}, {0, 1}, {1, 0}, {~0ull, ~0ull}, {0x9e3779b97f4a7c15ull, 0}, {12345, 1ull << 40}};
  while (v.size() < n) v.emplace_back(rng(), rng() % 100000);
  return v;
}

// Host side, no GPU needed: the header's copy is the runtime's function.
TEST(CounterUniformTest, HostCopyMatchesRuntime) {
  for (const auto& [seed, step] : SeedSteps(10000)) {
    ASSERT_EQ(Bits(cuda::CounterUniform(seed, step)), Bits(CounterUniform(seed, step))) << seed << " " << step;
  }
}

TEST(CounterUniformTest, DeviceMatchesRuntime) {
  MLA_SKIP_WITHOUT_GPU();
  const auto pairs = SeedSteps(10000);
  std::vector<uint64_t> seeds, steps;
  for (const auto& [seed, step] : pairs) {
    seeds.push_back(seed);
    steps.push_back(step);
  }
  DeviceBuffer<uint64_t> d_seed(seeds), d_step(steps);
  DeviceBuffer<double> d_out(pairs.size());
  MLA_ASSERT_CUDA(d_out.Poison());
  cuda::CounterUniformParams p;
  p.seed = d_seed.get();
  p.step = d_step.get();
  p.out = d_out.get();
  p.n = static_cast<int64_t>(pairs.size());
  MLA_ASSERT_CUDA(cuda::LaunchCounterUniform(p, nullptr));
  std::vector<double> got;
  MLA_ASSERT_CUDA(d_out.Download(got));
  for (size_t i = 0; i < pairs.size(); ++i) {
    ASSERT_EQ(Bits(got[i]), Bits(CounterUniform(seeds[i], steps[i]))) << "seed " << seeds[i] << " step " << steps[i];
  }
}

// rows x vocab logits: even rows continuous N(0, sigma), odd rows integer-valued (ties).
std::vector<float> MakeLogits(std::mt19937_64& rng, int64_t rows, int64_t vocab, float sigma) {
  std::normal_distribution<float> normal(0.0f, sigma);
  std::vector<float> l(static_cast<size_t>(rows * vocab));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < vocab; ++i) {
      const float x = normal(rng);
      l[r * vocab + i] = r % 2 == 0 ? x : std::round(x);
    }
  }
  return l;
}

class ArgmaxGpuTest : public ::testing::TestWithParam<int64_t> {};

TEST_P(ArgmaxGpuTest, LowestIdOfTheMax) {
  MLA_SKIP_WITHOUT_GPU();
  const int64_t vocab = GetParam(), rows = 9;
  SCOPED_TRACE(::testing::Message() << "vocab " << vocab << " seed " << gpu_test::BaseSeed());
  auto rng = gpu_test::CaseRng(static_cast<uint64_t>(vocab));
  std::vector<float> logits = MakeLogits(rng, rows, vocab, 3.0f);
  // Planted: row 2 has its max at three ids, row 4 is constant, row 6 is all zeros of both signs.
  std::uniform_int_distribution<int64_t> id(0, vocab - 1);
  for (int k = 0; k < 3; ++k) logits[2 * vocab + id(rng)] = 100.0f;
  std::fill_n(&logits[4 * vocab], vocab, -1.5f);
  for (int64_t i = 0; i < vocab; ++i) logits[6 * vocab + i] = i % 3 == 0 ? 0.0f : -0.0f;

  DeviceBuffer<float> d_logits(logits);
  DeviceBuffer<int32_t> d_ids(rows);
  MLA_ASSERT_CUDA(d_ids.Poison());
  cuda::ArgmaxParams p;
  p.logits = d_logits.get();
  p.token_ids = d_ids.get();
  p.num_rows = rows;
  p.vocab = p.ld = vocab;
  MLA_ASSERT_CUDA(cuda::LaunchArgmax(p, nullptr));
  std::vector<int32_t> got;
  MLA_ASSERT_CUDA(d_ids.Download(got));
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t want = SampleToken(std::span(&logits[r * vocab], vocab), SamplingParams{}, 0);
    EXPECT_EQ(got[r], want) << "row " << r;
  }
}

INSTANTIATE_TEST_SUITE_P(Vocab, ArgmaxGpuTest, ::testing::Values(1, 37, 1000, 129280));

struct SampleCase {
  int64_t vocab;
  float sigma;
};

void PrintTo(const SampleCase& c, std::ostream* os) { *os << "vocab " << c.vocab << " sigma " << c.sigma; }

class SampleGpuTest : public ::testing::TestWithParam<SampleCase> {};

TEST_P(SampleGpuTest, PicksTheCpuSamplersToken) {
  MLA_SKIP_WITHOUT_GPU();
  const SampleCase c = GetParam();
  SCOPED_TRACE(::testing::Message() << "vocab " << c.vocab << " sigma " << c.sigma << " seed " << gpu_test::BaseSeed());
  auto rng = gpu_test::CaseRng(static_cast<uint64_t>(c.vocab * 10) + static_cast<uint64_t>(c.sigma));
  // Every combination, twice (a continuous and an integer-valued row).
  std::vector<SamplingParams> params;
  for (float t : {0.0f, 0.7f, 1.0f, 1.5f}) {
    for (int32_t k : {0, 1, 5, 50, static_cast<int32_t>(c.vocab) + 10}) {
      for (float top_p : {1.0f, 0.9f, 0.5f, 1e-6f}) {
        for (int copy = 0; copy < 2; ++copy) params.push_back({t, k, top_p, rng()});
      }
    }
  }
  const int64_t rows = static_cast<int64_t>(params.size());
  std::vector<float> logits = MakeLogits(rng, rows, c.vocab, c.sigma);
  // Masked tokens (-inf, probability 0) in a few rows.
  for (int64_t r = 0; r < rows; r += 5) {
    for (int64_t i = 1; i < c.vocab; i += 3) logits[r * c.vocab + i] = -std::numeric_limits<float>::infinity();
  }
  std::vector<float> temperature, top_p;
  std::vector<int32_t> top_k;
  std::vector<uint64_t> seed;
  for (const SamplingParams& s : params) {
    temperature.push_back(s.temperature);
    top_k.push_back(s.top_k);
    top_p.push_back(s.top_p);
    seed.push_back(s.seed);
  }
  DeviceBuffer<float> d_logits(logits), d_t(temperature), d_p(top_p);
  DeviceBuffer<int32_t> d_k(top_k), d_ids(rows);
  DeviceBuffer<uint64_t> d_seed(seed), d_step(rows);

  for (uint64_t step_base : {0ull, 1ull, 777ull}) {
    std::vector<uint64_t> step(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) step[r] = step_base + static_cast<uint64_t>(r % 3);
    MLA_ASSERT_CUDA(d_step.Upload(step));
    MLA_ASSERT_CUDA(d_ids.Poison());
    cuda::SampleParams p;
    p.logits = d_logits.get();
    p.temperature = d_t.get();
    p.top_k = d_k.get();
    p.top_p = d_p.get();
    p.seed = d_seed.get();
    p.step = d_step.get();
    p.token_ids = d_ids.get();
    p.num_rows = rows;
    p.vocab = p.ld = c.vocab;
    MLA_ASSERT_CUDA(cuda::LaunchSample(p, nullptr));
    std::vector<int32_t> got;
    MLA_ASSERT_CUDA(d_ids.Download(got));
    for (int64_t r = 0; r < rows; ++r) {
      const SamplingParams& s = params[r];
      const int32_t want = SampleToken(std::span(&logits[r * c.vocab], c.vocab), s, step[r]);
      EXPECT_EQ(got[r], want) << "row " << r << " temperature " << s.temperature << " top_k " << s.top_k
                              << " top_p " << s.top_p << " seed " << s.seed << " step " << step[r];
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Vocab, SampleGpuTest,
                         ::testing::Values(SampleCase{37, 1.0f}, SampleCase{1000, 3.0f}, SampleCase{129280, 1.0f},
                                           SampleCase{129280, 4.0f}));

}  // namespace
}  // namespace mla
