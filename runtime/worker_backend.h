// What a worker needs from its model, whichever backend holds it: a forward
// step over a ragged batch (logits on rank 0), and what it reports when ready.
#pragma once

#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/communicator.h"
#include "runtime/config.h"
#include "runtime/kv_store.h"
#include "runtime/model.h"
#include "runtime/weights.h"
#include "runtime/worker.h"

namespace mla {

struct WorkerBackend {
  ModelConfig config;
  std::function<absl::StatusOr<std::vector<float>>(std::span<const SequenceStep>)> forward;
  int64_t cache_blocks = 0;
  int64_t block_size = 0;
  int64_t cache_bytes = 0;
  WeightBytes weight_bytes;
  std::string device;                // "cpu" or "cuda:N"
  std::string decode_kernel;         // RankInfo.decode_kernel: "" on the CPU
  std::shared_ptr<void> keep_alive;  // owns the communicator, model and cache `forward` uses
};

// CPU ranks: Gloo (or a group of one), float32 model, latent cache in host memory.
absl::StatusOr<WorkerBackend> MakeCpuBackend(const WorkerOptions& o, KeyValueStore& store, int rank, int world);

// GPU ranks (built with CUDA only): NCCL on the GPU numbered by the local rank,
// BF16 model and cache in device memory.
absl::StatusOr<WorkerBackend> MakeCudaBackend(const WorkerOptions& o, KeyValueStore& store, int rank, int world);

// Blocks a rank's cache holds: --num-blocks, else what fits in cache_memory_bytes.
int64_t CacheBlocksFor(const WorkerOptions& o, const ModelConfig& c, int64_t bytes_per_value);

}  // namespace mla
