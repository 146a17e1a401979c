#include "kernels/cpu/moe_routing.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"

namespace mla::cpu {
namespace {

float Logit(float s) { return std::log(s / (1.0f - s)); }

struct Routed {
  std::vector<int32_t> ids;
  std::vector<float> weights;
};

Routed Route(MoeRoutingParams p, const std::vector<float>& logits, const std::vector<float>* bias = nullptr) {
  Routed r;
  r.ids.resize(static_cast<size_t>(p.num_tokens * p.top_k));
  r.weights.resize(r.ids.size());
  p.logits = logits.data();
  p.bias = bias ? bias->data() : nullptr;
  p.expert_ids = r.ids.data();
  p.weights = r.weights.data();
  MoeRoute(p);
  return r;
}

TEST(MoeRoutingTest, V3SigmoidBiasGroupLimited) {
  // Scores s, bias b, choice = s + b = [.9 .1 | .2 .3 | .8 .7 | .9 1.1]; groups score
  // by their two best: 1.0, 0.5, 1.5, 2.0 -> groups 3 and 2 survive, so expert 0
  // (the best single score) is excluded; top-2 by choice: 7, 6; weights from s,
  // normalised, times 2.5.
  std::vector<float> s = {0.9f, 0.1f, 0.2f, 0.3f, 0.8f, 0.7f, 0.4f, 0.6f}, logits;
  for (float v : s) logits.push_back(Logit(v));
  std::vector<float> bias = {0, 0, 0, 0, 0, 0, 0.5f, 0.5f};
  MoeRoutingParams p;
  p.num_tokens = 1;
  p.num_experts = 8;
  p.top_k = 2;
  p.num_groups = 4;
  p.topk_groups = 2;
  p.scoring = RouterScoring::kSigmoid;
  p.method = RouterTopk::kNoauxTc;
  p.norm_topk_prob = true;
  p.routed_scaling_factor = 2.5f;
  Routed r = Route(p, logits, &bias);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{6, 7}));
  EXPECT_NEAR(r.weights[0], 0.4f / 1.0f * 2.5f, 1e-6);
  EXPECT_NEAR(r.weights[1], 0.6f / 1.0f * 2.5f, 1e-6);
}

TEST(MoeRoutingTest, V3GroupScoreIsSumOfTopTwoNotMax) {
  // Group 0 = [.95 .05] (max .95, sum 1.0); group 1 = [.6 .6] (max .6, sum 1.2).
  // One group kept: by sum it is group 1.
  std::vector<float> logits;
  for (float v : {0.95f, 0.05f, 0.6f, 0.6f}) logits.push_back(Logit(v));
  std::vector<float> bias(4, 0.0f);
  MoeRoutingParams p;
  p.num_tokens = 1;
  p.num_experts = 4;
  p.top_k = 1;
  p.num_groups = 2;
  p.topk_groups = 1;
  p.method = RouterTopk::kNoauxTc;
  Routed r = Route(p, logits, &bias);
  EXPECT_EQ(r.ids[0], 2);  // tie between 2 and 3 goes to the lower id
  EXPECT_NEAR(r.weights[0], 0.6f, 1e-6);  // not normalised, scaling 1
}

TEST(MoeRoutingTest, V2SoftmaxGreedy) {
  std::vector<float> logits = {std::log(1.0f), std::log(2.0f), std::log(3.0f), std::log(4.0f)};
  MoeRoutingParams p;
  p.num_tokens = 1;
  p.num_experts = 4;
  p.top_k = 2;
  p.scoring = RouterScoring::kSoftmax;
  p.method = RouterTopk::kGreedy;
  p.routed_scaling_factor = 1.0f;
  Routed r = Route(p, logits);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{2, 3}));
  EXPECT_NEAR(r.weights[0], 0.3f, 1e-6);
  EXPECT_NEAR(r.weights[1], 0.4f, 1e-6);
}

TEST(MoeRoutingTest, V2GroupLimitedGreedyScoresGroupsByMax) {
  // Softmax scores [.1 .35 | .3 .25]: group maxima .35 and .3 -> group 0 only.
  std::vector<float> logits = {std::log(0.1f), std::log(0.35f), std::log(0.3f), std::log(0.25f)};
  MoeRoutingParams p;
  p.num_tokens = 1;
  p.num_experts = 4;
  p.top_k = 2;
  p.num_groups = 2;
  p.topk_groups = 1;
  p.scoring = RouterScoring::kSoftmax;
  p.method = RouterTopk::kGroupLimitedGreedy;
  p.routed_scaling_factor = 2.0f;
  Routed r = Route(p, logits);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{0, 1}));
  EXPECT_NEAR(r.weights[0], 0.2f, 1e-6);
  EXPECT_NEAR(r.weights[1], 0.7f, 1e-6);
}

TEST(MoeRoutingTest, TokensAreIndependent) {
  // The same token routed alone and as the second row of a batch.
  std::vector<float> one = {0.3f, -1.0f, 2.0f, 0.1f, -0.2f, 1.5f, 0.7f, -0.4f};
  std::vector<float> two = {1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f};
  two.insert(two.end(), one.begin(), one.end());
  std::vector<float> bias = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f, 0.7f, 0.8f};
  MoeRoutingParams p;
  p.num_experts = 8;
  p.top_k = 3;
  p.num_groups = 4;
  p.topk_groups = 2;
  p.norm_topk_prob = true;
  p.routed_scaling_factor = 2.5f;
  p.num_tokens = 1;
  Routed a = Route(p, one, &bias);
  p.num_tokens = 2;
  Routed b = Route(p, two, &bias);
  for (int j = 0; j < 3; ++j) {
    EXPECT_EQ(a.ids[j], b.ids[3 + j]);
    EXPECT_EQ(a.weights[j], b.weights[3 + j]);
  }
}

}  // namespace
}  // namespace mla::cpu
