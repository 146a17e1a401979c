#include "runtime/config.h"

#include <cmath>
#include <fstream>
#include <functional>
#include <sstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace mla {
namespace {

using ::testing::HasSubstr;
using nlohmann::json;

json RealV3() {
  std::ifstream in(std::string(MLA_TEST_DATA_DIR) + "/configs/deepseek-v3/config.json");
  std::stringstream s;
  s << in.rdbuf();
  return json::parse(s.str());
}

absl::StatusOr<ModelConfig> Parse(const json& j) { return ParseModelConfig(j.dump(), "config.json"); }

TEST(ConfigTest, RealDeepSeekV3SizeReport) {
  absl::StatusOr<ModelConfig> c = Parse(RealV3());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->q_lora_rank, 1536);
  EXPECT_EQ(c->latent_dim(), 576);
  EXPECT_EQ(c->topk_method, TopkMethod::kNoauxTc);
  ASSERT_TRUE(c->fp8.has_value());
  EXPECT_EQ(c->fp8->block_rows, 128);
  // 671.0 billion parameters without the multi-token-prediction layer.
  ParameterCount p = CountParameters(*c);
  EXPECT_NEAR(static_cast<double>(p.total()) / 1e9, 671.0, 0.05);
  EXPECT_EQ(p.embedding, 2LL * 129280 * 7168);
  EXPECT_EQ(p.routed_experts, 58LL * 256 * 3 * 7168 * 2048);
  // 576 latent values x 61 layers x 2 bytes, and the 57x against MHA.
  EXPECT_EQ(KvCacheBytesPerToken(*c, 2), 70272);
  double ratio = static_cast<double>(MhaCacheBytesPerToken(*c, 2)) / KvCacheBytesPerToken(*c, 2);
  EXPECT_NEAR(ratio, 56.9, 0.05);
  // YaRN mscale^2 raises the softmax scale from 192^-0.5 = 0.07217 to 0.13523.
  EXPECT_NEAR(c->SoftmaxScale(), 0.13523, 5e-5);
  std::string report = DescribeConfig(*c);
  EXPECT_THAT(report, HasSubstr("671.0 billion"));
  EXPECT_THAT(report, HasSubstr("kv_cache_bytes_per_token: 70272"));
}

TEST(ConfigTest, MoeLayerPattern) {
  absl::StatusOr<ModelConfig> c = Parse(RealV3());
  ASSERT_TRUE(c.ok());
  EXPECT_FALSE(c->IsMoeLayer(2));
  EXPECT_TRUE(c->IsMoeLayer(3));
  EXPECT_TRUE(c->IsMoeLayer(60));
}

TEST(ConfigTest, V2LiteStyle) {
  json j = RealV3();
  j["model_type"] = "deepseek_v2";
  j["q_lora_rank"] = nullptr;
  j["scoring_func"] = "softmax";
  j["topk_method"] = "greedy";
  j["norm_topk_prob"] = false;
  j["rope_scaling"] = nullptr;
  j.erase("quantization_config");
  j.erase("n_group");
  j.erase("topk_group");
  absl::StatusOr<ModelConfig> c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->q_lora_rank, 0);
  EXPECT_EQ(c->scoring_func, ScoringFunc::kSoftmax);
  EXPECT_EQ(c->topk_method, TopkMethod::kGreedy);
  EXPECT_FALSE(c->yarn.has_value());
  EXPECT_NEAR(c->SoftmaxScale(), 1.0 / std::sqrt(192.0), 1e-12);
  j["topk_method"] = "group_limited_greedy";
  j["n_group"] = 8;
  j["topk_group"] = 3;
  c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->topk_method, TopkMethod::kGroupLimitedGreedy);
}

struct BadCase {
  const char* what;
  std::function<void(json&)> edit;
  const char* message;
};

TEST(ConfigTest, RefusesMissingAndInconsistentKeys) {
  std::vector<BadCase> cases = {
      {"missing hidden_size", [](json& j) { j.erase("hidden_size"); },
       "key 'hidden_size' is missing (expected an integer >= 1)"},
      {"missing q_lora_rank", [](json& j) { j.erase("q_lora_rank"); }, "key 'q_lora_rank' is missing"},
      {"string dim", [](json& j) { j["num_attention_heads"] = "128"; },
       "key 'num_attention_heads' is \"128\" (expected an integer >= 1)"},
      {"negative dim", [](json& j) { j["kv_lora_rank"] = -1; }, "key 'kv_lora_rank' is -1"},
      {"model type", [](json& j) { j["model_type"] = "llama"; },
       "key 'model_type' is \"llama\" (expected one of \"deepseek_v3\" \"deepseek_v2\")"},
      {"too many experts per token", [](json& j) { j["num_experts_per_tok"] = 300; },
       "key 'num_experts_per_tok' is 300 (expected at most n_routed_experts = 256)"},
      {"groups do not divide", [](json& j) { j["n_group"] = 7; },
       "key 'n_group' is 7 (expected a divisor of n_routed_experts = 256)"},
      {"topk_group above n_group", [](json& j) { j["topk_group"] = 9; },
       "key 'topk_group' is 9 (expected at most n_group = 8)"},
      {"kv heads", [](json& j) { j["num_key_value_heads"] = 16; },
       "key 'num_key_value_heads' is 16 (expected num_attention_heads = 128"},
      {"odd rope dim", [](json& j) { j["qk_rope_head_dim"] = 63; }, "key 'qk_rope_head_dim' is 63"},
      {"unknown scoring", [](json& j) { j["scoring_func"] = "relu"; }, "key 'scoring_func' is \"relu\""},
      {"noaux with softmax", [](json& j) { j["scoring_func"] = "softmax"; },
       "key 'scoring_func' is \"softmax\" (expected \"sigmoid\" with topk_method \"noaux_tc\")"},
      {"rope type", [](json& j) { j["rope_scaling"]["type"] = "linear"; },
       "key 'rope_scaling.type' is \"linear\" (expected one of \"yarn\")"},
      {"yarn factor missing", [](json& j) { j["rope_scaling"].erase("factor"); },
       "key 'rope_scaling.factor' is missing"},
      {"yarn length mismatch", [](json& j) { j["max_position_embeddings"] = 100000; },
       "key 'max_position_embeddings' is 100000 (expected rope_scaling.factor x "
       "rope_scaling.original_max_position_embeddings = 163840)"},
      {"quant method", [](json& j) { j["quantization_config"]["quant_method"] = "awq"; },
       "key 'quantization_config.quant_method' is \"awq\""},
      {"block size", [](json& j) { j["quantization_config"]["weight_block_size"] = json::array({128}); },
       "key 'quantization_config.weight_block_size' is [128]"},
      {"activation", [](json& j) { j["hidden_act"] = "gelu"; }, "key 'hidden_act' is \"gelu\""},
      {"eps", [](json& j) { j["rms_norm_eps"] = 0; }, "key 'rms_norm_eps' is 0 (expected a number > 0)"},
  };
  for (const BadCase& bad : cases) {
    json j = RealV3();
    bad.edit(j);
    absl::StatusOr<ModelConfig> c = Parse(j);
    ASSERT_FALSE(c.ok()) << bad.what;
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << bad.what;
    EXPECT_THAT(std::string(c.status().message()), HasSubstr(bad.message)) << bad.what;
    EXPECT_THAT(std::string(c.status().message()), HasSubstr("config.json")) << bad.what;
  }
}

TEST(ConfigTest, MalformedJsonAndMissingFile) {
  absl::StatusOr<ModelConfig> c = ParseModelConfig("{\"model_type\": ", "x/config.json");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("x/config.json: malformed JSON"));
  c = ParseModelConfig("[1, 2]", "x/config.json");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("expected a JSON object"));
  c = LoadModelConfig("/nonexistent/model");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("/nonexistent/model/config.json"));
}

}  // namespace
}  // namespace mla
