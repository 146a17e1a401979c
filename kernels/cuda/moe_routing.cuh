// Router on the GPU: each token's experts and combine weights, exactly as
// kernels/cpu/moe_routing.cc MoeRoute (same scoring, group limiting, ties to the
// lower expert or group index, output in ascending expert id). The routing
// methods are the CPU header's enums: one definition for both backends.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cpu/moe_routing.h"

namespace mla::cuda {

using cpu::RouterScoring;
using cpu::RouterTopk;

struct MoeRoutingParams {
  const float* logits = nullptr;  // [num_tokens, num_experts] router logits (the gate runs in FP32)
  const float* bias = nullptr;    // [num_experts] e_score_correction_bias (kNoauxTc only)
  int32_t* expert_ids = nullptr;  // [num_tokens, top_k] out: chosen experts, ascending id
  float* weights = nullptr;       // [num_tokens, top_k] out: their combine weights
  int64_t num_tokens = 0;
  int num_experts = 0;  // at most kMoeMaxExperts
  int top_k = 0;
  int num_groups = 1;   // divides num_experts
  int topk_groups = 1;
  RouterScoring scoring = RouterScoring::kSigmoid;
  RouterTopk method = RouterTopk::kNoauxTc;
  bool norm_topk_prob = false;
  float routed_scaling_factor = 1.0f;
};

inline constexpr int kMoeMaxExperts = 1024;
cudaError_t LaunchMoeRouting(const MoeRoutingParams& p, cudaStream_t stream);

}  // namespace mla::cuda
