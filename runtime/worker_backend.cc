#include "runtime/worker_backend.h"

#include "absl/strings/str_cat.h"
#include "runtime/gloo_communicator.h"
#include "runtime/status_macros.h"

namespace mla {

int64_t CacheBlocksFor(const WorkerOptions& o, const ModelConfig& c, int64_t bytes_per_value) {
  if (o.num_blocks > 0) return o.num_blocks;
  const int64_t block_bytes = c.num_hidden_layers * kDefaultBlockSize * c.latent_dim() * bytes_per_value;
  return std::max<int64_t>(1, o.cache_memory_bytes / block_bytes);
}

absl::StatusOr<WorkerBackend> MakeCpuBackend(const WorkerOptions& o, KeyValueStore& store, int rank, int world) {
  struct Held {
    std::unique_ptr<Communicator> comm;  // outlives the model, which points to it
    std::unique_ptr<Model> model;
    std::unique_ptr<PagedLatentCache> cache;
  };
  auto held = std::make_shared<Held>();
  if (world == 1) {
    held->comm = MakeLocalCommunicator();
  } else {
    GlooOptions g;
    g.hostname = o.host;
    g.prefix = "gloo";
    g.timeout = o.collective_timeout;
    MLA_ASSIGN_OR_RETURN(held->comm, CreateGlooCommunicator(store, rank, world, g));
  }
  ModelOptions mo;
  mo.num_threads = o.threads;
  MLA_ASSIGN_OR_RETURN(held->model, Model::Load(o.model_dir, mo, held->comm.get()));
  const ModelConfig& c = held->model->config();
  held->cache = std::make_unique<PagedLatentCache>(
      held->model->MakeCache(CacheBlocksFor(o, c, CacheDTypeBytes(o.cache_dtype)), o.cache_dtype));
  WorkerBackend b;
  b.config = c;
  b.cache_blocks = held->cache->num_blocks();
  b.block_size = held->cache->block_size();
  b.cache_bytes = held->cache->bytes();
  b.weight_bytes = held->model->weights().bytes;
  b.device = "cpu";
  Held* h = held.get();
  b.forward = [h](std::span<const SequenceStep> batch) { return h->model->Forward(batch, *h->cache); };
  b.keep_alive = std::move(held);
  return b;
}

#ifndef MLA_HAVE_CUDA
absl::StatusOr<WorkerBackend> MakeCudaBackend(const WorkerOptions&, KeyValueStore&, int, int) {
  return absl::InvalidArgumentError("--backend cuda: this build has no CUDA backend (expected cpu)");
}
#endif

}  // namespace mla
