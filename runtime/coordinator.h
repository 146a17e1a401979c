// The coordinator process: one gRPC server with the client API, health,
// reflection and the control plane its workers connect to; an optional
// Prometheus endpoint; the engine keeps the workers in step.
#pragma once

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "runtime/engine.h"

namespace grpc {
class Server;
}

namespace mla {

class HttpServer;
struct ServingMetrics;

struct CoordinatorOptions {
  std::string model_dir;
  std::string host = "127.0.0.1";
  int port = 50051;
  int world_size = 1;
  std::string backend = "cpu";
  EngineOptions engine;  // world_size is taken from above
  // SIGTERM drains: no new requests, running ones get this long to finish.
  absl::Duration shutdown_timeout = absl::Seconds(30);
  std::string api_key;   // bearer token required on every call but health; empty: none
  std::string tls_cert;  // PEM certificate chain and key files: serve TLS when both set
  std::string tls_key;
  int metrics_port = -1;  // Prometheus /metrics on host:metrics_port; -1: off, 0: any free port
};

class Coordinator {
 public:
  // Reads the config (not the weights) and checks the model splits over the ranks.
  static absl::StatusOr<std::unique_ptr<Coordinator>> Create(const CoordinatorOptions& options);
  ~Coordinator();

  // Starts serving; bound ports (when 0 was asked for) are port() and metrics_port().
  absl::Status Start();
  int port() const { return port_; }
  int metrics_port() const;
  Engine& engine() { return *engine_; }
  // Serves until Shutdown() (then drains) or a worker failure; returns the failure or OK.
  absl::Status Wait();
  // Thread-safe; safe to call from a signal-watching thread.
  void Shutdown();

 private:
  Coordinator(CoordinatorOptions options, ModelConfig config, std::string architecture);
  struct Services;
  void Drain();

  CoordinatorOptions options_;
  std::unique_ptr<ServingMetrics> metrics_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<Services> services_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<HttpServer> http_;
  std::string architecture_;
  int port_ = 0;
  absl::Mutex mu_;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace mla
