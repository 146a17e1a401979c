// The worker's GPU backend: NCCL on the GPU named by the local rank, the BF16
// model and its paged latent cache in device memory. Compiled only with CUDA.
#include <glog/logging.h>

#include "runtime/cuda/cuda_model.h"
#include "runtime/nccl_communicator.h"
#include "runtime/status_macros.h"
#include "runtime/worker_backend.h"

namespace mla {

absl::StatusOr<WorkerBackend> MakeCudaBackend(const WorkerOptions& o, KeyValueStore& store, int rank, int world) {
  struct Held {
    std::unique_ptr<Communicator> comm;  // outlives the model, which points to it
    std::unique_ptr<cuda::CudaModel> model;
    std::unique_ptr<cuda::CudaLatentCache> cache;
    int rank = 0;
    ~Held() {
      if (model != nullptr && model->decode_graph_launches() > 0) {
        LOG(INFO) << "worker rank " << rank << ": " << model->decode_graph_launches()
                  << " decode steps replayed from CUDA graphs";
      }
    }
  };
  auto held = std::make_shared<Held>();
  held->rank = rank;
  // NCCL even for a group of one: the collectives take device pointers.
  NcclOptions n;
  n.device = o.local_rank;
  n.prefix = "nccl";
  n.timeout = o.collective_timeout;
  MLA_ASSIGN_OR_RETURN(held->comm, CreateNcclCommunicator(store, rank, world, n));
  cuda::CudaModelOptions mo;
  mo.device = o.local_rank;
  mo.decode = o.decode_kernel;
  mo.moe_grouping = o.moe_grouping;
  mo.decode_graphs = o.decode_graphs;
  MLA_ASSIGN_OR_RETURN(held->model, cuda::CudaModel::Load(o.model_dir, mo, held->comm.get()));
  LOG(INFO) << "worker rank " << rank << ": decode kernel " << cuda::MlaDecodeVariantSpec(mo.decode)
            << ", MoE grouping on the " << MoeGroupingName(mo.moe_grouping)
            << (mo.decode_graphs ? ", decode steps from CUDA graphs where one rank serves" : "");
  if (auto* nccl = dynamic_cast<NcclCommunicator*>(held->comm.get())) nccl->SetStream(held->model->stream());
  const ModelConfig& c = held->model->config();
  MLA_ASSIGN_OR_RETURN(cuda::CudaLatentCache cache, held->model->MakeCache(CacheBlocksFor(o, c, 2)));
  held->cache = std::make_unique<cuda::CudaLatentCache>(std::move(cache));
  WorkerBackend b;
  b.config = c;
  b.cache_blocks = CacheBlocksFor(o, c, 2);
  b.block_size = kDefaultBlockSize;
  b.cache_bytes = b.cache_blocks * c.num_hidden_layers * kDefaultBlockSize * c.latent_dim() * 2;
  b.weight_bytes = held->model->weight_bytes_by_kind();
  b.device = absl::StrCat("cuda:", o.local_rank);
  b.decode_kernel = cuda::MlaDecodeVariantSpec(mo.decode);
  cuda::CudaModel* model = held->model.get();
  cuda::CudaLatentCache* cache_ptr = held->cache.get();
  b.forward = [model, cache_ptr](std::span<const SequenceStep> batch) { return model->Forward(batch, *cache_ptr); };
  b.keep_alive = std::move(held);
  return b;
}

}  // namespace mla
