// The model's weights in float32, read from a Hugging Face checkpoint with the
// real release's tensor names and checked against the config's shapes.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/checkpoint.h"
#include "runtime/config.h"

namespace mla {

// A SiLU-gated MLP (dense layer, one routed expert, or the shared experts).
struct MlpWeights {
  int64_t inter = 0;          // intermediate size
  std::vector<float> gate_up;  // [2 * inter, hidden]: gate_proj rows, then up_proj rows
  std::vector<float> down;     // [hidden, inter]
};

struct AttentionWeights {
  std::vector<float> q_a;        // [q_lora, hidden] (empty without q_lora_rank)
  std::vector<float> q_a_norm;   // [q_lora]
  std::vector<float> q_b;        // [heads * qk_head_dim, q_lora], or q_proj [heads * qk_head_dim, hidden]
  std::vector<float> kv_a;       // [kv_lora + qk_rope, hidden]
  std::vector<float> kv_a_norm;  // [kv_lora]
  std::vector<float> kv_b;       // [heads * (qk_nope + v_head), kv_lora]: per head W_UK rows, then W_UV rows
  std::vector<float> w_uk_t;     // [heads, kv_lora, qk_nope]: W_UK transposed, for absorbing into the query
  std::vector<float> o_proj;     // [hidden, heads * v_head]
};

struct MoeWeights {
  std::vector<float> router;       // [n_routed_experts, hidden]
  std::vector<float> router_bias;  // [n_routed_experts] (noaux_tc only)
  std::vector<MlpWeights> experts;
  MlpWeights shared;  // inter == 0 when there are no shared experts
};

struct LayerWeights {
  std::vector<float> input_norm;  // [hidden]
  std::vector<float> post_norm;   // [hidden]
  AttentionWeights attn;
  bool is_moe = false;
  MlpWeights dense;  // when !is_moe
  MoeWeights moe;    // when is_moe
};

struct ModelWeights {
  std::vector<float> embed;       // [vocab, hidden]
  std::vector<float> final_norm;  // [hidden]
  std::vector<float> lm_head;     // [vocab, hidden] (a copy of embed when tied)
  std::vector<LayerWeights> layers;
  int64_t num_floats = 0;  // everything above, for the size report
};

// Reads every tensor of layers [0, num_hidden_layers); the multi-token
// prediction layer stored after them is never read.
absl::StatusOr<ModelWeights> LoadWeights(const Checkpoint& checkpoint, const ModelConfig& config);

}  // namespace mla
