// mla-client's command line: where the command may stand, the defaults, which
// mistakes are the client's to report, and that values reach the request unchanged.
#include "launcher/client_options.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace mla {
namespace {

absl::StatusOr<ClientOptions> Parse(std::vector<std::string> args) {
  args.insert(args.begin(), "mla-client");
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  return ParseClientOptions(static_cast<int>(argv.size()), argv.data());
}

void ExpectError(const std::vector<std::string>& args, const std::string& message) {
  absl::StatusOr<ClientOptions> o = Parse(args);
  ASSERT_FALSE(o.ok()) << "parsed: " << testing::PrintToString(args);
  EXPECT_EQ(o.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(o.status().message(), message);
}

TEST(ClientOptionsTest, ServerBeforeOrAfterTheCommand) {
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"--server", "10.0.0.1:7000", "info"},
           {"info", "--server", "10.0.0.1:7000"},
           {"--server=10.0.0.1:7000", "info"},
           {"info", "--server=10.0.0.1:7000"}}) {
    absl::StatusOr<ClientOptions> o = Parse(args);
    ASSERT_TRUE(o.ok()) << o.status();
    EXPECT_EQ(o->command, ClientCommand::kInfo);
    EXPECT_EQ(o->server, "10.0.0.1:7000");
  }
}

TEST(ClientOptionsTest, GenerateFlagsAroundTheCommand) {
  absl::StatusOr<ClientOptions> o =
      Parse({"--prompt-ids", "1,2,3", "--server", "h:1", "generate", "--max-new-tokens", "4"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->command, ClientCommand::kGenerate);
  EXPECT_EQ(o->server, "h:1");
  EXPECT_EQ(o->prompt_ids, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(o->max_new_tokens, 4);
}

TEST(ClientOptionsTest, Defaults) {
  absl::StatusOr<ClientOptions> o = Parse({"generate", "--prompt-ids", "5", "--max-new-tokens", "1"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->server, "127.0.0.1:50051");
  EXPECT_FALSE(o->timeout_ms.has_value());
  EXPECT_EQ(o->temperature, 0.0f);
  EXPECT_EQ(o->top_k, 0);
  EXPECT_FALSE(o->top_p.has_value());
  EXPECT_EQ(o->seed, 0u);
  EXPECT_FALSE(o->logprobs.has_value());
  EXPECT_FALSE(o->ignore_eos);
  EXPECT_EQ(o->request_id, "");

  serving::v1::GenerateRequest req = ToGenerateRequest(*o);
  EXPECT_FALSE(req.sampling().has_top_p()) << "top_p is set only when --top-p is given";
  EXPECT_EQ(req.top_logprobs(), 0);

  absl::StatusOr<ClientOptions> health = Parse({"health"});
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(health->command, ClientCommand::kHealth);
  EXPECT_EQ(health->service, "");
  EXPECT_EQ(health->server, "127.0.0.1:50051");
}

TEST(ClientOptionsTest, EveryGenerateFlagReachesTheRequest) {
  absl::StatusOr<ClientOptions> o =
      Parse({"generate", "--prompt-ids", "7,0,129279", "--max-new-tokens", "9", "--temperature", "0.7",
             "--top-k", "40", "--top-p", "0.9", "--seed", "18446744073709551615", "--logprobs", "5",
             "--ignore-eos", "--request-id", "req-1", "--timeout-ms", "2500"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->timeout_ms, 2500);
  serving::v1::GenerateRequest req = ToGenerateRequest(*o);
  EXPECT_EQ(std::vector<int32_t>(req.prompt_token_ids().begin(), req.prompt_token_ids().end()),
            (std::vector<int32_t>{7, 0, 129279}));
  EXPECT_EQ(req.max_new_tokens(), 9);
  EXPECT_EQ(req.sampling().temperature(), 0.7f);
  EXPECT_EQ(req.sampling().top_k(), 40);
  ASSERT_TRUE(req.sampling().has_top_p());
  EXPECT_EQ(req.sampling().top_p(), 0.9f);
  EXPECT_EQ(req.sampling().seed(), 18446744073709551615ull);
  EXPECT_EQ(req.top_logprobs(), 5);
  EXPECT_TRUE(req.ignore_eos());
  EXPECT_EQ(req.request_id(), "req-1");
}

// The server owns the ranges; the client sends what it was given so the user
// sees the server's message.
TEST(ClientOptionsTest, OutOfRangeValuesPassThroughUnchanged) {
  absl::StatusOr<ClientOptions> o =
      Parse({"generate", "--prompt-ids", "-1,999999999", "--max-new-tokens", "-3", "--temperature", "-1",
             "--top-k", "-7", "--top-p", "1.5", "--logprobs", "50"});
  ASSERT_TRUE(o.ok()) << o.status();
  serving::v1::GenerateRequest req = ToGenerateRequest(*o);
  EXPECT_EQ(std::vector<int32_t>(req.prompt_token_ids().begin(), req.prompt_token_ids().end()),
            (std::vector<int32_t>{-1, 999999999}));
  EXPECT_EQ(req.max_new_tokens(), -3);
  EXPECT_EQ(req.sampling().temperature(), -1.0f);
  EXPECT_EQ(req.sampling().top_k(), -7);
  EXPECT_EQ(req.sampling().top_p(), 1.5f);
  EXPECT_EQ(req.top_logprobs(), 50);

  // Zero is out of range for max_new_tokens and top_p too: still sent.
  o = Parse({"generate", "--prompt-ids", "1", "--max-new-tokens", "0", "--top-p", "0", "--logprobs", "-1"});
  ASSERT_TRUE(o.ok()) << o.status();
  req = ToGenerateRequest(*o);
  EXPECT_EQ(req.max_new_tokens(), 0);
  ASSERT_TRUE(req.sampling().has_top_p()) << "an explicit 0 is not 'unset'";
  EXPECT_EQ(req.sampling().top_p(), 0.0f);
  EXPECT_EQ(req.top_logprobs(), -1);
}

TEST(ClientOptionsTest, EmptyPromptIsSentForTheServerToRefuse) {
  absl::StatusOr<ClientOptions> o = Parse({"generate", "--prompt-ids", "", "--max-new-tokens", "1"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_TRUE(o->prompt_ids.empty());
  EXPECT_EQ(ToGenerateRequest(*o).prompt_token_ids_size(), 0);
}

TEST(ClientOptionsTest, HealthService) {
  absl::StatusOr<ClientOptions> o = Parse({"health", "--service", "mla.serving.v1.Inference", "--timeout-ms=50"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->service, "mla.serving.v1.Inference");
  EXPECT_EQ(o->timeout_ms, 50);
}

TEST(ClientOptionsTest, Help) {
  for (const auto& args : std::vector<std::vector<std::string>>{{"--help"}, {"generate", "--help"}, {"--help", "info"}}) {
    absl::StatusOr<ClientOptions> o = Parse(args);
    ASSERT_TRUE(o.ok()) << o.status();
    EXPECT_TRUE(o->help);
  }
}

TEST(ClientOptionsTest, SyntaxErrorsNameTheFlag) {
  ExpectError({}, "missing command: generate, health or info");
  ExpectError({"--server", "h:1"}, "missing command: generate, health or info");
  ExpectError({"status"}, "unknown command 'status' (expected generate, health or info)");
  ExpectError({"info", "extra"}, "unexpected argument 'extra' after the command 'info'");
  ExpectError({"info", "--bogus"}, "unknown flag --bogus (see --help)");
  // A flag of another command is unknown to this one.
  ExpectError({"info", "--service", "x"}, "unknown flag --service (see --help)");
  ExpectError({"health", "--prompt-ids", "1"}, "unknown flag --prompt-ids (see --help)");
  ExpectError({"info", "--server"}, "--server needs a value");
  ExpectError({"info", "--server", ""}, "--server is empty (expected HOST:PORT)");
  ExpectError({"generate", "--max-new-tokens", "4"}, "generate needs --prompt-ids (e.g. 1,2,3)");
  ExpectError({"generate", "--prompt-ids", "1"}, "generate needs --max-new-tokens N");
  ExpectError({"generate", "--prompt-ids", "1,x", "--max-new-tokens", "4"},
              "--prompt-ids: 'x' is not an integer (expected e.g. 1,2,3)");
  ExpectError({"generate", "--prompt-ids", "1", "--max-new-tokens", "four"},
              "--max-new-tokens 'four' (expected a 32-bit integer)");
  ExpectError({"generate", "--prompt-ids", "1", "--max-new-tokens", "4294967296"},
              "--max-new-tokens '4294967296' (expected a 32-bit integer)");
  ExpectError({"generate", "--prompt-ids", "1", "--max-new-tokens", "4", "--temperature", "warm"},
              "--temperature 'warm' (expected a number)");
  ExpectError({"generate", "--prompt-ids", "1", "--max-new-tokens", "4", "--temperature", "1e39"},
              "--temperature '1e39' (expected a number in float range)");
  ExpectError({"generate", "--prompt-ids", "1", "--max-new-tokens", "4", "--top-p", "nan"},
              "--top-p 'nan' (expected a number)");
  ExpectError({"generate", "--prompt-ids", "1", "--max-new-tokens", "4", "--seed", "-1"},
              "--seed '-1' (expected an unsigned integer)");
  ExpectError({"generate", "--prompt-ids", "1", "--max-new-tokens", "4", "--ignore-eos=yes"},
              "--ignore-eos takes no value");
  // The deadline is the client's own setting, so its range is the client's to check.
  ExpectError({"info", "--timeout-ms", "0"}, "--timeout-ms '0' (expected an integer >= 1)");
}

}  // namespace
}  // namespace mla
