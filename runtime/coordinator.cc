#include "runtime/coordinator.h"

#include <glog/logging.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "runtime/auth.h"
#include "runtime/control_service.h"
#include "runtime/http_server.h"
#include "runtime/inference_service.h"
#include "runtime/metrics.h"
#include "runtime/status_macros.h"
#include "runtime/weights.h"

namespace mla {

struct Coordinator::Services {
  Services(Engine& engine, const std::string& prefix, const std::string& architecture, const CoordinatorOptions& o,
           ServingMetrics* metrics)
      : control(engine, prefix, o.api_key),
        inference(engine, architecture, o.backend, o.api_key, metrics),
        health(engine) {}
  ControlService control;
  InferenceService inference;
  HealthService health;
};

namespace {

std::string ReadArchitecture(const std::string& dir) {
  std::ifstream in(dir + "/config.json");
  std::stringstream s;
  s << in.rdbuf();
  nlohmann::json j = nlohmann::json::parse(s.str(), nullptr, false);
  if (j.is_object() && j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty() &&
      j["architectures"][0].is_string()) {
    return j["architectures"][0].get<std::string>();
  }
  return "";
}

absl::StatusOr<std::string> ReadPem(const std::string& path, const char* flag) {
  std::ifstream in(path);
  if (!in) return absl::InvalidArgumentError(absl::StrCat(flag, ": cannot read ", path));
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

}  // namespace

absl::StatusOr<std::unique_ptr<Coordinator>> Coordinator::Create(const CoordinatorOptions& options) {
  // The coordinator runs no model: the workers check that they can run the backend.
  if (options.backend != "cpu" && options.backend != "cuda") {
    return absl::InvalidArgumentError(absl::StrCat("--backend ", options.backend, " (expected cpu or cuda)"));
  }
  if (options.tls_cert.empty() != options.tls_key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together (expected both or neither)");
  }
  MLA_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(options.model_dir));
  MLA_RETURN_IF_ERROR(CheckShardable(config, options.world_size));
  std::string arch = ReadArchitecture(options.model_dir);
  return std::unique_ptr<Coordinator>(new Coordinator(options, std::move(config), std::move(arch)));
}

Coordinator::Coordinator(CoordinatorOptions options, ModelConfig config, std::string architecture)
    : options_(std::move(options)), metrics_(std::make_unique<ServingMetrics>()), architecture_(std::move(architecture)) {
  EngineOptions eo = options_.engine;
  eo.world_size = options_.world_size;
  engine_ = std::make_unique<Engine>(std::move(config), eo, metrics_.get());
  // A prefix unique to this coordinator: a restarted group never reads the
  // rendezvous keys of the one before.
  const std::string prefix = absl::StrCat("g", ::getpid(), "-", absl::ToUnixMicros(absl::Now()));
  services_ = std::make_unique<Services>(*engine_, prefix, architecture_, options_, metrics_.get());
}

Coordinator::~Coordinator() {
  engine_->Stop();
  if (server_) server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
  if (http_) http_->Stop();
}

int Coordinator::metrics_port() const { return http_ ? http_->port() : -1; }

absl::Status Coordinator::Start() {
  std::shared_ptr<grpc::ServerCredentials> creds = grpc::InsecureServerCredentials();
  if (!options_.tls_cert.empty()) {
    MLA_ASSIGN_OR_RETURN(std::string cert, ReadPem(options_.tls_cert, "--tls-cert"));
    MLA_ASSIGN_OR_RETURN(std::string key, ReadPem(options_.tls_key, "--tls-key"));
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({key, cert});
    creds = grpc::SslServerCredentials(ssl);
  }
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  const std::string address = absl::StrCat(options_.host, ":", options_.port);
  builder.AddListeningPort(address, creds, &port_);
  builder.RegisterService(&services_->control);
  builder.RegisterService(&services_->inference);
  builder.RegisterService(&services_->health);
  if (!options_.api_key.empty()) {
    std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
    interceptors.push_back(std::make_unique<BearerInterceptorFactory>(options_.api_key));
    builder.experimental().SetInterceptorCreators(std::move(interceptors));
  }
  // Streams live as long as requests and workers do; keep idle connections up.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", address, " (in use, or not an address of this host)"));
  }
  if (options_.metrics_port >= 0) {
    HttpServer::Options ho;
    ho.host = options_.host;
    ho.port = options_.metrics_port;
    http_ = std::make_unique<HttpServer>(ho);
    http_->Handle("/metrics", "text/plain; version=0.0.4; charset=utf-8",
                  [this] { return metrics_->registry.RenderText(); });
    MLA_RETURN_IF_ERROR(http_->Start());
  }
  engine_->Start();
  LOG(INFO) << "coordinator listening on " << options_.host << ":" << port_
            << (options_.tls_cert.empty() ? "" : " (TLS)") << ", waiting for " << options_.world_size << " workers"
            << (http_ ? absl::StrCat("; metrics on port ", http_->port()) : "");
  return absl::OkStatus();
}

// No new requests; the running ones get shutdown_timeout to finish.
void Coordinator::Drain() {
  engine_->Drain();
  const absl::Time deadline = absl::Now() + options_.shutdown_timeout;
  while (engine_->num_in_flight() > 0 && absl::Now() < deadline) {
    if (engine_->WaitForEnd(absl::Milliseconds(20)) == EngineState::kFailed) return;
  }
  if (engine_->num_in_flight() > 0) {
    LOG(WARNING) << engine_->num_in_flight() << " requests still running after the shutdown timeout";
  }
}

absl::Status Coordinator::Wait() {
  bool drain = false;
  while (true) {
    EngineState s = engine_->WaitForEnd(absl::Milliseconds(100));
    {
      absl::MutexLock lock(&mu_);
      drain = shutdown_;
    }
    if (drain || s == EngineState::kFailed) break;
  }
  if (drain && engine_->state() != EngineState::kFailed) Drain();
  absl::Status failure = engine_->failure();
  engine_->Stop();
  // Every request has its final status by now; the deadline lets the streams
  // flush it. (gRPC waits out the deadline while any client connection is
  // open, idle or not, so it stays short: the launcher's grace covers it.)
  server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
  if (http_) http_->Stop();
  return failure;
}

void Coordinator::Shutdown() {
  absl::MutexLock lock(&mu_);
  shutdown_ = true;
}

}  // namespace mla
