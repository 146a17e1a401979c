// The serving behaviour a client sees: batch invariance, prefix reuse,
// preemption, cancellation, overload, drain and the API key.
#include <thread>

#include "absl/synchronization/notification.h"

#include "serving_fixture.h"

namespace mla::testing {
namespace {

TEST_F(ServingTest, GreedyAloneEqualsGreedyAmongSixteenOthers) {
  Serve(2);
  const std::vector<int32_t> prompt = RandomPrompt(50, 1);
  GenerateOutcome alone = client_->Generate(Greedy(prompt, 24, 5));
  ASSERT_TRUE(alone.status.ok()) << alone.status.error_message();

  std::vector<GenerateOutcome> others(16);
  GenerateOutcome together;
  std::vector<std::thread> threads;
  for (int i = 0; i < 16; ++i) {
    threads.emplace_back([&, i] {
      serving::v1::GenerateRequest r = Greedy(RandomPrompt(20 + 7 * i, 100 + i), 10 + 2 * i, 0);
      if (i % 3 == 0) r.mutable_sampling()->set_temperature(0.8f);
      others[static_cast<size_t>(i)] = client_->Generate(r);
    });
  }
  together = client_->Generate(Greedy(prompt, 24, 5));
  for (auto& t : threads) t.join();
  ASSERT_TRUE(together.status.ok());
  EXPECT_EQ(together.ids(), alone.ids());
  for (size_t i = 0; i < alone.tokens.size(); ++i) {
    EXPECT_EQ(together.tokens[i].logprob(), alone.tokens[i].logprob()) << i;  // bitwise
  }
  for (const auto& o : others) EXPECT_TRUE(o.status.ok()) << o.status.error_message();
  EXPECT_TRUE(WaitIdle());
}

TEST_F(ServingTest, SharedPrefixIsServedFromTheCache) {
  Serve(2);
  const std::vector<int32_t> prefix = RandomPrompt(256, 7);
  std::vector<int32_t> a = prefix, b = prefix;
  for (int32_t t : RandomPrompt(20, 8)) a.push_back(t);
  for (int32_t t : RandomPrompt(30, 9)) b.push_back(t);

  GenerateOutcome first = client_->Generate(Greedy(a, 8, 0));
  ASSERT_TRUE(first.status.ok());
  EXPECT_EQ(first.final.cached_prompt_tokens(), 0);
  const double computed_before = Metric("mla_prefill_tokens_computed_total");
  GenerateOutcome second = client_->Generate(Greedy(b, 8, 0));
  ASSERT_TRUE(second.status.ok());
  EXPECT_EQ(second.final.cached_prompt_tokens(), 256);
  EXPECT_EQ(second.final.prompt_tokens(), 286);
  // Only the 30 new prompt tokens ran.
  EXPECT_EQ(Metric("mla_prefill_tokens_computed_total") - computed_before, 30);
  EXPECT_GE(Metric("mla_prefix_cache_hits_total"), 4);
  EXPECT_EQ(Metric("mla_cached_prompt_tokens_total"), 256);

  // Without reuse (a server with prefix caching off) the tokens are the same.
  launch_.reset();
  Serve(2, {"--no-prefix-caching"});
  client_->Generate(Greedy(a, 8, 0));
  GenerateOutcome uncached = client_->Generate(Greedy(b, 8, 0));
  ASSERT_TRUE(uncached.status.ok());
  EXPECT_EQ(uncached.final.cached_prompt_tokens(), 0);
  EXPECT_EQ(uncached.ids(), second.ids());
}

TEST_F(ServingTest, SmallCachePreemptsAndEveryRequestGetsItsAloneTokens) {
  // 12 blocks of 64 tokens; 32 requests of ~100 tokens each need 2 blocks:
  // far more than fit at once.
  Serve(2, {"--num-blocks", "12"});
  std::vector<serving::v1::GenerateRequest> reqs;
  for (int i = 0; i < 32; ++i) reqs.push_back(Greedy(RandomPrompt(40 + i, 300 + i), 60, 0));
  std::vector<std::vector<int32_t>> alone;
  for (const auto& r : reqs) {
    GenerateOutcome o = client_->Generate(r);
    ASSERT_TRUE(o.status.ok()) << o.status.error_message();
    alone.push_back(o.ids());
  }
  std::vector<GenerateOutcome> together(reqs.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < reqs.size(); ++i) {
    threads.emplace_back([&, i] { together[i] = client_->Generate(reqs[i], absl::Seconds(120)); });
  }
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < reqs.size(); ++i) {
    ASSERT_TRUE(together[i].status.ok()) << i << ": " << together[i].status.error_message();
    EXPECT_EQ(together[i].ids(), alone[i]) << "request " << i;
  }
  EXPECT_GT(Metric("mla_preemptions_total"), 0);
  EXPECT_TRUE(WaitIdle());
}

TEST_F(ServingTest, BadInputIsInvalidArgumentAndTheServerKeepsServing) {
  Serve(1, {"--max-model-len", "1000", "--num-blocks", "20"});
  struct Bad {
    std::string what;
    serving::v1::GenerateRequest req;
    std::string message;
  };
  auto base = [] { return Greedy({5, 6, 7}, 4, 0); };
  std::vector<Bad> cases;
  {
    auto r = base();
    r.clear_prompt_token_ids();
    cases.push_back({"empty prompt", r, "prompt_token_ids is empty"});
  }
  {
    auto r = base();
    r.add_prompt_token_ids(-3);
    cases.push_back({"negative id", r, "prompt_token_ids[3] = -3 (expected 0 <= id < vocab_size = 256)"});
  }
  {
    auto r = base();
    r.add_prompt_token_ids(256);
    cases.push_back({"id = vocab", r, "prompt_token_ids[3] = 256 (expected 0 <= id < vocab_size = 256)"});
  }
  {
    auto r = base();
    r.set_max_new_tokens(0);
    cases.push_back({"max_new_tokens 0", r, "max_new_tokens = 0 (expected 1 <= max_new_tokens <= max_model_len = 1000)"});
  }
  {
    auto r = base();
    r.set_max_new_tokens(5000);
    cases.push_back({"max_new_tokens above the limit", r, "max_new_tokens = 5000 (expected 1 <= max_new_tokens <= max_model_len = 1000)"});
  }
  {
    auto r = base();
    r.set_max_new_tokens(999);
    cases.push_back({"beyond max_model_len", r, "prompt_token_ids (3 tokens) + max_new_tokens (999) = 1002 exceeds max_model_len = 1000"});
  }
  {
    auto r = base();
    r.set_max_new_tokens(900);  // 903 tokens: 15 blocks, fits max_model_len; the cache has 20
    for (int i = 0; i < 400; ++i) r.add_prompt_token_ids(9);  // 1303 > max_model_len
    cases.push_back({"prompt too long", r, "exceeds max_model_len = 1000"});
  }
  {
    auto r = base();
    r.mutable_sampling()->set_temperature(-0.5f);
    cases.push_back({"temperature < 0", r, "sampling.temperature -0.5 (expected a finite value >= 0)"});
  }
  {
    auto r = base();
    r.mutable_sampling()->set_top_p(0.0f);
    cases.push_back({"top_p 0", r, "sampling.top_p 0 (expected 0 < top_p <= 1)"});
  }
  {
    auto r = base();
    r.mutable_sampling()->set_top_p(1.5f);
    cases.push_back({"top_p > 1", r, "sampling.top_p 1.5 (expected 0 < top_p <= 1)"});
  }
  {
    auto r = base();
    r.mutable_sampling()->set_top_k(-1);
    cases.push_back({"top_k < 0", r, "sampling.top_k -1 (expected >= 0)"});
  }
  {
    auto r = base();
    r.add_stop_token_ids(300);
    cases.push_back({"stop id out of range", r, "stop_token_ids[0] = 300 (expected 0 <= id < vocab_size = 256)"});
  }
  {
    auto r = base();
    r.set_top_logprobs(21);
    cases.push_back({"top_logprobs > 20", r, "top_logprobs = 21 (expected 0 <= top_logprobs <= 20)"});
  }
  for (const Bad& b : cases) {
    GenerateOutcome o = client_->Generate(b.req);
    EXPECT_EQ(o.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << b.what;
    EXPECT_NE(o.status.error_message().find(b.message), std::string::npos)
        << b.what << ": " << o.status.error_message();
    EXPECT_TRUE(o.tokens.empty()) << b.what;
    GenerateOutcome ok = client_->Generate(base());  // still serving
    EXPECT_TRUE(ok.status.ok()) << b.what;
  }
  EXPECT_EQ(Metric("mla_requests_rejected_total{code=\"invalid_argument\"}"), static_cast<double>(cases.size()));
}

TEST_F(ServingTest, ARequestThatCouldNeverFitIsRefused) {
  // 4 blocks = 256 tokens of cache: a 300-token request could never run, and
  // must be refused rather than preempted forever.
  Serve(1, {"--num-blocks", "4"});
  GenerateOutcome o = client_->Generate(Greedy(RandomPrompt(250, 3), 50, 0));
  EXPECT_EQ(o.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(o.status.error_message().find("needs 5 cache blocks, but the whole cache has 4"), std::string::npos)
      << o.status.error_message();
  EXPECT_TRUE(client_->Generate(Greedy(RandomPrompt(200, 3), 50, 0)).status.ok());
}

TEST_F(ServingTest, CancelDeadlineAndDisconnectFreeTheBlocks) {
  Serve(2);
  EXPECT_EQ(BlocksInUse(), 0);
  // Cancel after 5 tokens.
  GenerateOutcome cancelled =
      client_->Generate(Greedy(RandomPrompt(100, 4), 5000, 0), absl::Seconds(60), nullptr, [](int n) { return n < 5; });
  EXPECT_EQ(cancelled.status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(WaitIdle());
  // A deadline that passes mid-generation.
  GenerateOutcome late = client_->Generate(Greedy(RandomPrompt(100, 5), 5000, 0), absl::Milliseconds(300));
  EXPECT_EQ(late.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(WaitIdle());
  // A client process killed mid-stream.
  auto client = ChildProcess::Spawn(MLA_CLIENT_BIN,
                                    {"--server", absl::StrCat("127.0.0.1:", port_), "generate", "--prompt-ids",
                                     "5,6,7,8", "--max-new-tokens", "5000", "--ignore-eos"},
                                    {}, true);
  ASSERT_TRUE(client.ok());
  absl::SleepFor(absl::Milliseconds(500));
  EXPECT_GT(BlocksInUse(), 0);
  client->Signal(SIGKILL).IgnoreError();
  client->Wait(absl::Seconds(5));
  EXPECT_TRUE(WaitIdle());
  EXPECT_GE(Metric("mla_requests_finished_total{reason=\"cancelled\"}"), 3);
}

TEST_F(ServingTest, OverloadIsRefusedAtOnce) {
  Serve(1, {"--max-num-seqs", "1", "--max-queued-requests", "2"});
  std::vector<std::thread> threads;
  std::vector<GenerateOutcome> long_ones(3);
  for (int i = 0; i < 3; ++i) {  // one runs, two wait
    threads.emplace_back([&, i] { long_ones[i] = client_->Generate(Greedy(RandomPrompt(10, 20 + i), 400, 0)); });
    absl::SleepFor(absl::Milliseconds(100));
  }
  const absl::Time t0 = absl::Now();
  GenerateOutcome refused = client_->Generate(Greedy({5, 6}, 4, 0));
  EXPECT_LT(absl::Now() - t0, absl::Seconds(1));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(refused.status.error_message().find("--max-queued-requests 2"), std::string::npos)
      << refused.status.error_message();
  for (auto& t : threads) t.join();
  for (const auto& o : long_ones) EXPECT_TRUE(o.status.ok()) << o.status.error_message();
  EXPECT_TRUE(client_->Generate(Greedy({5, 6}, 4, 0)).status.ok());
}

TEST_F(ServingTest, SigtermDrainsInFlightRequestsThenExitsZero) {
  Serve(2, {"--shutdown-timeout-ms", "20000"});
  GenerateOutcome in_flight;
  absl::Notification started;
  std::thread t([&] {
    in_flight = client_->Generate(Greedy(RandomPrompt(30, 6), 300, 0), absl::Seconds(60),
                                  [&](int n) { if (n == 1) started.Notify(); });
  });
  ASSERT_TRUE(started.WaitForNotificationWithTimeout(absl::Seconds(30)));
  ASSERT_TRUE(launch_->process().Signal(SIGTERM).ok());
  absl::SleepFor(absl::Milliseconds(200));
  GenerateOutcome late = client_->Generate(Greedy({5, 6}, 4, 0));
  EXPECT_EQ(late.status.error_code(), grpc::StatusCode::UNAVAILABLE) << late.status.error_message();
  t.join();
  ASSERT_TRUE(in_flight.status.ok()) << in_flight.status.error_message();
  EXPECT_EQ(in_flight.tokens.size(), 300u);
  EXPECT_EQ(in_flight.final.finish_reason(), serving::v1::FINISH_REASON_LENGTH);
  std::optional<ExitStatus> exit = launch_->process().Wait(absl::Seconds(15));
  ASSERT_TRUE(exit.has_value());
  EXPECT_TRUE(exit->success()) << exit->Describe() << "\n" << ReadStderr();
}

TEST_F(ServingTest, ApiKeyGuardsEveryCallButHealth) {
  Serve(2, {"--api-key", "s3cret"}, "s3cret");
  EXPECT_TRUE(client_->Generate(Greedy({5, 6, 7}, 4, 0)).status.ok());
  serving::v1::ModelInfo info;
  EXPECT_TRUE(client_->Info(&info).ok());
  Client anonymous(absl::StrCat("127.0.0.1:", port_));
  EXPECT_TRUE(anonymous.WaitServing(absl::Seconds(5)));  // health needs no key
  GenerateOutcome refused = anonymous.Generate(Greedy({5, 6, 7}, 4, 0));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(anonymous.Info(&info).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  Client wrong(absl::StrCat("127.0.0.1:", port_), "guess");
  EXPECT_EQ(wrong.Generate(Greedy({5, 6, 7}, 4, 0)).status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
}

}  // namespace
}  // namespace mla::testing


namespace mla::testing {
namespace {

TEST(LoadingTest, ACoordinatorWithoutItsWorkersAnswersUnavailable) {
  const int port = FreePort();
  absl::StatusOr<ChildProcess> coordinator = ChildProcess::Spawn(
      MLA_COORDINATOR_BIN, {"--model", FixtureDir("v3_bf16"), "--tp", "2", "--port", std::to_string(port)}, {}, true);
  ASSERT_TRUE(coordinator.ok());
  Client client(absl::StrCat("127.0.0.1:", port));
  // Alive (liveness) but not ready: the workers never come.
  EXPECT_FALSE(client.WaitServing(absl::Seconds(2)));
  GenerateOutcome o = client.Generate(Greedy({5, 6}, 4, 0), absl::Seconds(5));
  EXPECT_EQ(o.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(o.status.error_message().find("still loading"), std::string::npos) << o.status.error_message();
  coordinator->Stop(absl::Seconds(5));
}

}  // namespace
}  // namespace mla::testing

int main(int argc, char** argv) {
  mla::MaybeRunExecChild(argc, argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
