#include "runtime/sampler.h"

#include <cmath>
#include <map>
#include <set>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mla {
namespace {

using ::testing::HasSubstr;

TEST(SamplerTest, GreedyPicksArgmaxLowestIdOnTies) {
  std::vector<float> logits = {0.1f, 3.0f, -1.0f, 3.0f};
  EXPECT_EQ(SampleToken(logits, SamplingParams{}, 0), 1);
  SamplingParams topk1{1.5f, 1, 1.0f, 9};
  EXPECT_EQ(SampleToken(logits, topk1, 5), 1);
}

TEST(SamplerTest, CounterUniformIsStatelessAndUniform) {
  EXPECT_EQ(CounterUniform(42, 7), CounterUniform(42, 7));
  EXPECT_NE(CounterUniform(42, 7), CounterUniform(42, 8));
  EXPECT_NE(CounterUniform(42, 7), CounterUniform(43, 7));
  double sum = 0;
  for (uint64_t i = 0; i < 20000; ++i) {
    double u = CounterUniform(3, i);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
  }
  EXPECT_NEAR(sum / 20000, 0.5, 0.01);
}

TEST(SamplerTest, TemperatureFollowsSoftmax) {
  // p = softmax(logits / T): with T = 1, [ln 1, ln 2, ln 7] -> [.1 .2 .7].
  std::vector<float> logits = {0.0f, std::log(2.0f), std::log(7.0f)};
  SamplingParams p{1.0f, 0, 1.0f, 11};
  std::map<int, int> counts;
  const int n = 20000;
  for (int step = 0; step < n; ++step) ++counts[SampleToken(logits, p, step)];
  EXPECT_NEAR(counts[0] / double(n), 0.1, 0.015);
  EXPECT_NEAR(counts[1] / double(n), 0.2, 0.015);
  EXPECT_NEAR(counts[2] / double(n), 0.7, 0.015);
}

TEST(SamplerTest, TopKAndTopPCut) {
  std::vector<float> logits = {std::log(0.05f), std::log(0.15f), std::log(0.3f), std::log(0.5f)};
  std::set<int> seen_k, seen_p;
  SamplingParams k2{1.0f, 2, 1.0f, 1};
  SamplingParams p06{1.0f, 0, 0.6f, 1};  // .5 alone is short of .6; .5 + .3 reaches it
  for (int step = 0; step < 2000; ++step) {
    seen_k.insert(SampleToken(logits, k2, step));
    seen_p.insert(SampleToken(logits, p06, step));
  }
  EXPECT_EQ(seen_k, (std::set<int>{2, 3}));
  EXPECT_EQ(seen_p, (std::set<int>{2, 3}));
  SamplingParams p05{1.0f, 0, 0.5f, 1};
  for (int step = 0; step < 200; ++step) EXPECT_EQ(SampleToken(logits, p05, step), 3);
}

TEST(SamplerTest, DrawDependsOnlyOnSeedAndStep) {
  std::vector<float> logits(50);
  for (int i = 0; i < 50; ++i) logits[i] = std::sin(i * 1.3f);
  SamplingParams p{0.8f, 20, 0.9f, 1234};
  std::vector<int> first;
  for (int step = 0; step < 30; ++step) first.push_back(SampleToken(logits, p, step));
  // Interleaving other requests' draws changes nothing: there is no shared state.
  for (int step = 29; step >= 0; --step) {
    SampleToken(logits, SamplingParams{1.0f, 0, 1.0f, 99}, step);
    EXPECT_EQ(SampleToken(logits, p, step), first[step]);
  }
  std::set<int> distinct(first.begin(), first.end());
  EXPECT_GT(distinct.size(), 3u);
}

TEST(SamplerTest, ValidationNamesTheField) {
  EXPECT_TRUE(ValidateSamplingParams(SamplingParams{}).ok());
  EXPECT_THAT(std::string(ValidateSamplingParams({-0.5f, 0, 1.0f, 0}).message()),
              HasSubstr("temperature -0.5 (expected a finite value >= 0)"));
  EXPECT_THAT(std::string(ValidateSamplingParams({1.0f, -1, 1.0f, 0}).message()), HasSubstr("top_k -1"));
  EXPECT_THAT(std::string(ValidateSamplingParams({1.0f, 0, 0.0f, 0}).message()),
              HasSubstr("top_p 0 (expected 0 < top_p <= 1)"));
  EXPECT_FALSE(ValidateSamplingParams({1.0f, 0, 1.5f, 0}).ok());
}

}  // namespace
}  // namespace mla
