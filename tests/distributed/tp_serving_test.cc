// The golden fixtures served through mla-launch at --tp 1, 2 and 4 (real
// processes, Gloo on loopback) give the offline path's greedy tokens and its
// top-20 logprobs within 1e-4; each rank holds 1/N of the sharded weights.
#include <cmath>

#include "runtime/generator.h"
#include "runtime/model.h"
#include "runtime/sampler.h"
#include "serving_harness.h"
#include "tests/golden/golden_fixture.h"

namespace mla::testing {
namespace {

constexpr double kLogprobTolerance = 1e-4;
constexpr int kTopLogprobs = 20;
constexpr int kNewTokens = 12;

struct Offline {
  std::vector<int32_t> ids;
  std::vector<std::vector<float>> logits;
};

Offline RunOffline(Model& model, const std::vector<int32_t>& prompt) {
  GenerationResult r = golden::GenerateGreedy(model, prompt, kNewTokens);
  return Offline{r.generated_ids, r.logits};
}

class TpServingTest : public ::testing::TestWithParam<std::tuple<std::string, int>> {};

TEST_P(TpServingTest, MatchesOfflineTokensAndLogprobs) {
  const auto& [fixture, tp] = GetParam();
  std::unique_ptr<Model> model = golden::LoadModel(fixture);
  ASSERT_NE(model, nullptr);
  const int port = FreePort();
  auto launch = Launch::Start({"--model", FixtureDir(fixture), "--tp", std::to_string(tp), "--port",
                               std::to_string(port), "--threads", "1"});
  ASSERT_NE(launch, nullptr);
  Client client(absl::StrCat("127.0.0.1:", port));
  ASSERT_TRUE(client.WaitServing(absl::Seconds(60)));

  for (const golden::GoldenCase& c : golden::LoadGolden(fixture)) {
    SCOPED_TRACE(c.name);
    Offline offline = RunOffline(*model, c.prompt_ids);
    GenerateOutcome served = client.Generate(Greedy(c.prompt_ids, kNewTokens, kTopLogprobs));
    ASSERT_TRUE(served.status.ok()) << served.status.error_message();
    EXPECT_EQ(served.ids(), offline.ids);
    EXPECT_EQ(served.final.finish_reason(), serving::v1::FINISH_REASON_LENGTH);
    EXPECT_EQ(served.final.completion_tokens(), kNewTokens);
    ASSERT_EQ(served.tokens.size(), offline.logits.size());
    for (size_t i = 0; i < served.tokens.size(); ++i) {
      const auto& t = served.tokens[i];
      // The offline logprob of every token the server reports.
      const std::vector<float>& row = offline.logits[i];
      auto offline_logprob = [&](int32_t id) { return ComputeLogprobs(row, id, 0).logprob; };
      EXPECT_NEAR(t.logprob(), offline_logprob(t.token_id()), kLogprobTolerance) << "step " << i;
      ASSERT_EQ(t.top_logprobs_size(), kTopLogprobs);
      TokenLogprobs top = ComputeLogprobs(row, t.token_id(), kTopLogprobs);
      for (int k = 0; k < kTopLogprobs; ++k) {
        EXPECT_NEAR(t.top_logprobs(k).logprob(), offline_logprob(t.top_logprobs(k).token_id()), kLogprobTolerance);
        EXPECT_NEAR(t.top_logprobs(k).logprob(), top.top[static_cast<size_t>(k)].second, kLogprobTolerance);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TpServingTest,
                         ::testing::Combine(::testing::Values("v3_bf16", "v3_fp8", "v2_lite"),
                                            ::testing::Values(1, 2, 4)),
                         [](const auto& info) {
                           return std::get<0>(info.param) + "_tp" + std::to_string(std::get<1>(info.param));
                         });

TEST(TpWeightBytesTest, ShardedKindsShrinkReplicatedStay) {
  std::map<int, serving::v1::ModelInfo> infos;
  for (int tp : {1, 2, 4}) {
    const int port = FreePort();
    auto launch = Launch::Start({"--model", FixtureDir("v3_bf16"), "--tp", std::to_string(tp), "--port",
                                 std::to_string(port), "--threads", "1"});
    ASSERT_NE(launch, nullptr);
    Client client(absl::StrCat("127.0.0.1:", port));
    ASSERT_TRUE(client.WaitServing(absl::Seconds(60)));
    ASSERT_TRUE(client.Info(&infos[tp]).ok());
    EXPECT_EQ(infos[tp].tp_size(), tp);
    ASSERT_EQ(infos[tp].ranks_size(), tp);
  }
  const auto& one = infos[1].ranks(0).weight_bytes();
  EXPECT_GT(one.attention(), 0);
  EXPECT_GT(one.experts(), 0);
  EXPECT_GT(one.embeddings(), 0);
  EXPECT_GT(one.replicated(), 0);
  for (int tp : {2, 4}) {
    for (const auto& r : infos[tp].ranks()) {
      SCOPED_TRACE(::testing::Message() << "tp " << tp << " rank " << r.rank());
      const auto& b = r.weight_bytes();
      EXPECT_EQ(b.attention() * tp, one.attention());
      EXPECT_EQ(b.experts() * tp, one.experts());
      EXPECT_EQ(b.embeddings() * tp, one.embeddings());
      EXPECT_EQ(b.replicated(), one.replicated());
      EXPECT_EQ(r.host(), "127.0.0.1");
      EXPECT_EQ(r.device(), "cpu");
      EXPECT_EQ(r.decode_kernel(), "");  // the CPU model has one decode kernel
      EXPECT_GT(r.pid(), 0);
    }
  }
  EXPECT_EQ(infos[4].architecture(), "DeepseekV3ForCausalLM");
  EXPECT_EQ(infos[4].kv_cache_bytes_per_token(), 3 * 176 * 4);  // fp32 latent cache, 3 layers
}

}  // namespace
}  // namespace mla::testing

int main(int argc, char** argv) {
  mla::MaybeRunExecChild(argc, argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
