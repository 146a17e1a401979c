// mla-worker: one tensor-parallel rank. Started by mla-launch, one per local
// device (or CPU rank). Exit codes: 0 when the coordinator says shutdown;
// 1 when it fails (the coordinator or a peer is lost); 2 bad flags.
#include <glog/logging.h>

#include <cstdlib>
#include <iostream>

#include "kernels/cpu/gemm.h"
#include "launcher/cli_flags.h"
#include "launcher/decode_kernel_flag.h"
#include "runtime/moe_grouping.h"
#include "runtime/status_macros.h"
#include "runtime/worker.h"

namespace mla {
namespace {

absl::StatusOr<WorkerOptions> ParseOptions(int argc, char** argv) {
  MLA_ASSIGN_OR_RETURN(
      CliFlags flags,
      CliFlags::Parse(argc, argv,
                      {"model", "coordinator", "node-rank", "local-rank", "local-world-size", "host", "backend",
                       "threads", "num-blocks", "kv-cache-memory", "kv-cache-dtype", "collective-timeout-ms",
                       "connect-timeout-ms", "tls-ca", "decode-kernel", "moe-grouping"},
                      {"decode-graphs"}));
  WorkerOptions o;
  if (!flags.Has("model")) return absl::InvalidArgumentError("--model is required");
  o.model_dir = *flags.String("model");
  o.coordinator = flags.String("coordinator").value_or(o.coordinator);
  o.host = flags.String("host").value_or(o.host);
  o.backend = flags.String("backend").value_or("cpu");
  MLA_ASSIGN_OR_RETURN(int64_t node_rank, flags.Int("node-rank", 0, 0));
  MLA_ASSIGN_OR_RETURN(int64_t local_rank, flags.Int("local-rank", 0, 0));
  MLA_ASSIGN_OR_RETURN(int64_t local_world, flags.Int("local-world-size", 1, 1));
  MLA_ASSIGN_OR_RETURN(int64_t threads, flags.Int("threads", 1, 1));
  MLA_ASSIGN_OR_RETURN(o.num_blocks, flags.Int("num-blocks", 0, 0));
  MLA_ASSIGN_OR_RETURN(o.cache_memory_bytes, flags.Int("kv-cache-memory", o.cache_memory_bytes, 1));
  o.tls_ca_path = flags.String("tls-ca").value_or("");
  // The key travels in the environment, not argv, so `ps` does not show it.
  if (const char* key = std::getenv("MLA_API_KEY")) o.api_key = key;
  MLA_ASSIGN_OR_RETURN(o.cache_dtype, ParseCacheDType(flags.String("kv-cache-dtype").value_or("fp32")));
  MLA_ASSIGN_OR_RETURN(o.decode_kernel, DecodeKernelFlag(flags, o.backend));
  MLA_ASSIGN_OR_RETURN(o.moe_grouping, ParseMoeGrouping(flags.String("moe-grouping").value_or("host"), o.backend));
  MLA_ASSIGN_OR_RETURN(o.decode_graphs, DecodeGraphsFlag(flags, o.backend));
  MLA_ASSIGN_OR_RETURN(int64_t collective_ms, flags.Int("collective-timeout-ms", 5000, 1));
  MLA_ASSIGN_OR_RETURN(int64_t connect_ms, flags.Int("connect-timeout-ms", 60000, 1));
  o.node_rank = static_cast<int>(node_rank);
  o.local_rank = static_cast<int>(local_rank);
  o.local_world_size = static_cast<int>(local_world);
  o.threads = static_cast<int>(threads);
  o.collective_timeout = absl::Milliseconds(collective_ms);
  o.connect_timeout = absl::Milliseconds(connect_ms);
  return o;
}

}  // namespace
}  // namespace mla

int main(int argc, char** argv) {
  FLAGS_logtostderr = true;
  google::InitGoogleLogging(argv[0]);
  absl::StatusOr<mla::WorkerOptions> options = mla::ParseOptions(argc, argv);
  if (!options.ok()) {
    std::cerr << "mla-worker: error: " << options.status().message() << "\n";
    return 2;
  }
  mla::cpu::SetBlasThreads(options->threads);
  absl::Status s = mla::RunWorker(*options);
  if (!s.ok()) {
    std::cerr << "mla-worker: error: " << s.message() << "\n";
    return s.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }
  return 0;
}
