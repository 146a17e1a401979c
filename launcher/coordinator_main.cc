// mla-coordinator: serves the client API and keeps the workers in step.
// Started by mla-launch on node 0. Exit codes: 0 after SIGTERM/SIGINT; 2 bad
// flags or model; 3 the tensor-parallel group failed (a worker was lost).
#include <glog/logging.h>

#include <atomic>
#include <cstdlib>
#include <iostream>

#include "launcher/cli_flags.h"
#include "launcher/signal_watcher.h"
#include "runtime/coordinator.h"
#include "runtime/status_macros.h"

namespace mla {
namespace {

absl::StatusOr<CoordinatorOptions> ParseOptions(int argc, char** argv) {
  MLA_ASSIGN_OR_RETURN(
      CliFlags flags,
      CliFlags::Parse(argc, argv,
                      {"model", "tp", "host", "port", "backend", "step-timeout-ms", "heartbeat-ms",
                       "max-num-batched-tokens", "max-num-seqs", "max-queued-requests", "max-model-len",
                       "shutdown-timeout-ms", "tls-cert", "tls-key", "metrics-port"},
                      {"no-prefix-caching"}));
  CoordinatorOptions o;
  if (!flags.Has("model")) return absl::InvalidArgumentError("--model is required");
  o.model_dir = *flags.String("model");
  MLA_ASSIGN_OR_RETURN(int64_t tp, flags.Int("tp", 1, 1));
  o.world_size = static_cast<int>(tp);
  o.host = flags.String("host").value_or("127.0.0.1");
  MLA_ASSIGN_OR_RETURN(int64_t port, flags.Int("port", 50051, 0));
  o.port = static_cast<int>(port);
  o.backend = flags.String("backend").value_or("cpu");
  MLA_ASSIGN_OR_RETURN(int64_t step_ms, flags.Int("step-timeout-ms", 5000, 1));
  o.engine.step_timeout = absl::Milliseconds(step_ms);
  MLA_ASSIGN_OR_RETURN(int64_t heartbeat_ms, flags.Int("heartbeat-ms", 1000, 1));
  o.engine.heartbeat = absl::Milliseconds(heartbeat_ms);
  MLA_ASSIGN_OR_RETURN(o.engine.scheduler.max_num_batched_tokens, flags.Int("max-num-batched-tokens", 2048, 1));
  MLA_ASSIGN_OR_RETURN(o.engine.scheduler.max_num_seqs, flags.Int("max-num-seqs", 64, 1));
  MLA_ASSIGN_OR_RETURN(o.engine.max_queued_requests, flags.Int("max-queued-requests", 1024, 0));
  MLA_ASSIGN_OR_RETURN(o.engine.max_model_len, flags.Int("max-model-len", 0, 0));
  o.engine.prefix_caching = !flags.Has("no-prefix-caching");
  MLA_ASSIGN_OR_RETURN(int64_t shutdown_ms, flags.Int("shutdown-timeout-ms", 30000, 0));
  o.shutdown_timeout = absl::Milliseconds(shutdown_ms);
  o.tls_cert = flags.String("tls-cert").value_or("");
  o.tls_key = flags.String("tls-key").value_or("");
  MLA_ASSIGN_OR_RETURN(int64_t metrics_port, flags.Int("metrics-port", -1, -1));
  o.metrics_port = static_cast<int>(metrics_port);
  // The key travels in the environment, not argv, so `ps` does not show it.
  if (const char* key = std::getenv("MLA_API_KEY")) o.api_key = key;
  return o;
}

int Run(int argc, char** argv) {
  // Declared before the watcher so the watcher (and its callback) is gone first.
  std::unique_ptr<Coordinator> coordinator;
  std::atomic<Coordinator*> current{nullptr};
  std::atomic<bool> requested{false};
  SignalWatcher signals([&](int) {
    requested = true;
    if (Coordinator* c = current.load()) c->Shutdown();
  });
  absl::StatusOr<CoordinatorOptions> options = ParseOptions(argc, argv);
  if (!options.ok()) {
    std::cerr << "mla-coordinator: error: " << options.status().message() << "\n";
    return 2;
  }
  absl::StatusOr<std::unique_ptr<Coordinator>> created = Coordinator::Create(*options);
  if (!created.ok()) {
    std::cerr << "mla-coordinator: error: " << created.status().message() << "\n";
    return 2;
  }
  coordinator = std::move(*created);
  current = coordinator.get();
  if (requested) coordinator->Shutdown();
  if (absl::Status s = coordinator->Start(); !s.ok()) {
    std::cerr << "mla-coordinator: error: " << s.message() << "\n";
    return 2;
  }
  absl::Status s = coordinator->Wait();
  current = nullptr;
  if (!s.ok()) {
    std::cerr << "mla-coordinator: the tensor-parallel group failed: " << s.message() << "\n";
    return 3;
  }
  return 0;
}

}  // namespace
}  // namespace mla

int main(int argc, char** argv) {
  FLAGS_logtostderr = true;
  google::InitGoogleLogging(argv[0]);
  return mla::Run(argc, argv);
}
