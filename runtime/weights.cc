#include "runtime/weights.h"

#include <initializer_list>

#include "absl/strings/str_cat.h"
#include "runtime/status_macros.h"

namespace mla {
namespace {

class Reader {
 public:
  Reader(const Checkpoint& ckpt, const ModelConfig& config) : ckpt_(ckpt) {
    if (config.fp8) fp8_block_ = config.fp8->block_rows;
  }
  absl::StatusOr<std::vector<float>> Read(const std::string& name, std::initializer_list<int64_t> shape) {
    std::vector<int64_t> dims(shape);
    MLA_ASSIGN_OR_RETURN(std::vector<float> v, ckpt_.ReadFloat32(name, dims, nullptr, fp8_block_));
    num_floats_ += static_cast<int64_t>(v.size());
    return v;
  }
  int64_t num_floats() const { return num_floats_; }

 private:
  const Checkpoint& ckpt_;
  int64_t fp8_block_ = 128;
  int64_t num_floats_ = 0;
};

absl::StatusOr<MlpWeights> ReadMlp(Reader& r, const std::string& prefix, int64_t hidden, int64_t inter) {
  MlpWeights m;
  m.inter = inter;
  MLA_ASSIGN_OR_RETURN(std::vector<float> gate, r.Read(prefix + "gate_proj.weight", {inter, hidden}));
  MLA_ASSIGN_OR_RETURN(std::vector<float> up, r.Read(prefix + "up_proj.weight", {inter, hidden}));
  MLA_ASSIGN_OR_RETURN(m.down, r.Read(prefix + "down_proj.weight", {hidden, inter}));
  m.gate_up = std::move(gate);
  m.gate_up.insert(m.gate_up.end(), up.begin(), up.end());
  return m;
}

absl::StatusOr<AttentionWeights> ReadAttention(Reader& r, const std::string& p, const ModelConfig& c) {
  AttentionWeights a;
  const int64_t h = c.hidden_size, heads = c.num_attention_heads;
  if (c.q_lora_rank > 0) {
    MLA_ASSIGN_OR_RETURN(a.q_a, r.Read(p + "q_a_proj.weight", {c.q_lora_rank, h}));
    MLA_ASSIGN_OR_RETURN(a.q_a_norm, r.Read(p + "q_a_layernorm.weight", {c.q_lora_rank}));
    MLA_ASSIGN_OR_RETURN(a.q_b, r.Read(p + "q_b_proj.weight", {heads * c.qk_head_dim(), c.q_lora_rank}));
  } else {
    MLA_ASSIGN_OR_RETURN(a.q_b, r.Read(p + "q_proj.weight", {heads * c.qk_head_dim(), h}));
  }
  MLA_ASSIGN_OR_RETURN(a.kv_a, r.Read(p + "kv_a_proj_with_mqa.weight", {c.latent_dim(), h}));
  MLA_ASSIGN_OR_RETURN(a.kv_a_norm, r.Read(p + "kv_a_layernorm.weight", {c.kv_lora_rank}));
  const int64_t kvw = c.qk_nope_head_dim + c.v_head_dim;
  MLA_ASSIGN_OR_RETURN(a.kv_b, r.Read(p + "kv_b_proj.weight", {heads * kvw, c.kv_lora_rank}));
  MLA_ASSIGN_OR_RETURN(a.o_proj, r.Read(p + "o_proj.weight", {h, heads * c.v_head_dim}));
  // W_UK of head hd is rows [hd * kvw, hd * kvw + qk_nope) of kv_b.
  a.w_uk_t.resize(static_cast<size_t>(heads * c.kv_lora_rank * c.qk_nope_head_dim));
  for (int64_t hd = 0; hd < heads; ++hd) {
    for (int64_t i = 0; i < c.qk_nope_head_dim; ++i) {
      for (int64_t j = 0; j < c.kv_lora_rank; ++j) {
        a.w_uk_t[(hd * c.kv_lora_rank + j) * c.qk_nope_head_dim + i] = a.kv_b[(hd * kvw + i) * c.kv_lora_rank + j];
      }
    }
  }
  return a;
}

absl::StatusOr<MoeWeights> ReadMoe(Reader& r, const std::string& p, const ModelConfig& c) {
  MoeWeights m;
  const int64_t h = c.hidden_size;
  MLA_ASSIGN_OR_RETURN(m.router, r.Read(p + "gate.weight", {c.n_routed_experts, h}));
  if (c.topk_method == TopkMethod::kNoauxTc) {
    MLA_ASSIGN_OR_RETURN(m.router_bias, r.Read(p + "gate.e_score_correction_bias", {c.n_routed_experts}));
  }
  m.experts.reserve(static_cast<size_t>(c.n_routed_experts));
  for (int64_t e = 0; e < c.n_routed_experts; ++e) {
    MLA_ASSIGN_OR_RETURN(MlpWeights expert,
                         ReadMlp(r, absl::StrCat(p, "experts.", e, "."), h, c.moe_intermediate_size));
    m.experts.push_back(std::move(expert));
  }
  if (c.n_shared_experts > 0) {
    MLA_ASSIGN_OR_RETURN(m.shared,
                         ReadMlp(r, p + "shared_experts.", h, c.moe_intermediate_size * c.n_shared_experts));
  }
  return m;
}

}  // namespace

absl::StatusOr<ModelWeights> LoadWeights(const Checkpoint& checkpoint, const ModelConfig& c) {
  if (c.fp8 && c.fp8->block_rows != c.fp8->block_cols) {
    return absl::InvalidArgumentError(absl::StrCat("quantization_config.weight_block_size [", c.fp8->block_rows,
                                                   ", ", c.fp8->block_cols, "] (expected square blocks)"));
  }
  Reader r(checkpoint, c);
  ModelWeights w;
  const int64_t h = c.hidden_size;
  MLA_ASSIGN_OR_RETURN(w.embed, r.Read("model.embed_tokens.weight", {c.vocab_size, h}));
  MLA_ASSIGN_OR_RETURN(w.final_norm, r.Read("model.norm.weight", {h}));
  if (c.tie_word_embeddings) {
    w.lm_head = w.embed;
  } else {
    MLA_ASSIGN_OR_RETURN(w.lm_head, r.Read("lm_head.weight", {c.vocab_size, h}));
  }
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    LayerWeights layer;
    MLA_ASSIGN_OR_RETURN(layer.input_norm, r.Read(p + "input_layernorm.weight", {h}));
    MLA_ASSIGN_OR_RETURN(layer.post_norm, r.Read(p + "post_attention_layernorm.weight", {h}));
    MLA_ASSIGN_OR_RETURN(layer.attn, ReadAttention(r, p + "self_attn.", c));
    layer.is_moe = c.IsMoeLayer(l);
    if (layer.is_moe) {
      MLA_ASSIGN_OR_RETURN(layer.moe, ReadMoe(r, p + "mlp.", c));
    } else {
      MLA_ASSIGN_OR_RETURN(layer.dense, ReadMlp(r, p + "mlp.", h, c.intermediate_size));
    }
    w.layers.push_back(std::move(layer));
  }
  w.num_floats = r.num_floats();
  return w;
}

}  // namespace mla
