#include "launcher/launch_options.h"

#include <cstdlib>

#include <sys/stat.h>

#include <algorithm>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "launcher/cli_flags.h"
#include "launcher/decode_kernel_flag.h"
#include "runtime/moe_grouping.h"
#include "runtime/status_macros.h"

namespace mla {

const char kLaunchUsage[] =
    "usage: mla-launch --model DIR [--tp N] [--backend cpu|cuda] [--host H] [--port P]\n"
    "                  [--nnodes K --node-rank I --coordinator HOST:PORT] [--restart N]\n"
    "                  [--num-blocks B] [--kv-cache-dtype fp32|bf16] [--threads T]\n"
    "                  [--step-timeout-ms MS] [--grace-ms MS] [--kv-cache-memory BYTES]\n"
    "                  [--max-num-batched-tokens N] [--max-num-seqs N] [--max-queued-requests N]\n"
    "                  [--max-model-len N] [--no-prefix-caching] [--shutdown-timeout-ms MS]\n"
    "                  [--tls-cert PEM --tls-key PEM] [--api-key KEY] [--metrics-port P]\n"
    "Starts this node's share of a tensor-parallel group: the coordinator (node 0 only)\n"
    "and tp / nnodes workers, found next to mla-launch, and supervises them: when one\n"
    "ends, the group is stopped (and restarted up to --restart times after a failure).\n"
    "  --tp N               world size over all nodes (default 1); must divide by --nnodes\n"
    "  --host H             address to bind and advertise (default 127.0.0.1)\n"
    "  --port P             coordinator port on node 0 (default 50051)\n"
    "  --nnodes K           nodes in the group (default 1); --node-rank I in [0, K)\n"
    "  --coordinator H:P    where workers dial the coordinator (required on nodes > 0)\n"
    "  --threads T          BLAS threads per worker (default max(1, cores / local workers))\n"
    "  --step-timeout-ms MS passed to the coordinator (default 5000)\n"
    "  --grace-ms MS        SIGTERM to SIGKILL grace when stopping children (default 3000)\n"
    "  --shutdown-timeout-ms MS  SIGTERM drains: running requests get this long (default 30000)\n"
    "  --api-key KEY        bearer token required on every call but health (also $MLA_API_KEY)\n"
    "  --metrics-port P     Prometheus /metrics on --host:P (node 0)\n"
    "  --decode-kernel SPEC, --moe-grouping host|device, --decode-graphs\n"
    "                       (cuda) handed to every worker: the decode attention kernel, where MoE\n"
    "                       layers group tokens by expert, decode steps replayed from CUDA graphs\n"
    "Exit status: 0 clean shutdown; 1 a child failed (restarts spent); 2 bad flags or setup.\n";

namespace {

absl::StatusOr<int64_t> IntInRange(const CliFlags& flags, const std::string& name, int64_t fallback,
                                   int64_t lo, int64_t hi) {
  auto v = flags.Int(name, fallback, lo);
  if (v.ok() && *v > hi) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, " '", *v, "' (expected ", lo, "..", hi, ")"));
  }
  return v;
}

// "host:port", bracketing a bare IPv6 address.
std::string JoinHostPort(const std::string& host, int64_t port) {
  bool bare_v6 = host.find(':') != std::string::npos && host.front() != '[';
  return bare_v6 ? absl::StrCat("[", host, "]:", port) : absl::StrCat(host, ":", port);
}

absl::Status ValidateBackend(const std::string& backend) {
  if (backend == "cpu") return absl::OkStatus();
  if (backend == "cuda") {
#ifdef MLA_LAUNCH_WITH_CUDA
    return absl::OkStatus();
#else
    return absl::InvalidArgumentError("--backend cuda: this build has no CUDA backend (expected cpu)");
#endif
  }
  return absl::InvalidArgumentError(absl::StrCat("--backend '", backend, "' (expected cpu or cuda)"));
}

// Node layout: --tp, --nnodes, --node-rank.
absl::Status ParseTopology(const CliFlags& flags, LaunchOptions& o) {
  MLA_ASSIGN_OR_RETURN(o.tp, flags.Int("tp", 1, 1));
  MLA_ASSIGN_OR_RETURN(o.nnodes, flags.Int("nnodes", 1, 1));
  MLA_ASSIGN_OR_RETURN(o.node_rank, flags.Int("node-rank", 0, 0));
  if (o.node_rank >= o.nnodes) {
    return absl::InvalidArgumentError(
        absl::StrCat("--node-rank ", o.node_rank, " (expected 0 <= node-rank < --nnodes ", o.nnodes, ")"));
  }
  if (o.tp % o.nnodes != 0) {
    return absl::InvalidArgumentError(absl::StrCat("--tp ", o.tp, " does not divide by --nnodes ", o.nnodes,
                                                   " (each node runs tp / nnodes workers)"));
  }
  return absl::OkStatus();
}

// Addresses: --host, --port, --coordinator. When both --port and --coordinator
// are given their ports must agree, so one command line can serve every node.
absl::Status ParseAddresses(const CliFlags& flags, LaunchOptions& o) {
  o.host = flags.String("host").value_or(o.host);
  if (o.host.empty()) return absl::InvalidArgumentError("--host is empty (expected an address such as 127.0.0.1)");
  MLA_ASSIGN_OR_RETURN(o.port, IntInRange(flags, "port", 50051, 1, 65535));
  std::optional<std::string> coordinator = flags.String("coordinator");
  if (!coordinator) {
    if (!o.runs_coordinator()) {
      return absl::InvalidArgumentError(absl::StrCat("--coordinator HOST:PORT is required when --node-rank > 0 (got ",
                                                     o.node_rank, "; node 0 runs the coordinator)"));
    }
    o.coordinator = JoinHostPort(o.host, o.port);
    return absl::OkStatus();
  }
  MLA_ASSIGN_OR_RETURN(auto host_port, ParseHostPort("coordinator", *coordinator));
  if (!flags.Has("port")) {
    o.port = host_port.second;
  } else if (host_port.second != o.port) {
    return absl::InvalidArgumentError(absl::StrCat("--coordinator '", *coordinator, "' names port ", host_port.second,
                                                   " but --port is ", o.port, " (they must agree)"));
  }
  o.coordinator = *coordinator;
  return absl::OkStatus();
}

// What the workers get: --num-blocks, --kv-cache-dtype, --threads, --decode-kernel, --moe-grouping.
absl::Status ParseWorkerKnobs(const CliFlags& flags, int64_t cores, LaunchOptions& o) {
  if (flags.Has("num-blocks")) {
    MLA_ASSIGN_OR_RETURN(int64_t blocks, flags.Int("num-blocks", 0, 1));
    o.num_blocks = blocks;
  }
  if (auto dtype = flags.String("kv-cache-dtype")) {
    if (*dtype != "fp32" && *dtype != "bf16") {
      return absl::InvalidArgumentError(absl::StrCat("--kv-cache-dtype '", *dtype, "' (expected fp32 or bf16)"));
    }
    o.kv_cache_dtype = *dtype;
  }
  MLA_RETURN_IF_ERROR(DecodeKernelFlag(flags, o.backend).status());
  o.decode_kernel = flags.String("decode-kernel");
  o.moe_grouping = flags.String("moe-grouping");
  if (o.moe_grouping) MLA_RETURN_IF_ERROR(ParseMoeGrouping(*o.moe_grouping, o.backend).status());
  MLA_ASSIGN_OR_RETURN(o.decode_graphs, DecodeGraphsFlag(flags, o.backend));
  int64_t default_threads = std::max<int64_t>(1, cores / o.local_world_size());
  MLA_ASSIGN_OR_RETURN(o.threads, flags.Int("threads", default_threads, 1));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::pair<std::string, int64_t>> ParseHostPort(const std::string& flag, const std::string& value) {
  size_t colon = value.rfind(':');
  int64_t port = 0;
  if (colon == std::string::npos || colon == 0 || !absl::SimpleAtoi(value.substr(colon + 1), &port) || port < 1 ||
      port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, " '", value, "' (expected HOST:PORT, port 1..65535)"));
  }
  return std::make_pair(value.substr(0, colon), port);
}

absl::StatusOr<LaunchOptions> ParseLaunchOptions(int argc, char** argv, int64_t cores) {
  MLA_ASSIGN_OR_RETURN(CliFlags flags,
                       CliFlags::Parse(argc, argv,
                                       {"model", "tp", "backend", "host", "port", "nnodes", "node-rank",
                                        "coordinator", "restart", "num-blocks", "kv-cache-dtype", "threads",
                                        "step-timeout-ms", "grace-ms", "bin-dir", "kv-cache-memory",
                                        "max-num-batched-tokens", "max-num-seqs", "max-queued-requests",
                                        "max-model-len", "shutdown-timeout-ms", "tls-cert", "tls-key", "api-key",
                                        "metrics-port", "decode-kernel", "moe-grouping"},
                                       {"help", "no-prefix-caching", "decode-graphs"}));
  LaunchOptions o;
  o.model_dir = flags.String("model").value_or("");
  if (o.model_dir.empty()) return absl::InvalidArgumentError("--model DIR is required (the model directory)");
  o.backend = flags.String("backend").value_or(o.backend);
  MLA_RETURN_IF_ERROR(ValidateBackend(o.backend));
  MLA_RETURN_IF_ERROR(ParseTopology(flags, o));
  MLA_RETURN_IF_ERROR(ParseAddresses(flags, o));
  MLA_ASSIGN_OR_RETURN(o.restarts, flags.Int("restart", 0, 0));
  MLA_RETURN_IF_ERROR(ParseWorkerKnobs(flags, cores, o));
  MLA_ASSIGN_OR_RETURN(o.step_timeout_ms, flags.Int("step-timeout-ms", 5000, 1));
  MLA_ASSIGN_OR_RETURN(o.grace_ms, flags.Int("grace-ms", 3000, 0));
  o.bin_dir = flags.String("bin-dir").value_or("");
  for (const char* name : {"max-num-batched-tokens", "max-num-seqs", "max-queued-requests", "max-model-len",
                           "shutdown-timeout-ms", "tls-cert", "tls-key", "metrics-port"}) {
    if (auto v = flags.String(name)) o.coordinator_passthrough.insert(o.coordinator_passthrough.end(), {absl::StrCat("--", name), *v});
  }
  if (flags.Has("no-prefix-caching")) o.coordinator_passthrough.push_back("--no-prefix-caching");
  MLA_ASSIGN_OR_RETURN(o.shutdown_timeout_ms, flags.Int("shutdown-timeout-ms", 30000, 0));
  o.kv_cache_memory = flags.String("kv-cache-memory");
  o.tls_cert = flags.String("tls-cert");
  if (o.tls_cert.has_value() != flags.Has("tls-key")) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together (expected both or neither)");
  }
  o.api_key = flags.String("api-key").value_or("");
  if (o.api_key.empty()) {
    if (const char* key = std::getenv("MLA_API_KEY")) o.api_key = key;
  }
  return o;
}

absl::Status CheckModelDir(const std::string& model_dir) {
  struct stat st;
  if (stat(model_dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat("--model '", model_dir, "' is not a directory"));
  }
  return absl::OkStatus();
}

std::vector<std::string> CoordinatorArgs(const LaunchOptions& o) {
  return {"--model", o.model_dir,
          "--tp", absl::StrCat(o.tp),
          "--host", o.host,
          "--port", absl::StrCat(o.port),
          "--backend", o.backend,
          "--step-timeout-ms", absl::StrCat(o.step_timeout_ms)};
}

std::vector<std::string> CoordinatorArgsWithServing(const LaunchOptions& o) {
  std::vector<std::string> args = CoordinatorArgs(o);
  args.insert(args.end(), o.coordinator_passthrough.begin(), o.coordinator_passthrough.end());
  return args;
}

std::vector<std::string> ChildEnv(const LaunchOptions& o) {
  if (o.api_key.empty()) return {};
  return {absl::StrCat("MLA_API_KEY=", o.api_key)};
}

std::vector<std::string> WorkerArgs(const LaunchOptions& o, int64_t local_rank) {
  std::vector<std::string> args = {"--model", o.model_dir,
                                   "--coordinator", o.coordinator,
                                   "--node-rank", absl::StrCat(o.node_rank),
                                   "--local-rank", absl::StrCat(local_rank),
                                   "--local-world-size", absl::StrCat(o.local_world_size()),
                                   "--host", o.host,
                                   "--backend", o.backend,
                                   "--threads", absl::StrCat(o.threads)};
  if (o.num_blocks) args.insert(args.end(), {"--num-blocks", absl::StrCat(*o.num_blocks)});
  if (o.kv_cache_dtype) args.insert(args.end(), {"--kv-cache-dtype", *o.kv_cache_dtype});
  if (o.kv_cache_memory) args.insert(args.end(), {"--kv-cache-memory", *o.kv_cache_memory});
  if (o.tls_cert) args.insert(args.end(), {"--tls-ca", *o.tls_cert});
  if (o.decode_kernel) args.insert(args.end(), {"--decode-kernel", *o.decode_kernel});
  if (o.moe_grouping) args.insert(args.end(), {"--moe-grouping", *o.moe_grouping});
  if (o.decode_graphs) args.push_back("--decode-graphs");
  return args;
}

std::vector<std::string> WorkerEnv(const LaunchOptions& o) {
  std::vector<std::string> env = {absl::StrCat("OPENBLAS_NUM_THREADS=", o.threads),
                                  absl::StrCat("OMP_NUM_THREADS=", o.threads)};
  for (std::string& e : ChildEnv(o)) env.push_back(std::move(e));
  return env;
}

std::string WorkerName(const LaunchOptions& o, int64_t local_rank) {
  if (o.nnodes == 1) return absl::StrCat("worker rank ", local_rank);
  return absl::StrCat("worker node-rank ", o.node_rank, " local-rank ", local_rank);
}

std::string ServingLine(const LaunchOptions& o) {
  return absl::StrCat("mla-launch: node ", o.node_rank, "/", o.nnodes, " serving ", o.model_dir, " at ",
                      o.coordinator, " (tp ", o.tp, ", ", o.local_world_size(), " local workers, backend ",
                      o.backend, ")");
}

}  // namespace mla
