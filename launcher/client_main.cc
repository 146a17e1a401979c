// mla-client: a command-line client of the mla-serve gRPC API.
//   mla-client [--server HOST:PORT] generate --prompt-ids 1,2,3 --max-new-tokens N [sampling flags]
//   mla-client [--server HOST:PORT] health [--service NAME]
//   mla-client [--server HOST:PORT] info
// See kClientUsage (launcher/client_options.h) for the flags and output formats.
// Exit codes: 0 ok; 1 an RPC error or health not SERVING; 2 a bad command line.
#include <grpcpp/grpcpp.h>

#include <charconv>
#include <fstream>
#include <chrono>
#include <cmath>
#include <iostream>
#include <memory>
#include <optional>

#include "google/protobuf/util/json_util.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "launcher/client_options.h"
#include "mla/serving/v1/serving.grpc.pb.h"
#include "nlohmann/json.hpp"

namespace mla {
namespace {

using grpc::health::v1::Health;
using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;
using serving::v1::FinishReason;
using serving::v1::GenerateFinal;
using serving::v1::GeneratedToken;
using serving::v1::GenerateResponse;
using serving::v1::GetModelInfoRequest;
using serving::v1::Inference;
using serving::v1::ModelInfo;

// The canonical upper-case name of each gRPC code, as grpc's own tools print it.
const char* StatusCodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::UNKNOWN: return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED: return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL: return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS: return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: return "UNKNOWN_CODE";
  }
}

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case serving::v1::FINISH_REASON_LENGTH: return "length";
    case serving::v1::FINISH_REASON_STOP: return "stop";
    case serving::v1::FINISH_REASON_CANCELLED: return "cancelled";
    default: return "unspecified";
  }
}

// The one place a channel is made: TLS when --tls-ca names the root to trust.
std::shared_ptr<grpc::Channel> MakeChannel(const ClientOptions& options) {
  if (options.tls_ca.empty()) return grpc::CreateChannel(options.server, grpc::InsecureChannelCredentials());
  std::ifstream in(options.tls_ca);
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  return grpc::CreateChannel(options.server, grpc::SslCredentials(ssl));
}

// Per-call settings: the deadline and the API key.
void ConfigureCall(const ClientOptions& options, std::optional<int64_t> default_timeout_ms,
                   grpc::ClientContext& context) {
  if (!options.api_key.empty()) context.AddMetadata("authorization", "Bearer " + options.api_key);
  std::optional<int64_t> timeout_ms = options.timeout_ms ? options.timeout_ms : default_timeout_ms;
  if (timeout_ms) context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(*timeout_ms));
}

int RpcFail(const grpc::Status& status) {
  std::cerr << "mla-client: rpc error: " << StatusCodeName(status.error_code()) << ": " << status.error_message()
            << std::endl;
  return 1;
}

int Fail(int code, const std::string& message) {
  std::cerr << "mla-client: error: " << message << std::endl;
  return code;
}

// The double that prints as the float's shortest round-trip decimal, so that a
// logprob of -0.1f reads -0.1 rather than -0.10000000149011612.
double ShortestDouble(float f) {
  if (!std::isfinite(f)) return f;
  char buf[32];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), f);
  double d = f;
  if (ec == std::errc()) std::from_chars(buf, end, d);
  return d;
}

nlohmann::ordered_json FinalJson(const std::vector<GeneratedToken>& tokens, const GenerateFinal& final,
                                 bool with_logprobs) {
  nlohmann::ordered_json j;
  j["generated_ids"] = nlohmann::ordered_json::array();
  for (const GeneratedToken& t : tokens) j["generated_ids"].push_back(t.token_id());
  j["finish_reason"] = FinishReasonName(final.finish_reason());
  j["prompt_tokens"] = final.prompt_tokens();
  j["completion_tokens"] = final.completion_tokens();
  j["cached_prompt_tokens"] = final.cached_prompt_tokens();
  j["queue_time_us"] = final.queue_time_us();
  j["time_to_first_token_us"] = final.time_to_first_token_us();
  j["total_time_us"] = final.total_time_us();
  if (with_logprobs) {
    nlohmann::ordered_json logprobs = nlohmann::ordered_json::array(), top = nlohmann::ordered_json::array();
    for (const GeneratedToken& t : tokens) {
      logprobs.push_back(ShortestDouble(t.logprob()));
      nlohmann::ordered_json alternatives = nlohmann::ordered_json::array();
      for (const auto& alt : t.top_logprobs()) {
        alternatives.push_back({{"token_id", alt.token_id()}, {"logprob", ShortestDouble(alt.logprob())}});
      }
      top.push_back(std::move(alternatives));
    }
    j["logprobs"] = std::move(logprobs);
    j["top_logprobs"] = std::move(top);
  }
  return j;
}

int RunGenerate(const ClientOptions& options) {
  std::unique_ptr<Inference::Stub> stub = Inference::NewStub(MakeChannel(options));
  grpc::ClientContext context;
  ConfigureCall(options, std::nullopt, context);
  std::unique_ptr<grpc::ClientReader<GenerateResponse>> reader =
      stub->Generate(&context, ToGenerateRequest(options));
  std::vector<GeneratedToken> tokens;
  std::optional<GenerateFinal> final;
  GenerateResponse response;
  while (reader->Read(&response)) {
    if (response.has_token()) {
      std::cout << response.token().token_id() << std::endl;  // Flushed: a reader sees each token as it comes.
      tokens.push_back(std::move(*response.mutable_token()));
    } else if (response.has_final()) {
      final = std::move(*response.mutable_final());
    }
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) return RpcFail(status);
  if (!final) return Fail(1, "the Generate stream ended without its final message");
  std::cout << FinalJson(tokens, *final, options.logprobs.has_value()).dump() << std::endl;
  return 0;
}

int RunHealth(const ClientOptions& options) {
  std::unique_ptr<Health::Stub> stub = Health::NewStub(MakeChannel(options));
  grpc::ClientContext context;
  ConfigureCall(options, kDefaultUnaryTimeoutMs, context);
  HealthCheckRequest request;
  request.set_service(options.service);
  HealthCheckResponse response;
  grpc::Status status = stub->Check(&context, request, &response);
  if (!status.ok()) return RpcFail(status);
  std::cout << HealthCheckResponse::ServingStatus_Name(response.status()) << std::endl;
  return response.status() == HealthCheckResponse::SERVING ? 0 : 1;
}

int RunInfo(const ClientOptions& options) {
  std::unique_ptr<Inference::Stub> stub = Inference::NewStub(MakeChannel(options));
  grpc::ClientContext context;
  ConfigureCall(options, kDefaultUnaryTimeoutMs, context);
  ModelInfo info;
  grpc::Status status = stub->GetModelInfo(&context, GetModelInfoRequest(), &info);
  if (!status.ok()) return RpcFail(status);
  google::protobuf::util::JsonPrintOptions json_options;
  json_options.always_print_primitive_fields = true;
  json_options.preserve_proto_field_names = true;
  std::string json;
  if (auto s = google::protobuf::util::MessageToJsonString(info, &json, json_options); !s.ok()) {
    return Fail(1, "cannot write ModelInfo as JSON: " + s.ToString());
  }
  std::cout << json << std::endl;
  return 0;
}

int Run(int argc, char** argv) {
  absl::StatusOr<ClientOptions> options = ParseClientOptions(argc, argv);
  if (!options.ok()) return Fail(2, std::string(options.status().message()));
  if (options->help) {
    std::cout << kClientUsage;
    return 0;
  }
  switch (options->command) {
    case ClientCommand::kGenerate: return RunGenerate(*options);
    case ClientCommand::kHealth: return RunHealth(*options);
    case ClientCommand::kInfo: return RunInfo(*options);
  }
  return Fail(2, "no command");
}

}  // namespace
}  // namespace mla

int main(int argc, char** argv) { return mla::Run(argc, argv); }
