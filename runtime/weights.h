// The model's weights in float32, read from a Hugging Face checkpoint with the
// real release's tensor names and checked against the config's shapes; with
// tensor parallelism, only this rank's slices (DESIGN.md section 3).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/checkpoint.h"
#include "runtime/config.h"

namespace mla {

// Which slice of the weights this process holds: rank `rank` of `size`.
struct ShardSpec {
  int rank = 0;
  int size = 1;
};

// Refuses, before any weight is read, a config whose heads, vocabulary or
// intermediate sizes do not divide by the rank count (the numbers in the message).
absl::Status CheckShardable(const ModelConfig& config, int size);

// Bytes of weights held, by kind. Sharded: attention (q_b/q_proj, kv_b and its
// transposed W_UK copy, o_proj: this rank's heads), experts (dense MLPs, routed
// and shared experts: this rank's slice of each), embeddings (this rank's
// vocabulary rows of embed_tokens and lm_head). Replicated: everything else.
struct WeightBytes {
  int64_t attention = 0;
  int64_t experts = 0;
  int64_t embeddings = 0;
  int64_t replicated = 0;
  int64_t total() const { return attention + experts + embeddings + replicated; }
};

// A SiLU-gated MLP (dense layer, one routed expert, or the shared experts).
struct MlpWeights {
  int64_t inter = 0;          // intermediate size held here (this rank's slice)
  std::vector<float> gate_up;  // [2 * inter, hidden]: gate_proj rows, then up_proj rows
  std::vector<float> down;     // [hidden, inter]
};

struct AttentionWeights {
  std::vector<float> q_a;        // [q_lora, hidden] (empty without q_lora_rank)
  std::vector<float> q_a_norm;   // [q_lora]
  // Per-head tensors hold this rank's heads only: heads = num_attention_heads / shard size.
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
  ShardSpec shard;
  int64_t local_heads = 0;     // num_attention_heads / shard.size
  int64_t vocab_begin = 0;     // this rank's vocabulary rows [vocab_begin, vocab_begin + local_vocab)
  int64_t local_vocab = 0;
  std::vector<float> embed;       // [local_vocab, hidden]
  std::vector<float> final_norm;  // [hidden]
  std::vector<float> lm_head;     // [local_vocab, hidden] (a copy of embed when tied)
  std::vector<LayerWeights> layers;
  WeightBytes bytes;
};

// Reads this rank's slice of every tensor of layers [0, num_hidden_layers);
// the multi-token prediction layer stored after them is never read.
absl::StatusOr<ModelWeights> LoadWeights(const Checkpoint& checkpoint, const ModelConfig& config,
                                         const ShardSpec& shard = {});

}  // namespace mla
