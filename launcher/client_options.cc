#include "launcher/client_options.h"

#include <cstdlib>

#include <cfloat>
#include <cmath>
#include <map>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "launcher/cli_flags.h"
#include "runtime/status_macros.h"

namespace mla {
namespace {

struct CommandFlags {
  ClientCommand command;
  std::set<std::string> value_flags;
  std::set<std::string> bool_flags;
};

// Flags every command takes.
const std::set<std::string> kCommonValueFlags = {"server", "timeout-ms", "api-key", "tls-ca"};
const std::set<std::string> kCommonBoolFlags = {"help"};

const std::map<std::string, CommandFlags>& Commands() {
  static const auto* commands = new std::map<std::string, CommandFlags>{
      {"generate",
       {ClientCommand::kGenerate,
        {"prompt-ids", "max-new-tokens", "temperature", "top-k", "top-p", "seed", "logprobs", "request-id",
         "stop-ids"},
        {"ignore-eos"}}},
      {"health", {ClientCommand::kHealth, {"service"}, {}}},
      {"info", {ClientCommand::kInfo, {}, {}}},
  };
  return *commands;
}

// A flag that takes a value under any command, so that the value after it is
// never mistaken for the command.
bool TakesValue(const std::string& name) {
  if (kCommonValueFlags.count(name)) return true;
  for (const auto& [unused, spec] : Commands()) {
    if (spec.value_flags.count(name)) return true;
  }
  return false;
}

// argv split into the command (empty if none) and the flags around it.
struct SplitArgs {
  std::string command;
  std::vector<char*> flags;  // argv[0] first, as CliFlags::Parse expects.
  bool help = false;
};

absl::StatusOr<SplitArgs> SplitCommand(int argc, char** argv) {
  SplitArgs split;
  split.flags.push_back(argv[0]);
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) == 0) {
      split.flags.push_back(argv[i]);
      std::string name = arg.substr(2);
      if (name == "help") split.help = true;
      if (name.find('=') == std::string::npos && TakesValue(name) && i + 1 < argc) {
        split.flags.push_back(argv[++i]);
      }
    } else if (split.command.empty()) {
      split.command = arg;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("unexpected argument '", arg, "' after the command '", split.command, "'"));
    }
  }
  return split;
}

absl::StatusOr<int32_t> Int32Flag(const CliFlags& flags, const std::string& name, int32_t fallback) {
  std::optional<std::string> s = flags.String(name);
  if (!s) return fallback;
  int32_t v;
  if (!absl::SimpleAtoi(*s, &v)) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, " '", *s, "' (expected a 32-bit integer)"));
  }
  return v;
}

absl::StatusOr<float> FloatFlag(const CliFlags& flags, const std::string& name) {
  MLA_ASSIGN_OR_RETURN(double v, flags.Double(name, 0.0));
  if (std::fabs(v) > FLT_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, " '", *flags.String(name), "' (expected a number in float range)"));
  }
  return static_cast<float>(v);
}

absl::Status ParseGenerateFlags(const CliFlags& flags, ClientOptions& o) {
  if (!flags.Has("prompt-ids")) return absl::InvalidArgumentError("generate needs --prompt-ids (e.g. 1,2,3)");
  if (!flags.Has("max-new-tokens")) return absl::InvalidArgumentError("generate needs --max-new-tokens N");
  // An empty list is well-formed; whether an empty prompt is allowed is the server's call.
  if (!flags.String("prompt-ids")->empty()) {
    MLA_ASSIGN_OR_RETURN(o.prompt_ids, flags.IntList("prompt-ids"));
  }
  MLA_ASSIGN_OR_RETURN(o.max_new_tokens, Int32Flag(flags, "max-new-tokens", 0));
  MLA_ASSIGN_OR_RETURN(o.temperature, FloatFlag(flags, "temperature"));
  MLA_ASSIGN_OR_RETURN(o.top_k, Int32Flag(flags, "top-k", 0));
  if (flags.Has("top-p")) {
    MLA_ASSIGN_OR_RETURN(o.top_p, FloatFlag(flags, "top-p"));
  }
  MLA_ASSIGN_OR_RETURN(o.seed, flags.Uint64("seed", 0));
  if (flags.Has("logprobs")) {
    MLA_ASSIGN_OR_RETURN(o.logprobs, Int32Flag(flags, "logprobs", 0));
  }
  o.ignore_eos = flags.Has("ignore-eos");
  o.request_id = flags.String("request-id").value_or("");
  if (flags.Has("stop-ids") && !flags.String("stop-ids")->empty()) {
    MLA_ASSIGN_OR_RETURN(o.stop_ids, flags.IntList("stop-ids"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ClientOptions> ParseClientOptions(int argc, char** argv) {
  MLA_ASSIGN_OR_RETURN(SplitArgs split, SplitCommand(argc, argv));
  ClientOptions o;
  if (split.help) {
    o.help = true;
    return o;
  }
  if (split.command.empty()) return absl::InvalidArgumentError("missing command: generate, health or info");
  auto it = Commands().find(split.command);
  if (it == Commands().end()) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown command '", split.command, "' (expected generate, health or info)"));
  }
  const CommandFlags& spec = it->second;
  std::set<std::string> value_flags = spec.value_flags, bool_flags = spec.bool_flags;
  value_flags.insert(kCommonValueFlags.begin(), kCommonValueFlags.end());
  bool_flags.insert(kCommonBoolFlags.begin(), kCommonBoolFlags.end());
  MLA_ASSIGN_OR_RETURN(CliFlags flags, CliFlags::Parse(static_cast<int>(split.flags.size()), split.flags.data(),
                                                       value_flags, bool_flags));

  o.command = spec.command;
  o.server = flags.String("server").value_or(kDefaultServer);
  if (o.server.empty()) return absl::InvalidArgumentError("--server is empty (expected HOST:PORT)");
  o.api_key = flags.String("api-key").value_or("");
  if (o.api_key.empty()) {
    if (const char* key = std::getenv("MLA_API_KEY")) o.api_key = key;
  }
  o.tls_ca = flags.String("tls-ca").value_or("");
  if (flags.Has("timeout-ms")) {
    MLA_ASSIGN_OR_RETURN(o.timeout_ms, flags.Int("timeout-ms", 0, 1));
  }
  switch (o.command) {
    case ClientCommand::kGenerate:
      MLA_RETURN_IF_ERROR(ParseGenerateFlags(flags, o));
      break;
    case ClientCommand::kHealth:
      o.service = flags.String("service").value_or("");
      break;
    case ClientCommand::kInfo:
      break;
  }
  return o;
}

serving::v1::GenerateRequest ToGenerateRequest(const ClientOptions& options) {
  serving::v1::GenerateRequest req;
  req.mutable_prompt_token_ids()->Add(options.prompt_ids.begin(), options.prompt_ids.end());
  req.set_max_new_tokens(options.max_new_tokens);
  serving::v1::SamplingParams* sampling = req.mutable_sampling();
  sampling->set_temperature(options.temperature);
  sampling->set_top_k(options.top_k);
  if (options.top_p) sampling->set_top_p(*options.top_p);
  sampling->set_seed(options.seed);
  req.set_top_logprobs(options.logprobs.value_or(0));
  req.set_ignore_eos(options.ignore_eos);
  req.set_request_id(options.request_id);
  req.mutable_stop_token_ids()->Add(options.stop_ids.begin(), options.stop_ids.end());
  return req;
}

}  // namespace mla
