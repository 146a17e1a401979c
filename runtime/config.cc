#include "runtime/config.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "runtime/status_macros.h"

namespace mla {
namespace {

using nlohmann::json;

// Reads typed keys from one JSON object; every error names the file, the key,
// what was found and what was expected.
class KeyReader {
 public:
  KeyReader(const json& object, std::string source, std::string prefix = "")
      : object_(object), source_(std::move(source)), prefix_(std::move(prefix)) {}

  bool Has(const char* key) const { return object_.contains(key) && !object_.at(key).is_null(); }

  absl::Status Missing(const char* key, const char* expected) const {
    return absl::InvalidArgumentError(
        absl::StrCat(source_, ": key '", prefix_, key, "' is missing (expected ", expected, ")"));
  }
  absl::Status Bad(const char* key, const std::string& found, const std::string& expected) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": key '", prefix_, key, "' is ", found,
                                                   " (expected ", expected, ")"));
  }

  // An integer >= min_value; `fallback` is used when the key is absent or null.
  absl::StatusOr<int64_t> Int(const char* key, int64_t min_value,
                              std::optional<int64_t> fallback = std::nullopt) const {
    std::string expected = absl::StrCat("an integer >= ", min_value);
    if (!Has(key)) {
      if (fallback) return *fallback;
      return Missing(key, expected.c_str());
    }
    const json& v = object_.at(key);
    if (!v.is_number_integer()) return Bad(key, v.dump(), expected);
    int64_t value = v.get<int64_t>();
    if (value < min_value) return Bad(key, std::to_string(value), expected);
    return value;
  }

  // A finite number > 0 (or >= 0 when allow_zero).
  absl::StatusOr<double> Number(const char* key, std::optional<double> fallback = std::nullopt,
                                bool allow_zero = false) const {
    const char* expected = allow_zero ? "a number >= 0" : "a number > 0";
    if (!Has(key)) {
      if (fallback) return *fallback;
      return Missing(key, expected);
    }
    const json& v = object_.at(key);
    if (!v.is_number()) return Bad(key, v.dump(), expected);
    double value = v.get<double>();
    if (!std::isfinite(value) || value < 0 || (value == 0 && !allow_zero)) {
      return Bad(key, v.dump(), expected);
    }
    return value;
  }

  absl::StatusOr<bool> Bool(const char* key, bool fallback) const {
    if (!Has(key)) return fallback;
    const json& v = object_.at(key);
    if (!v.is_boolean()) return Bad(key, v.dump(), "true or false");
    return v.get<bool>();
  }

  // A string among `allowed` (listed in the message).
  absl::StatusOr<std::string> Enum(const char* key, std::initializer_list<const char*> allowed,
                                   std::optional<std::string> fallback = std::nullopt) const {
    std::string expected = "one of";
    for (const char* a : allowed) absl::StrAppend(&expected, " \"", a, "\"");
    if (!Has(key)) {
      if (fallback) return *fallback;
      return Missing(key, expected.c_str());
    }
    const json& v = object_.at(key);
    if (v.is_string()) {
      for (const char* a : allowed) {
        if (v.get<std::string>() == a) return std::string(a);
      }
    }
    return Bad(key, v.dump(), expected);
  }

 private:
  const json& object_;
  std::string source_;
  std::string prefix_;
};

absl::StatusOr<std::optional<YarnScaling>> ParseRopeScaling(const json& root, const std::string& source) {
  if (!root.contains("rope_scaling") || root.at("rope_scaling").is_null()) return std::nullopt;
  const json& rs = root.at("rope_scaling");
  if (!rs.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": key 'rope_scaling' is ", rs.dump(),
                                                   " (expected null or an object)"));
  }
  KeyReader r(rs, source, "rope_scaling.");
  // Hugging Face writes either "type" or "rope_type".
  const char* type_key = r.Has("rope_type") ? "rope_type" : "type";
  MLA_ASSIGN_OR_RETURN(std::string type, r.Enum(type_key, {"yarn"}));
  YarnScaling y;
  MLA_ASSIGN_OR_RETURN(y.factor, r.Number("factor"));
  MLA_ASSIGN_OR_RETURN(y.original_max_position_embeddings, r.Int("original_max_position_embeddings", 1));
  MLA_ASSIGN_OR_RETURN(y.beta_fast, r.Number("beta_fast", 32.0));
  MLA_ASSIGN_OR_RETURN(y.beta_slow, r.Number("beta_slow", 1.0));
  MLA_ASSIGN_OR_RETURN(y.mscale, r.Number("mscale", 1.0, /*allow_zero=*/true));
  MLA_ASSIGN_OR_RETURN(y.mscale_all_dim, r.Number("mscale_all_dim", 0.0, /*allow_zero=*/true));
  if (y.beta_fast <= y.beta_slow) {
    return r.Bad("beta_fast", absl::StrCat(y.beta_fast),
                 absl::StrCat("a value above rope_scaling.beta_slow = ", y.beta_slow));
  }
  return y;
}

absl::StatusOr<std::optional<Fp8Quantization>> ParseQuantization(const json& root,
                                                                 const std::string& source) {
  if (!root.contains("quantization_config") || root.at("quantization_config").is_null()) {
    return std::nullopt;
  }
  const json& q = root.at("quantization_config");
  if (!q.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": key 'quantization_config' is ", q.dump(),
                                                   " (expected null or an object)"));
  }
  KeyReader r(q, source, "quantization_config.");
  MLA_ASSIGN_OR_RETURN(std::string method, r.Enum("quant_method", {"fp8"}));
  MLA_ASSIGN_OR_RETURN(std::string fmt, r.Enum("fmt", {"e4m3"}, std::string("e4m3")));
  Fp8Quantization fp8;
  if (q.contains("weight_block_size")) {
    const json& b = q.at("weight_block_size");
    if (!b.is_array() || b.size() != 2 || !b[0].is_number_integer() || !b[1].is_number_integer() ||
        b[0].get<int64_t>() <= 0 || b[1].get<int64_t>() <= 0) {
      return r.Bad("weight_block_size", b.dump(), "two positive integers, e.g. [128, 128]");
    }
    fp8.block_rows = b[0].get<int64_t>();
    fp8.block_cols = b[1].get<int64_t>();
  }
  return fp8;
}

absl::Status ParseMoe(const KeyReader& r, ModelConfig& c) {
  MLA_ASSIGN_OR_RETURN(c.n_routed_experts, r.Int("n_routed_experts", 0, int64_t{0}));
  if (c.n_routed_experts == 0) return absl::OkStatus();
  MLA_ASSIGN_OR_RETURN(c.moe_intermediate_size, r.Int("moe_intermediate_size", 1));
  MLA_ASSIGN_OR_RETURN(c.n_shared_experts, r.Int("n_shared_experts", 0, int64_t{0}));
  MLA_ASSIGN_OR_RETURN(c.num_experts_per_tok, r.Int("num_experts_per_tok", 1));
  MLA_ASSIGN_OR_RETURN(c.first_k_dense_replace, r.Int("first_k_dense_replace", 0, int64_t{0}));
  MLA_ASSIGN_OR_RETURN(c.moe_layer_freq, r.Int("moe_layer_freq", 1, int64_t{1}));
  MLA_ASSIGN_OR_RETURN(c.routed_scaling_factor, r.Number("routed_scaling_factor", 1.0));
  MLA_ASSIGN_OR_RETURN(c.norm_topk_prob, r.Bool("norm_topk_prob", false));
  bool v3 = c.model_type == "deepseek_v3";
  MLA_ASSIGN_OR_RETURN(std::string scoring,
                       r.Enum("scoring_func", {"sigmoid", "softmax"}, std::string(v3 ? "sigmoid" : "softmax")));
  c.scoring_func = scoring == "sigmoid" ? ScoringFunc::kSigmoid : ScoringFunc::kSoftmax;
  MLA_ASSIGN_OR_RETURN(std::string method, r.Enum("topk_method", {"noaux_tc", "greedy", "group_limited_greedy"},
                                                  std::string(v3 ? "noaux_tc" : "greedy")));
  c.topk_method = method == "noaux_tc"  ? TopkMethod::kNoauxTc
                  : method == "greedy" ? TopkMethod::kGreedy
                                       : TopkMethod::kGroupLimitedGreedy;
  bool grouped = c.topk_method != TopkMethod::kGreedy;
  MLA_ASSIGN_OR_RETURN(c.n_group, r.Int("n_group", 1, grouped ? std::nullopt : std::optional<int64_t>(1)));
  MLA_ASSIGN_OR_RETURN(c.topk_group, r.Int("topk_group", 1, grouped ? std::nullopt : std::optional<int64_t>(1)));

  if (c.num_experts_per_tok > c.n_routed_experts) {
    return r.Bad("num_experts_per_tok", std::to_string(c.num_experts_per_tok),
                 absl::StrCat("at most n_routed_experts = ", c.n_routed_experts));
  }
  if (c.topk_method == TopkMethod::kNoauxTc && c.scoring_func != ScoringFunc::kSigmoid) {
    return r.Bad("scoring_func", "\"softmax\"", "\"sigmoid\" with topk_method \"noaux_tc\"");
  }
  if (grouped) {
    if (c.n_routed_experts % c.n_group != 0) {
      return r.Bad("n_group", std::to_string(c.n_group),
                   absl::StrCat("a divisor of n_routed_experts = ", c.n_routed_experts));
    }
    if (c.topk_group > c.n_group) {
      return r.Bad("topk_group", std::to_string(c.topk_group), absl::StrCat("at most n_group = ", c.n_group));
    }
    int64_t per_group = c.n_routed_experts / c.n_group;
    if (c.topk_method == TopkMethod::kNoauxTc && per_group < 2) {
      return r.Bad("n_group", std::to_string(c.n_group),
                   "at most n_routed_experts / 2 (noaux_tc scores a group by its two best experts)");
    }
    if (c.num_experts_per_tok > c.topk_group * per_group) {
      return r.Bad("num_experts_per_tok", std::to_string(c.num_experts_per_tok),
                   absl::StrCat("at most topk_group x experts per group = ", c.topk_group * per_group));
    }
  }
  return absl::OkStatus();
}

}  // namespace

bool ModelConfig::IsMoeLayer(int64_t layer) const {
  return n_routed_experts > 0 && layer >= first_k_dense_replace && layer % moe_layer_freq == 0;
}

double YarnMscale(double scale, double mscale) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

double ModelConfig::SoftmaxScale() const {
  double scale = 1.0 / std::sqrt(static_cast<double>(qk_head_dim()));
  if (yarn && yarn->mscale_all_dim != 0.0) {
    double m = YarnMscale(yarn->factor, yarn->mscale_all_dim);
    scale *= m * m;
  }
  return scale;
}

absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text, const std::string& source) {
  json root = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(source, ": malformed JSON"));
  if (!root.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": expected a JSON object at the top level"));
  }
  KeyReader r(root, source);
  ModelConfig c;
  MLA_ASSIGN_OR_RETURN(c.model_type, r.Enum("model_type", {"deepseek_v3", "deepseek_v2"}));
  MLA_ASSIGN_OR_RETURN(c.vocab_size, r.Int("vocab_size", 1));
  MLA_ASSIGN_OR_RETURN(c.hidden_size, r.Int("hidden_size", 1));
  MLA_ASSIGN_OR_RETURN(c.intermediate_size, r.Int("intermediate_size", 1));
  MLA_ASSIGN_OR_RETURN(c.num_hidden_layers, r.Int("num_hidden_layers", 1));
  MLA_ASSIGN_OR_RETURN(c.num_attention_heads, r.Int("num_attention_heads", 1));
  if (!root.contains("q_lora_rank")) return r.Missing("q_lora_rank", "an integer >= 1, or null for q_proj");
  MLA_ASSIGN_OR_RETURN(c.q_lora_rank, r.Int("q_lora_rank", 1, int64_t{0}));
  MLA_ASSIGN_OR_RETURN(c.kv_lora_rank, r.Int("kv_lora_rank", 1));
  MLA_ASSIGN_OR_RETURN(c.qk_nope_head_dim, r.Int("qk_nope_head_dim", 1));
  MLA_ASSIGN_OR_RETURN(c.qk_rope_head_dim, r.Int("qk_rope_head_dim", 2));
  MLA_ASSIGN_OR_RETURN(c.v_head_dim, r.Int("v_head_dim", 1));
  MLA_ASSIGN_OR_RETURN(c.max_position_embeddings, r.Int("max_position_embeddings", 1));
  MLA_ASSIGN_OR_RETURN(c.rms_norm_eps, r.Number("rms_norm_eps"));
  MLA_ASSIGN_OR_RETURN(c.rope_theta, r.Number("rope_theta", 10000.0));
  MLA_ASSIGN_OR_RETURN(c.tie_word_embeddings, r.Bool("tie_word_embeddings", false));
  MLA_ASSIGN_OR_RETURN(c.num_nextn_predict_layers, r.Int("num_nextn_predict_layers", 0, int64_t{0}));
  MLA_ASSIGN_OR_RETURN(c.bos_token_id, r.Int("bos_token_id", 0, int64_t{-1}));
  MLA_ASSIGN_OR_RETURN(c.eos_token_id, r.Int("eos_token_id", 0, int64_t{-1}));
  MLA_ASSIGN_OR_RETURN(std::string act, r.Enum("hidden_act", {"silu"}, std::string("silu")));

  if (c.qk_rope_head_dim % 2 != 0) {
    return r.Bad("qk_rope_head_dim", std::to_string(c.qk_rope_head_dim), "an even number (RoPE rotates pairs)");
  }
  if (r.Has("num_key_value_heads")) {
    MLA_ASSIGN_OR_RETURN(int64_t kv_heads, r.Int("num_key_value_heads", 1));
    if (kv_heads != c.num_attention_heads) {
      return r.Bad("num_key_value_heads", std::to_string(kv_heads),
                   absl::StrCat("num_attention_heads = ", c.num_attention_heads, " (MLA has no grouped KV heads)"));
    }
  }
  if (r.Has("attention_bias")) {
    MLA_ASSIGN_OR_RETURN(bool bias, r.Bool("attention_bias", false));
    if (bias) return r.Bad("attention_bias", "true", "false");
  }
  MLA_RETURN_IF_ERROR(ParseMoe(r, c));
  MLA_ASSIGN_OR_RETURN(c.yarn, ParseRopeScaling(root, source));
  MLA_ASSIGN_OR_RETURN(c.fp8, ParseQuantization(root, source));
  if (c.yarn) {
    // transformers derives the YaRN factor from max_position_embeddings /
    // original_max_position_embeddings; a config where that ratio differs from
    // rope_scaling.factor has no single meaning, so it is refused.
    double derived = static_cast<double>(c.max_position_embeddings) /
                     static_cast<double>(c.yarn->original_max_position_embeddings);
    if (std::abs(derived - c.yarn->factor) > 1e-6 * c.yarn->factor) {
      return r.Bad("max_position_embeddings", std::to_string(c.max_position_embeddings),
                   absl::StrCat("rope_scaling.factor x rope_scaling.original_max_position_embeddings = ",
                                c.yarn->factor * static_cast<double>(c.yarn->original_max_position_embeddings)));
    }
  }
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir) {
  std::string path = dir + "/config.json";
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path, " (expected a Hugging Face config.json)"));
  std::stringstream text;
  text << in.rdbuf();
  return ParseModelConfig(text.str(), path);
}

ParameterCount CountParameters(const ModelConfig& c) {
  ParameterCount p;
  const int64_t h = c.hidden_size, heads = c.num_attention_heads;
  p.embedding = c.vocab_size * h * (c.tie_word_embeddings ? 1 : 2);
  int64_t q = c.q_lora_rank > 0 ? h * c.q_lora_rank + c.q_lora_rank * heads * c.qk_head_dim()
                                : h * heads * c.qk_head_dim();
  int64_t attention = q + h * c.latent_dim() + c.kv_lora_rank * heads * (c.qk_nope_head_dim + c.v_head_dim) +
                      heads * c.v_head_dim * h;
  int64_t layer_norms = 2 * h + c.kv_lora_rank + c.q_lora_rank;
  for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
    p.attention += attention;
    p.norms += layer_norms;
    if (c.IsMoeLayer(layer)) {
      p.routed_experts += c.n_routed_experts * 3 * h * c.moe_intermediate_size;
      p.shared_experts += 3 * h * c.moe_intermediate_size * c.n_shared_experts;
      p.router += c.n_routed_experts * h + (c.topk_method == TopkMethod::kNoauxTc ? c.n_routed_experts : 0);
    } else {
      p.dense_mlp += 3 * h * c.intermediate_size;
    }
  }
  p.norms += h;  // final norm
  return p;
}

int64_t KvCacheBytesPerToken(const ModelConfig& c, int64_t bytes_per_value) {
  return c.latent_dim() * c.num_hidden_layers * bytes_per_value;
}

int64_t MhaCacheBytesPerToken(const ModelConfig& c, int64_t bytes_per_value) {
  return 2 * c.num_attention_heads * c.v_head_dim * c.num_hidden_layers * bytes_per_value;
}

std::string DescribeConfig(const ModelConfig& c) {
  ParameterCount p = CountParameters(c);
  int64_t kv = KvCacheBytesPerToken(c, 2), mha = MhaCacheBytesPerToken(c, 2);
  std::string out;
  absl::StrAppendFormat(&out, "model_type: %s\n", c.model_type);
  int64_t moe_layers = 0;
  for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) moe_layers += c.IsMoeLayer(layer) ? 1 : 0;
  absl::StrAppendFormat(&out, "layers: %d (%d MoE), hidden: %d, heads: %d, vocab: %d\n", c.num_hidden_layers,
                        moe_layers, c.hidden_size, c.num_attention_heads, c.vocab_size);
  absl::StrAppendFormat(&out, "parameters: %d (%.1f billion, excluding multi-token prediction)\n", p.total(),
                        static_cast<double>(p.total()) / 1e9);
  absl::StrAppendFormat(&out,
                        "  embedding %d, attention %d, dense_mlp %d, routed_experts %d, shared_experts %d, "
                        "router %d, norms %d\n",
                        p.embedding, p.attention, p.dense_mlp, p.routed_experts, p.shared_experts, p.router, p.norms);
  absl::StrAppendFormat(&out, "kv_cache_bytes_per_token: %d (bf16: %d latent values x %d layers x 2 bytes)\n", kv,
                        c.latent_dim(), c.num_hidden_layers);
  absl::StrAppendFormat(&out, "mha_cache_bytes_per_token: %d (%.1fx the latent cache)\n", mha,
                        static_cast<double>(mha) / static_cast<double>(kv));
  return out;
}

}  // namespace mla
