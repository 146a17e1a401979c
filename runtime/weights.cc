#include "runtime/weights.h"

#include <initializer_list>

#include "absl/strings/str_cat.h"
#include "runtime/status_macros.h"

namespace mla {
namespace {

enum class Kind { kAttention, kExperts, kEmbeddings, kReplicated };

// Reads tensors (or this rank's rectangle of them) and counts their bytes by kind.
class Reader {
 public:
  Reader(const Checkpoint& ckpt, const ModelConfig& config, WeightBytes& bytes) : ckpt_(ckpt), bytes_(bytes) {
    if (config.fp8) fp8_block_ = config.fp8->block_rows;
  }
  // The whole tensor, or rows [r0, r1) x cols [c0, c1) of it (full shape given).
  absl::StatusOr<std::vector<float>> Read(const std::string& name, std::initializer_list<int64_t> shape, Kind kind,
                                          std::optional<Slice> slice = std::nullopt) {
    std::vector<int64_t> dims(shape);
    MLA_ASSIGN_OR_RETURN(std::vector<float> v,
                         ckpt_.ReadFloat32(name, dims, slice ? &*slice : nullptr, fp8_block_));
    Count(kind, static_cast<int64_t>(v.size()));
    return v;
  }
  absl::StatusOr<std::vector<float>> Rows(const std::string& name, std::initializer_list<int64_t> shape, Kind kind,
                                          int64_t r0, int64_t r1) {
    return Read(name, shape, kind, Slice{r0, r1, 0, *(shape.begin() + 1)});
  }
  absl::StatusOr<std::vector<float>> Cols(const std::string& name, std::initializer_list<int64_t> shape, Kind kind,
                                          int64_t c0, int64_t c1) {
    return Read(name, shape, kind, Slice{0, *shape.begin(), c0, c1});
  }
  void Count(Kind kind, int64_t floats) {
    int64_t b = floats * static_cast<int64_t>(sizeof(float));
    switch (kind) {
      case Kind::kAttention: bytes_.attention += b; break;
      case Kind::kExperts: bytes_.experts += b; break;
      case Kind::kEmbeddings: bytes_.embeddings += b; break;
      case Kind::kReplicated: bytes_.replicated += b; break;
    }
  }

 private:
  const Checkpoint& ckpt_;
  WeightBytes& bytes_;
  int64_t fp8_block_ = 128;
};

// An MLP of full intermediate size `inter`, split by rows (gate/up) and columns (down).
absl::StatusOr<MlpWeights> ReadMlp(Reader& r, const std::string& prefix, int64_t hidden, int64_t inter,
                                   const ShardSpec& shard) {
  MlpWeights m;
  m.inter = inter / shard.size;
  const int64_t i0 = shard.rank * m.inter, i1 = i0 + m.inter;
  MLA_ASSIGN_OR_RETURN(std::vector<float> gate, r.Rows(prefix + "gate_proj.weight", {inter, hidden}, Kind::kExperts, i0, i1));
  MLA_ASSIGN_OR_RETURN(std::vector<float> up, r.Rows(prefix + "up_proj.weight", {inter, hidden}, Kind::kExperts, i0, i1));
  MLA_ASSIGN_OR_RETURN(m.down, r.Cols(prefix + "down_proj.weight", {hidden, inter}, Kind::kExperts, i0, i1));
  m.gate_up = std::move(gate);
  m.gate_up.insert(m.gate_up.end(), up.begin(), up.end());
  return m;
}

absl::StatusOr<AttentionWeights> ReadAttention(Reader& r, const std::string& p, const ModelConfig& c,
                                               const ShardSpec& shard) {
  AttentionWeights a;
  const int64_t h = c.hidden_size, heads = c.num_attention_heads, local = heads / shard.size;
  const int64_t h0 = shard.rank * local, h1 = h0 + local;
  const int64_t qk = c.qk_head_dim(), kvw = c.qk_nope_head_dim + c.v_head_dim;
  if (c.q_lora_rank > 0) {
    MLA_ASSIGN_OR_RETURN(a.q_a, r.Read(p + "q_a_proj.weight", {c.q_lora_rank, h}, Kind::kReplicated));
    MLA_ASSIGN_OR_RETURN(a.q_a_norm, r.Read(p + "q_a_layernorm.weight", {c.q_lora_rank}, Kind::kReplicated));
    MLA_ASSIGN_OR_RETURN(a.q_b, r.Rows(p + "q_b_proj.weight", {heads * qk, c.q_lora_rank}, Kind::kAttention,
                                       h0 * qk, h1 * qk));
  } else {
    MLA_ASSIGN_OR_RETURN(a.q_b, r.Rows(p + "q_proj.weight", {heads * qk, h}, Kind::kAttention, h0 * qk, h1 * qk));
  }
  MLA_ASSIGN_OR_RETURN(a.kv_a, r.Read(p + "kv_a_proj_with_mqa.weight", {c.latent_dim(), h}, Kind::kReplicated));
  MLA_ASSIGN_OR_RETURN(a.kv_a_norm, r.Read(p + "kv_a_layernorm.weight", {c.kv_lora_rank}, Kind::kReplicated));
  MLA_ASSIGN_OR_RETURN(a.kv_b, r.Rows(p + "kv_b_proj.weight", {heads * kvw, c.kv_lora_rank}, Kind::kAttention,
                                      h0 * kvw, h1 * kvw));
  MLA_ASSIGN_OR_RETURN(a.o_proj, r.Cols(p + "o_proj.weight", {h, heads * c.v_head_dim}, Kind::kAttention,
                                        h0 * c.v_head_dim, h1 * c.v_head_dim));
  // W_UK of local head hd is rows [hd * kvw, hd * kvw + qk_nope) of kv_b.
  a.w_uk_t.resize(static_cast<size_t>(local * c.kv_lora_rank * c.qk_nope_head_dim));
  for (int64_t hd = 0; hd < local; ++hd) {
    for (int64_t i = 0; i < c.qk_nope_head_dim; ++i) {
      for (int64_t j = 0; j < c.kv_lora_rank; ++j) {
        a.w_uk_t[(hd * c.kv_lora_rank + j) * c.qk_nope_head_dim + i] = a.kv_b[(hd * kvw + i) * c.kv_lora_rank + j];
      }
    }
  }
  r.Count(Kind::kAttention, static_cast<int64_t>(a.w_uk_t.size()));
  return a;
}

absl::StatusOr<MoeWeights> ReadMoe(Reader& r, const std::string& p, const ModelConfig& c, const ShardSpec& shard) {
  MoeWeights m;
  const int64_t h = c.hidden_size;
  MLA_ASSIGN_OR_RETURN(m.router, r.Read(p + "gate.weight", {c.n_routed_experts, h}, Kind::kReplicated));
  if (c.topk_method == TopkMethod::kNoauxTc) {
    MLA_ASSIGN_OR_RETURN(m.router_bias,
                         r.Read(p + "gate.e_score_correction_bias", {c.n_routed_experts}, Kind::kReplicated));
  }
  m.experts.reserve(static_cast<size_t>(c.n_routed_experts));
  for (int64_t e = 0; e < c.n_routed_experts; ++e) {
    MLA_ASSIGN_OR_RETURN(MlpWeights expert,
                         ReadMlp(r, absl::StrCat(p, "experts.", e, "."), h, c.moe_intermediate_size, shard));
    m.experts.push_back(std::move(expert));
  }
  if (c.n_shared_experts > 0) {
    MLA_ASSIGN_OR_RETURN(m.shared,
                         ReadMlp(r, p + "shared_experts.", h, c.moe_intermediate_size * c.n_shared_experts, shard));
  }
  return m;
}

}  // namespace

absl::Status CheckShardable(const ModelConfig& c, int size) {
  if (size < 1) return absl::InvalidArgumentError(absl::StrCat("tensor-parallel size ", size, " (expected >= 1)"));
  struct Dim {
    const char* name;
    int64_t value;
  };
  std::vector<Dim> dims = {{"num_attention_heads", c.num_attention_heads},
                           {"vocab_size", c.vocab_size},
                           {"intermediate_size", c.intermediate_size}};
  if (c.n_routed_experts > 0) dims.push_back({"moe_intermediate_size", c.moe_intermediate_size});
  for (const Dim& d : dims) {
    if (d.value % size != 0) {
      return absl::InvalidArgumentError(absl::StrCat("cannot split the model over ", size, " ranks: ", d.name, " = ",
                                                     d.value, " is not divisible by ", size));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelWeights> LoadWeights(const Checkpoint& checkpoint, const ModelConfig& c, const ShardSpec& shard) {
  if (c.fp8 && c.fp8->block_rows != c.fp8->block_cols) {
    return absl::InvalidArgumentError(absl::StrCat("quantization_config.weight_block_size [", c.fp8->block_rows,
                                                   ", ", c.fp8->block_cols, "] (expected square blocks)"));
  }
  if (shard.rank < 0 || shard.rank >= shard.size) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", shard.rank, " (expected 0 <= rank < ", shard.size, ")"));
  }
  MLA_RETURN_IF_ERROR(CheckShardable(c, shard.size));
  ModelWeights w;
  Reader r(checkpoint, c, w.bytes);
  const int64_t h = c.hidden_size;
  w.shard = shard;
  w.local_heads = c.num_attention_heads / shard.size;
  w.local_vocab = c.vocab_size / shard.size;
  w.vocab_begin = shard.rank * w.local_vocab;
  const int64_t v1 = w.vocab_begin + w.local_vocab;
  MLA_ASSIGN_OR_RETURN(w.embed, r.Rows("model.embed_tokens.weight", {c.vocab_size, h}, Kind::kEmbeddings,
                                       w.vocab_begin, v1));
  MLA_ASSIGN_OR_RETURN(w.final_norm, r.Read("model.norm.weight", {h}, Kind::kReplicated));
  if (c.tie_word_embeddings) {
    w.lm_head = w.embed;
    r.Count(Kind::kEmbeddings, static_cast<int64_t>(w.lm_head.size()));
  } else {
    MLA_ASSIGN_OR_RETURN(w.lm_head, r.Rows("lm_head.weight", {c.vocab_size, h}, Kind::kEmbeddings, w.vocab_begin, v1));
  }
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    LayerWeights layer;
    MLA_ASSIGN_OR_RETURN(layer.input_norm, r.Read(p + "input_layernorm.weight", {h}, Kind::kReplicated));
    MLA_ASSIGN_OR_RETURN(layer.post_norm, r.Read(p + "post_attention_layernorm.weight", {h}, Kind::kReplicated));
    MLA_ASSIGN_OR_RETURN(layer.attn, ReadAttention(r, p + "self_attn.", c, shard));
    layer.is_moe = c.IsMoeLayer(l);
    if (layer.is_moe) {
      MLA_ASSIGN_OR_RETURN(layer.moe, ReadMoe(r, p + "mlp.", c, shard));
    } else {
      MLA_ASSIGN_OR_RETURN(layer.dense, ReadMlp(r, p + "mlp.", h, c.intermediate_size, shard));
    }
    w.layers.push_back(std::move(layer));
  }
  return w;
}

}  // namespace mla
