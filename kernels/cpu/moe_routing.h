// Router: picks each token's experts and their weights (DESIGN.md section 2).
#pragma once

#include <cstdint>

namespace mla::cpu {

enum class RouterScoring { kSigmoid, kSoftmax };
enum class RouterTopk {
  kGreedy,              // V2-Lite: top-k of the scores
  kGroupLimitedGreedy,  // V2: groups scored by their best expert
  kNoauxTc,             // V3: scores + correction bias, groups scored by their two best
};

struct MoeRoutingParams {
  const float* logits = nullptr;  // [num_tokens, num_experts] router logits
  const float* bias = nullptr;    // [num_experts] e_score_correction_bias (kNoauxTc only)
  int64_t num_tokens = 0;
  int num_experts = 0;
  int top_k = 0;
  int num_groups = 1;
  int topk_groups = 1;
  RouterScoring scoring = RouterScoring::kSigmoid;
  RouterTopk method = RouterTopk::kNoauxTc;
  bool norm_topk_prob = false;
  float routed_scaling_factor = 1.0f;
  int32_t* expert_ids = nullptr;  // [num_tokens, top_k] out: chosen experts, ascending id
  float* weights = nullptr;       // [num_tokens, top_k] out: their combine weights
};

// Tokens are independent; ties go to the lower expert or group index.
void MoeRoute(const MoeRoutingParams& p);

}  // namespace mla::cpu
