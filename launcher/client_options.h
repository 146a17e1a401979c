// Command-line options of mla-client. The client is a thin pipe to the server:
// it rejects only what it cannot parse (not a number, an unknown flag, a
// missing required flag) and passes every parsed value on as given, so the
// server's INVALID_ARGUMENT message, not a second client-side copy of its
// rules, is what a user sees for an out-of-range value.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mla/serving/v1/serving.pb.h"

namespace mla {

enum class ClientCommand { kGenerate, kHealth, kInfo };

inline constexpr char kDefaultServer[] = "127.0.0.1:50051";
// Deadline of health and info calls when --timeout-ms is not given; generate
// has none, since a long generation is not a hung one.
inline constexpr int64_t kDefaultUnaryTimeoutMs = 10'000;

inline constexpr char kClientUsage[] =
    "usage: mla-client [--server HOST:PORT] <command> [flags]\n"
    "  mla-client generate --prompt-ids 1,2,3 --max-new-tokens N [--temperature T] [--top-k K]\n"
    "                      [--top-p P] [--seed S] [--logprobs K] [--ignore-eos] [--request-id ID]\n"
    "                      [--stop-ids 5,9] [--timeout-ms MS]\n"
    "  mla-client health [--service NAME] [--timeout-ms MS]\n"
    "  mla-client info [--timeout-ms MS]\n"
    "  --server     defaults to 127.0.0.1:50051; it may come before or after the command\n"
    "  --timeout-ms call deadline; default none for generate, 10000 for health and info\n"
    "  --api-key    bearer token sent with every call (default $MLA_API_KEY)\n"
    "  --tls-ca     PEM root certificate: connect with TLS\n"
    "generate prints each token id on its own line as it arrives, then one JSON line:\n"
    "  {\"generated_ids\":[...],\"finish_reason\":\"length|stop|cancelled\",\"prompt_tokens\":N,\n"
    "   \"completion_tokens\":N,\"cached_prompt_tokens\":N,\"queue_time_us\":N,\"time_to_first_token_us\":N,\n"
    "   \"total_time_us\":N[,\"logprobs\":[...],\"top_logprobs\":[[{\"token_id\":T,\"logprob\":L},...],...]]}\n"
    "  (logprobs and top_logprobs only with --logprobs K).\n"
    "health prints the serving status (SERVING, NOT_SERVING, ...); info prints ModelInfo as JSON.\n"
    "Values go to the server unchecked; the server rejects out-of-range ones.\n"
    "Exit codes: 0 ok; 1 RPC error or health not SERVING; 2 bad command line.\n";

struct ClientOptions {
  ClientCommand command = ClientCommand::kGenerate;
  // --help was given: print kClientUsage and nothing else.
  bool help = false;
  std::string server = kDefaultServer;
  // The call deadline in milliseconds; unset means the command's default.
  std::optional<int64_t> timeout_ms;

  // generate
  std::vector<int32_t> prompt_ids;
  int32_t max_new_tokens = 0;
  float temperature = 0.0f;
  int32_t top_k = 0;
  std::optional<float> top_p;  // Sent only when given: unset means no cut.
  uint64_t seed = 0;
  // --logprobs K: report each token's logprob and its K most likely
  // alternatives. Unset: the output carries no logprobs at all.
  std::optional<int32_t> logprobs;
  bool ignore_eos = false;
  std::string request_id;
  std::vector<int32_t> stop_ids;

  // Every command: a bearer token (--api-key or $MLA_API_KEY) and, for TLS,
  // the PEM root certificate to trust (--tls-ca).
  std::string api_key;
  std::string tls_ca;

  // health: "" is the server as a whole.
  std::string service;
};

// Parses argv (argv[0] is the program). The one positional argument is the
// command; flags may come before or after it.
absl::StatusOr<ClientOptions> ParseClientOptions(int argc, char** argv);

// The Generate request for `options`, every value copied unchanged.
serving::v1::GenerateRequest ToGenerateRequest(const ClientOptions& options);

}  // namespace mla
