// A tensor-parallel worker: registers with the coordinator, joins the
// collective group, loads its shard, and executes the step plans it is sent.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "kernels/cuda/mla_decode_variant.h"
#include "runtime/kv_cache.h"
#include "runtime/moe_grouping.h"

namespace mla {

struct WorkerOptions {
  std::string model_dir;
  std::string coordinator = "127.0.0.1:50051";  // HOST:PORT of the control plane
  std::string host = "127.0.0.1";               // the address peers reach this worker on
  std::string backend = "cpu";
  int node_rank = 0;
  int local_rank = 0;
  int local_world_size = 1;
  int threads = 1;             // attention threads; BLAS threads are set by the caller
  int64_t num_blocks = 0;      // latent cache blocks; 0: sized from cache_memory_bytes
  int64_t cache_memory_bytes = int64_t{256} << 20;  // --kv-cache-memory
  CacheDType cache_dtype = CacheDType::kF32;
  cuda::MlaDecodeVariant decode_kernel;  // --decode-kernel, the cuda backend's only
  MoeGrouping moe_grouping = MoeGrouping::kHost;  // --moe-grouping, device: the cuda backend's only
  bool decode_graphs = false;                     // --decode-graphs, the cuda backend's only
  std::string api_key;      // sent as a bearer token on every control-plane call
  std::string tls_ca_path;  // PEM root certificate: connect with TLS when set
  absl::Duration connect_timeout = absl::Seconds(60);     // waiting for the coordinator
  absl::Duration collective_timeout = absl::Seconds(5);  // a dead or hung peer is an error after this
};

// Runs until the coordinator sends shutdown (OK) or something fails: the
// coordinator is lost (Unavailable), a collective fails, a step errs.
absl::Status RunWorker(const WorkerOptions& options);

}  // namespace mla
