// The coordinator process: one gRPC server with the client API, health, and
// the control plane its workers connect to; the engine keeps them in step.
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

struct CoordinatorOptions {
  std::string model_dir;
  std::string host = "127.0.0.1";
  int port = 50051;
  int world_size = 1;
  std::string backend = "cpu";
  absl::Duration step_timeout = absl::Seconds(5);
  absl::Duration heartbeat = absl::Seconds(1);
};

class Coordinator {
 public:
  // Reads the config (not the weights) and checks the model splits over the ranks.
  static absl::StatusOr<std::unique_ptr<Coordinator>> Create(const CoordinatorOptions& options);
  ~Coordinator();

  // Starts serving; the bound port (when options.port was 0) is port().
  absl::Status Start();
  int port() const { return port_; }
  Engine& engine() { return *engine_; }
  // Serves until Shutdown() or a worker failure; returns the failure or OK.
  absl::Status Wait();
  // Thread-safe; safe to call from a signal-watching thread.
  void Shutdown();

 private:
  Coordinator(CoordinatorOptions options, ModelConfig config, std::string architecture);
  struct Services;

  CoordinatorOptions options_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<Services> services_;
  std::unique_ptr<grpc::Server> server_;
  std::string architecture_;
  int port_ = 0;
  absl::Mutex mu_;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace mla
