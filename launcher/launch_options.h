// mla-launch's flags and the command lines it builds for its children: parsing,
// validation (each message names the flag and what was expected) and argv
// construction, kept apart from process handling so they are unit-testable.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace mla {

struct LaunchOptions {
  std::string model_dir;
  int64_t tp = 1;                  // world size over all nodes
  std::string backend = "cpu";     // only cpu for now
  std::string host = "127.0.0.1";  // address this node binds and advertises
  int64_t port = 50051;            // coordinator port (node 0)
  int64_t nnodes = 1;
  int64_t node_rank = 0;
  // Where workers dial the coordinator: --coordinator, or host:port on node 0.
  std::string coordinator;
  int64_t restarts = 0;  // whole-group restarts allowed after a failure
  std::optional<int64_t> num_blocks;
  std::optional<std::string> kv_cache_dtype;  // fp32 | bf16
  std::optional<std::string> decode_kernel;   // --decode-kernel SPEC, checked, to workers as given
  std::optional<std::string> moe_grouping;    // --moe-grouping host|device, checked, to workers as given
  bool decode_graphs = false;                 // --decode-graphs, to workers
  int64_t threads = 1;                        // BLAS threads per worker
  int64_t step_timeout_ms = 5000;
  int64_t grace_ms = 3000;  // SIGTERM -> SIGKILL
  std::string bin_dir;      // hidden --bin-dir; empty: the launcher's own directory
  // Serving knobs handed to the coordinator as given ("--name", "value" pairs,
  // or a lone "--name" for switches); it validates them.
  std::vector<std::string> coordinator_passthrough;
  std::optional<std::string> kv_cache_memory;  // bytes, to workers
  std::optional<std::string> tls_cert;         // the coordinator serves TLS; workers trust this cert
  std::string api_key;                         // to every child through MLA_API_KEY (not argv)
  int64_t shutdown_timeout_ms = 30000;         // SIGTERM drains the coordinator this long

  int64_t local_world_size() const { return tp / nnodes; }
  bool runs_coordinator() const { return node_rank == 0; }
};

// The usage text printed by --help.
extern const char kLaunchUsage[];

// Parses argv (argv[0] is skipped). `cores` sets the --threads default:
// max(1, cores / local ranks). Does not touch the filesystem.
absl::StatusOr<LaunchOptions> ParseLaunchOptions(int argc, char** argv, int64_t cores);

// Splits "HOST:PORT" at the last ':' ("[::1]:50051" keeps its brackets).
absl::StatusOr<std::pair<std::string, int64_t>> ParseHostPort(const std::string& flag, const std::string& value);

// FailedPrecondition naming --model unless `model_dir` is a directory.
absl::Status CheckModelDir(const std::string& model_dir);

// The coordinator's argv with the serving knobs appended, and the environment
// every child gets (the API key, when set).
std::vector<std::string> CoordinatorArgsWithServing(const LaunchOptions& o);
std::vector<std::string> ChildEnv(const LaunchOptions& o);

// argv[1..] of the coordinator (node 0 only):
//   --model DIR --tp N --host H --port P --backend cpu --step-timeout-ms MS
std::vector<std::string> CoordinatorArgs(const LaunchOptions& o);
// argv[1..] of local worker `local_rank`:
//   --model DIR --coordinator HOST:PORT --node-rank I --local-rank j --local-world-size L
//   --host H --backend cpu --threads T [--num-blocks B] [--kv-cache-dtype D]
std::vector<std::string> WorkerArgs(const LaunchOptions& o, int64_t local_rank);
// Added to the launcher's environment for each worker: OPENBLAS_NUM_THREADS=T, OMP_NUM_THREADS=T.
std::vector<std::string> WorkerEnv(const LaunchOptions& o);
// How the launcher names a worker in its messages: "worker rank 1" on one node,
// "worker node-rank 1 local-rank 0" over several (global ranks are the coordinator's to assign).
std::string WorkerName(const LaunchOptions& o, int64_t local_rank);
// "mla-launch: node I/K serving <model> at HOST:PORT (tp N, L local workers, backend cpu)".
std::string ServingLine(const LaunchOptions& o);

}  // namespace mla
