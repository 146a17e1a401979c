#include "runtime/coordinator.h"

#include <glog/logging.h>
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "runtime/control_service.h"
#include "runtime/inference_service.h"
#include "runtime/status_macros.h"
#include "runtime/weights.h"

namespace mla {

struct Coordinator::Services {
  Services(Engine& engine, const std::string& prefix, const std::string& architecture, const std::string& backend)
      : control(engine, prefix), inference(engine, architecture, backend), health(engine) {}
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

}  // namespace

absl::StatusOr<std::unique_ptr<Coordinator>> Coordinator::Create(const CoordinatorOptions& options) {
  if (options.backend != "cpu") {
    return absl::InvalidArgumentError(
        absl::StrCat("--backend ", options.backend, ": the CUDA backend is not built yet (expected cpu)"));
  }
  MLA_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(options.model_dir));
  MLA_RETURN_IF_ERROR(CheckShardable(config, options.world_size));
  std::string arch = ReadArchitecture(options.model_dir);
  return std::unique_ptr<Coordinator>(new Coordinator(options, std::move(config), std::move(arch)));
}

Coordinator::Coordinator(CoordinatorOptions options, ModelConfig config, std::string architecture)
    : options_(std::move(options)), architecture_(std::move(architecture)) {
  EngineOptions eo;
  eo.world_size = options_.world_size;
  eo.step_timeout = options_.step_timeout;
  eo.heartbeat = options_.heartbeat;
  engine_ = std::make_unique<Engine>(std::move(config), eo);
  // A prefix unique to this coordinator: a restarted group never reads the
  // rendezvous keys of the one before.
  const std::string prefix = absl::StrCat("g", ::getpid(), "-", absl::ToUnixMicros(absl::Now()));
  services_ = std::make_unique<Services>(*engine_, prefix, architecture_, options_.backend);
}

Coordinator::~Coordinator() {
  engine_->Stop();
  if (server_) server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
}

absl::Status Coordinator::Start() {
  grpc::ServerBuilder builder;
  const std::string address = absl::StrCat(options_.host, ":", options_.port);
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &port_);
  builder.RegisterService(&services_->control);
  builder.RegisterService(&services_->inference);
  builder.RegisterService(&services_->health);
  // Streams live as long as requests and workers do; keep idle connections up.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", address));
  }
  engine_->Start();
  LOG(INFO) << "coordinator listening on " << options_.host << ":" << port_ << ", waiting for "
            << options_.world_size << " workers";
  return absl::OkStatus();
}

absl::Status Coordinator::Wait() {
  while (true) {
    EngineState s = engine_->WaitForEnd(absl::Milliseconds(200));
    {
      absl::MutexLock lock(&mu_);
      if (shutdown_) break;
    }
    if (s == EngineState::kFailed) break;
  }
  absl::Status failure = engine_->failure();
  engine_->Stop();
  // Every request has its final status by now; the deadline lets the streams
  // flush it. (gRPC waits out the deadline while any client connection is
  // open, idle or not, so it stays short: the launcher's grace is 3 s.)
  server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
  return failure;
}

void Coordinator::Shutdown() {
  absl::MutexLock lock(&mu_);
  shutdown_ = true;
}

}  // namespace mla
