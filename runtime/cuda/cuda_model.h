// The DeepSeek-V3/V2 forward pass on one CUDA device, over a ragged batch, with
// the interface semantics of runtime/model.h mla::Model::Forward (the CPU
// reference): same SequenceStep batch, same block tables and block ids, logits
// [rows, vocab] float32 on the host, one row per sequence (its last token) or
// one per new token with all_logits, in batch order.
//
// Numerics (DESIGN.md section 5): BF16 weights and GEMM operands, FP32
// accumulation in every GEMM and kernel. Kept in FP32: the residual stream and
// the branch outputs added into it (o_proj, MLP down: also what the
// tensor-parallel all-reduce sums), the q_a / kv_a outputs that feed RMSNorm,
// the router (FP32 GEMM over FP32 normed hidden states), the logits. The latent
// cache is BF16.
//
// Tensor parallelism: `comm` is the group (device pointers: an NCCL
// communicator on this model's device); weights are this rank's slice
// (runtime/weights.h), every collective of the CPU model happens at the same
// place, and only rank 0 gets logits (the others return an empty vector).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cuda/mla_decode_variant.h"
#include "runtime/communicator.h"
#include "runtime/config.h"
#include "runtime/cuda/cuda_context.h"
#include "runtime/cuda/cuda_latent_cache.h"
#include "runtime/cuda/cuda_weights.h"
#include "runtime/cuda/device_buffer.h"
#include "runtime/model.h"
#include "runtime/moe_grouping.h"
#include "runtime/weights.h"

namespace mla::cuda {

// Where a MoE layer groups its tokens' expert choices by expert.
//   kHost: the expert ids come to the host, which groups them (a wait for the
//     device in every MoE layer), then one cuBLAS GEMM per used expert and
//     projection (two launches per expert at decode, where most experts get
//     a row or two).
//   kDevice: grouped by a kernel (kernels/cuda/moe_dispatch.cuh), and each
//     projection of every routed expert in one launch of head_gemm.cuh's
//     kernel over the grouped rows: a MoE layer queues without waiting for
//     the device (the condition for capturing a decode step as a CUDA graph).
//     Its grid has a block for the most rows any expert can get (the step's
//     tokens) times every expert, so steps of more than kMoeDeviceMaxTokens
//     tokens (prefill, where one wait a layer is small beside the work)
//     group on the host.
using ::mla::MoeGrouping;  // runtime/moe_grouping.h
inline constexpr int64_t kMoeDeviceMaxTokens = 256;

struct CudaModelOptions {
  int device = 0;
  // kAuto: the absorbed form for single-token steps (decode), the naive form
  // over cached + new latents otherwise. kNaive: the naive form for every
  // sequence. kAbsorbed is refused (no multi-query absorbed kernel yet).
  AttentionPath attention_path = AttentionPath::kAuto;
  // The decode attention's kernel and its variants (kernels/cuda/mla_decode_variant.h;
  // the tests check each in the whole model). Load refuses a choice the
  // model's latent cannot take, and any but the defaults where no tensor-core
  // decode takes it (the simple kernel has no variants). The 16-head wgmma
  // kernel (mma kWarpgroup) and 64 heads per block take DeepSeek-V3's latent
  // only (kv_lora_rank 512, qk_rope_head_dim 64: MlaDecodeUsesWgmma). Each
  // stays off by default until measured faster on a GPU (bench/RESULTS.md;
  // merge_in_block: session 8, --merge last-block). gemm kHead (the per-head
  // GEMMs by head_gemm.cuh) needs head widths that are multiples of 8.
  MlaDecodeVariant decode;
  // kHost until the device grouping is measured on a GPU (bench/RESULTS.md).
  // Load refuses kDevice where the experts' widths (hidden size, this rank's
  // intermediate size) are not multiples of 8: head_gemm.cuh's kernel copies
  // 16 bytes at a time.
  MoeGrouping moe_grouping = MoeGrouping::kHost;
  // Decode steps replayed from CUDA graphs: a step of one new token a
  // sequence, on one rank, with no MoE layer grouped on the host (so
  // moe_grouping kDevice, or a model without routed experts), is captured the
  // second time its shape comes (batch size, block-table width, the decode
  // plan's sizes, the same workspace and cache) and replayed from then on,
  // so the host's launch work per kernel leaves the step. The step's inputs
  // travel in its metadata upload, as always. Off until measured on a GPU.
  bool decode_graphs = false;
};

class CudaModel {
 public:
  // Reads <dir>/config.json and this rank's slice of the weights (the CPU
  // loader: float32, FP8 dequantised), then uploads them. `comm`: see above;
  // null means a group of one. Not owned; it must outlive the model.
  static absl::StatusOr<std::unique_ptr<CudaModel>> Load(const std::string& dir, const CudaModelOptions& options = {},
                                                         Communicator* comm = nullptr);
  // Uploads already loaded weights (consumed).
  static absl::StatusOr<std::unique_ptr<CudaModel>> Create(ModelConfig config, ModelWeights weights,
                                                           const CudaModelOptions& options = {},
                                                           Communicator* comm = nullptr);
  CudaModel(const CudaModel&) = delete;
  CudaModel& operator=(const CudaModel&) = delete;
  ~CudaModel();

  const ModelConfig& config() const { return config_; }
  // The stream every kernel and GEMM of this model runs on (an NCCL
  // communicator may enqueue its collectives on it: SetStream).
  cudaStream_t stream() const { return ctx_->stream(); }
  int device() const { return ctx_->device(); }
  int64_t weight_bytes() const { return weights_.bytes; }
  // Steps replayed from a CUDA graph so far (CudaModelOptions.decode_graphs).
  int64_t decode_graph_launches() const { return decode_graph_launches_; }
  const WeightBytes& weight_bytes_by_kind() const { return weights_.by_kind; }

  // A BF16 latent cache of num_blocks blocks of kDefaultBlockSize tokens on this device.
  absl::StatusOr<CudaLatentCache> MakeCache(int64_t num_blocks) const;

  // One step (see mla::Model::Forward): writes every new token's latent into
  // `cache` and returns the logits. Bad ids, positions or block tables give
  // InvalidArgument and leave the cache untouched; CUDA / cuBLAS failures
  // Internal naming the call; a failed collective its error.
  absl::StatusOr<std::vector<float>> Forward(std::span<const SequenceStep> batch, CudaLatentCache& cache);

 private:
  struct StepPlan;
  struct Workspace;

  CudaModel(ModelConfig config, const CudaModelOptions& options, Communicator* comm,
            std::unique_ptr<CudaContext> ctx);

  absl::Status Validate(std::span<const SequenceStep> batch, const CudaLatentCache& cache) const;
  absl::Status CheckDeviceGrouping() const;
  StepPlan Plan(std::span<const SequenceStep> batch, int64_t block_size) const;
  absl::Status Layout(const StepPlan& plan, Workspace& ws);
  // Forward past its checks and layout: the step's kernels, collectives and logits.
  absl::StatusOr<std::vector<float>> RunStep(const StepPlan& plan, Workspace& ws, CudaLatentCache& cache,
                                             bool moe_on_device);
  absl::Status Attention(int64_t layer, const StepPlan& plan, const Workspace& ws, CudaLatentCache& cache);
  // One of the per-head GEMMs around the absorbed decode, by whoever
  // options_.decode.gemm names: out[m, h, :] = x[m, h, :k] W_h for m < rows
  // and every local head, BF16 in and out, FP32 accumulation. x rows are
  // x_ld apart and heads x_head_stride; W_h lies in kv_b from w (head h at
  // h * (nope + v) rows of kv_lora), [k, n] when w_is_k_by_n (W_UK) else [n, k]
  // (W_UV); out rows out_ld apart, heads n.
  absl::Status HeadGemm(int64_t rows, const __nv_bfloat16* x, int64_t x_ld, int64_t x_head_stride, int64_t k,
                        const __nv_bfloat16* w, bool w_is_k_by_n, __nv_bfloat16* out, int64_t out_ld, int64_t n);
  absl::Status Mlp(const DeviceMlp& w, const __nv_bfloat16* x, int64_t rows, const Workspace& ws, float* out);
  absl::Status SiluMul(int64_t rows, int64_t inter, const Workspace& ws);
  // A MoE layer into ws.branch (CudaModelOptions.moe_grouping): grouped on
  // the host, or on the device; both route, gather and combine alike.
  absl::Status Moe(const DeviceMoe& w, int64_t rows, const Workspace& ws);
  absl::Status MoeGroupedOnDevice(const DeviceMoe& w, int64_t rows, const Workspace& ws);
  absl::Status Route(const DeviceMoe& w, int64_t rows, const Workspace& ws);
  absl::Status GatherHiddenRows(const Workspace& ws, const int32_t* rows, int64_t count, __nv_bfloat16* out);
  absl::Status CombineExperts(const DeviceMoe& w, int64_t rows, const Workspace& ws);
  // The step's device work (StepOnDevice: from a CUDA graph where it can,
  // else LaunchStep), the logits rows into ws.logits (LogitsOnDevice), then
  // to the host (LogitsToHost: the step's wait).
  absl::Status StepOnDevice(const StepPlan& plan, const Workspace& ws, CudaLatentCache& cache, bool moe_on_device);
  absl::Status LaunchStep(const StepPlan& plan, const Workspace& ws, CudaLatentCache& cache, bool moe_on_device);
  absl::Status LogitsOnDevice(const StepPlan& plan, const Workspace& ws);
  absl::StatusOr<std::vector<float>> LogitsToHost(const StepPlan& plan, const Workspace& ws);
  // Sums `data` (device, [count]) over the ranks; nothing with one rank.
  // Enqueued without a wait where enqueue_collectives_ (set by Forward for
  // its step: Communicator::CanEnqueueOn), else after waiting for the stream.
  absl::Status AllReduce(float* data, size_t count);
  int ranks() const { return comm_ == nullptr ? 1 : comm_->size(); }

  ModelConfig config_;
  CudaModelOptions options_;
  Communicator* comm_;
  std::unique_ptr<CudaContext> ctx_;
  DeviceWeights weights_;
  DeviceBuffer inv_freq_;  // float [qk_rope / 2]
  // int32 [MlaDecodeMaxMerges(sm_count)], one per merge item of a
  // step's decode plan: zero between launches (each launch sets back what it
  // counts). Allocated with options_.decode.merge_in_block only.
  DeviceBuffer decode_merge_counters_;
  float rope_attention_factor_ = 1.0f;
  float softmax_scale_ = 0.0f;
  bool enqueue_collectives_ = false;  // this step's all-reduces: see Forward
  // CudaModelOptions.decode_graphs: what a captured step's kernels were given
  // that the step's metadata does not carry (sizes, and the buffers' places).
  struct DecodeGraphKey {
    int64_t rows, max_blocks, meta_size;
    int items, merges, heads_per_block;
    int64_t partials;
    const void* meta;
    const void* cache;
    int64_t cache_blocks;
    bool operator==(const DecodeGraphKey&) const = default;
  };
  struct DecodeGraph {
    DecodeGraphKey key;
    cudaGraphExec_t exec;
  };
  static constexpr size_t kDecodeGraphsKept = 16;  // most recently used first
  std::vector<DecodeGraph> decode_graphs_;
  std::vector<DecodeGraphKey> decode_shapes_seen_;  // run once, launched: captured the next time
  int64_t decode_graph_launches_ = 0;
  DeviceArena workspace_;      // per-step activations, grown as needed
  PinnedBuffer meta_host_;     // the step's int32 metadata, staged for one upload
  PinnedBuffer routing_host_;  // a MoE layer's expert ids, downloaded
  PinnedBuffer dispatch_host_;  // a MoE layer's dispatch plan, staged for upload
  PinnedBuffer moe_bad_ids_host_;  // int32: the device grouping's count of bad expert ids, downloaded
};

}  // namespace mla::cuda
