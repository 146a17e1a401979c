// The model configuration, parsed from a Hugging Face config.json of model_type
// deepseek_v3 or deepseek_v2, with the size report the CLI's --describe prints.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"

namespace mla {

enum class ScoringFunc { kSigmoid, kSoftmax };
enum class TopkMethod { kNoauxTc, kGreedy, kGroupLimitedGreedy };

// YaRN context extension (rope_scaling.type == "yarn").
struct YarnScaling {
  double factor = 1.0;
  int64_t original_max_position_embeddings = 0;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 1.0;
  double mscale_all_dim = 0.0;
};

struct Fp8Quantization {
  int64_t block_rows = 128;
  int64_t block_cols = 128;
};

struct ModelConfig {
  std::string model_type;  // "deepseek_v3" or "deepseek_v2"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;      // dense MLP
  int64_t moe_intermediate_size = 0;  // one routed expert
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t q_lora_rank = 0;  // 0: no low-rank query (q_proj instead of q_a/q_b)
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;
  int64_t n_routed_experts = 0;  // 0: every layer is dense
  int64_t n_shared_experts = 0;
  int64_t num_experts_per_tok = 0;
  int64_t n_group = 1;
  int64_t topk_group = 1;
  int64_t first_k_dense_replace = 0;
  int64_t moe_layer_freq = 1;
  int64_t num_nextn_predict_layers = 0;  // multi-token prediction: not served
  int64_t max_position_embeddings = 0;
  double routed_scaling_factor = 1.0;
  bool norm_topk_prob = false;
  ScoringFunc scoring_func = ScoringFunc::kSoftmax;
  TopkMethod topk_method = TopkMethod::kGreedy;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  std::optional<YarnScaling> yarn;
  std::optional<Fp8Quantization> fp8;
  bool tie_word_embeddings = false;
  int64_t bos_token_id = -1;
  int64_t eos_token_id = -1;

  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  // One latent cache entry per token per layer: [c_kv | k_pe].
  int64_t latent_dim() const { return kv_lora_rank + qk_rope_head_dim; }
  bool IsMoeLayer(int64_t layer) const;
  // Softmax scale 1/sqrt(qk_head_dim) times YaRN's mscale(factor, mscale_all_dim)^2.
  double SoftmaxScale() const;
};

// YaRN's attention magnitude correction m(s, mscale) = 0.1 mscale ln(s) + 1 for s > 1.
double YarnMscale(double scale, double mscale);

// Parses config.json text; `source` names the file in error messages.
absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text, const std::string& source);
// Reads <dir>/config.json.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir);

// Parameter count of the served model (no multi-token-prediction layer), by kind.
struct ParameterCount {
  int64_t embedding = 0;  // embed_tokens + lm_head
  int64_t attention = 0;
  int64_t dense_mlp = 0;
  int64_t routed_experts = 0;
  int64_t shared_experts = 0;
  int64_t router = 0;
  int64_t norms = 0;
  int64_t total() const {
    return embedding + attention + dense_mlp + routed_experts + shared_experts + router + norms;
  }
};
ParameterCount CountParameters(const ModelConfig& config);

// Latent cache bytes per token over all layers, and what an MHA cache would hold.
int64_t KvCacheBytesPerToken(const ModelConfig& config, int64_t bytes_per_value);
int64_t MhaCacheBytesPerToken(const ModelConfig& config, int64_t bytes_per_value);

// Multi-line human-readable size report (for --describe).
std::string DescribeConfig(const ModelConfig& config);

}  // namespace mla
