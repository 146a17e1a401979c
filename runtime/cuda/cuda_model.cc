#include "runtime/cuda/cuda_model.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <functional>
#include <type_traits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/rope.h"
#include "kernels/cuda/convert.cuh"
#include "kernels/cuda/embedding.cuh"
#include "kernels/cuda/head_gemm.cuh"
#include "kernels/cuda/latent_cache.cuh"
#include "kernels/cuda/latent_gather.cuh"
#include "kernels/cuda/latent_norm_rope.cuh"
#include "kernels/cuda/mla_decode.cuh"
#include "kernels/cuda/mla_prefill.cuh"
#include "kernels/cuda/mlp.cuh"
#include "kernels/cuda/moe_dispatch.cuh"
#include "kernels/cuda/moe_routing.cuh"
#include "kernels/cuda/rmsnorm_f32.cuh"
#include "kernels/cuda/rope.cuh"
#include "runtime/checkpoint.h"
#include "runtime/cuda_status.h"
#include "runtime/kv_cache.h"
#include "runtime/status_macros.h"

namespace mla::cuda {

using bf16 = __nv_bfloat16;

// The host's plan of one step. Rows (tokens) are reordered so that the
// sequences attended in the naive form come first, in batch order, and the
// absorbed (decode) ones last, one row each: every per-token op is row-wise,
// each attention form then reads one contiguous range of rows, and the logits
// rows map back to batch order. Everything the device needs is in `meta`
// (int32), uploaded once.
struct CudaModel::StepPlan {
  int64_t rows = 0;          // new tokens in the step
  int64_t naive_rows = 0;    // rows [0, naive_rows): naive-form sequences
  int64_t naive_seqs = 0;    // sequences [0, naive_seqs) in plan order
  int64_t decode_seqs = 0;   // sequences [naive_seqs, naive_seqs + decode_seqs): one row each
  int64_t naive_kv = 0;      // latents the naive sequences attend to (cached + new)
  int64_t max_blocks = 0;    // block table width
  int64_t logit_rows = 0;
  // Offsets (in int32 elements) into meta.
  size_t token_ids = 0;  // [rows]
  size_t positions = 0;  // [rows]
  size_t token_seq = 0;  // [rows]: plan-order sequence of each row
  size_t tables = 0;     // [seqs, max_blocks], padded with -1
  size_t kv_lens = 0;    // [decode_seqs]: cached + 1
  size_t cu_q = 0;       // [naive_seqs + 1]
  size_t cu_kv = 0;      // [naive_seqs + 1]
  size_t kv_seq = 0;     // [naive_kv]: plan-order sequence of each gathered latent
  size_t kv_pos = 0;     // [naive_kv]: its position
  size_t out_rows = 0;   // [logit_rows]: the row of each logits row, batch order
  // The decode attention's work partition (kernels/cuda/mla_decode_plan.h),
  // planned here once for all layers; empty where the simple kernel runs.
  size_t decode_items = 0;   // MlaDecodeWorkItem[num_decode_items]
  size_t decode_merges = 0;  // MlaDecodeMergeItem[num_decode_merges]
  int num_decode_items = 0;
  int num_decode_merges = 0;
  int decode_heads_per_block = 0;
  int64_t decode_partials = 0;
  std::vector<int32_t> meta;
};

// Device pointers of one step's activations (carved from workspace_).
struct CudaModel::Workspace {
  int32_t* meta = nullptr;
  float* x = nullptr;        // [rows, hidden] residual stream
  float* branch = nullptr;   // [rows, hidden] attention / MLP output, all-reduced
  bf16* h = nullptr;         // [rows, hidden] normed
  float* h32 = nullptr;      // [rows, hidden] normed, unrounded (router input)
  float* qa32 = nullptr;     // [rows, q_lora]
  bf16* qa = nullptr;        // [rows, q_lora] normed
  bf16* q = nullptr;         // [rows, heads, qk_head]
  float* kva32 = nullptr;    // [rows, latent]
  bf16* latent = nullptr;    // [rows, latent] normed, RoPE'd: what the cache stores
  bf16* heads_out = nullptr; // [rows, heads, v_head]
  bf16* kv_lat = nullptr;    // [naive_kv, latent] gathered from the cache
  bf16* kv = nullptr;        // [naive_kv, heads, qk_nope + v_head]
  bf16* q_pe = nullptr;      // [decode_seqs, heads, qk_rope]
  bf16* q_lat = nullptr;     // [decode_seqs, heads, kv_lora]
  bf16* o_lat = nullptr;     // [decode_seqs, heads, kv_lora]
  float* decode_partial = nullptr;      // [decode_partials, heads_per_block, kv_lora]
  float* decode_partial_lse = nullptr;  // [decode_partials, heads_per_block]
  bf16* gate_up = nullptr;   // [mlp rows, 2 * inter], the largest MLP of the step
  bf16* act = nullptr;       // [mlp rows, inter]
  float* router = nullptr;   // [rows, n_routed_experts]
  int32_t* expert_ids = nullptr;  // [rows, top_k]
  float* expert_w = nullptr;      // [rows, top_k]
  int32_t* dispatch = nullptr;    // [2, rows * top_k]: gather rows | slot rows
  int32_t* expert_rows = nullptr;  // [n_routed_experts + 1]: each expert's dispatch rows (device grouping)
  int32_t* moe_bad_ids = nullptr;  // [1]: out-of-range expert ids the device grouping saw this step
  bf16* xs = nullptr;        // [rows * top_k, hidden] dispatched hidden states
  float* ys = nullptr;       // [rows * top_k, hidden] expert outputs, dispatch order
  bf16* sel = nullptr;       // [logit_rows, hidden]
  float* logits = nullptr;   // [logit_rows, local_vocab]
  float* gathered = nullptr; // [ranks, logit_rows, local_vocab] (rank 0, ranks > 1)
};

namespace {

static_assert(kMoeGroupMaxExperts >= kMoeMaxExperts, "the device grouping takes every expert count Load takes");

// One launcher call: its cudaError_t as a Status naming the launcher.
#define MLA_LAUNCH(launcher, params) MLA_CUDA_RETURN_IF_ERROR(launcher(params, ctx_->stream()))

// Appends structs of int32 fields to the int32 meta array; returns their offset.
template <typename T>
size_t AppendPod(std::vector<int32_t>& meta, const std::vector<T>& items) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) % sizeof(int32_t) == 0 && alignof(T) <= 4);
  const size_t offset = meta.size();
  meta.resize(offset + items.size() * sizeof(T) / sizeof(int32_t));
  if (!items.empty()) std::memcpy(meta.data() + offset, items.data(), items.size() * sizeof(T));
  return offset;
}

// The decode kernel choice (CudaModelOptions.decode) against the latent.
absl::Status CheckDecodeVariant(const ModelConfig& c, const MlaDecodeVariant& v) {
  const int kv_lora = static_cast<int>(c.kv_lora_rank), rope = static_cast<int>(c.qk_rope_head_dim);
  const int hpb = v.heads_per_block;
  if (hpb != 0 && hpb != 16 && hpb != 32 && hpb != 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("decode heads per block ", hpb, " (expected 0 for the default, 16, 32 or 64)"));
  }
  if (!v.IsDefault() && !MlaDecodeUsesTensorCores(kv_lora, rope)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "decode kernel options for kv_lora_rank ", kv_lora, ", qk_rope_head_dim ", rope,
        ": no tensor-core decode takes this latent (expected kv_lora_rank <= 512, a multiple of 8, and a latent "
        "that is a multiple of 16 and at most 640), and the simple kernel has no options"));
  }
  if ((hpb == 64 || v.mma == MlaDecodeMma::kWarpgroup) && !MlaDecodeUsesWgmma(kv_lora, rope)) {
    return absl::InvalidArgumentError(absl::StrCat(
        hpb == 64 ? "decode heads per block 64" : "decode mma warpgroup", " for kv_lora_rank ", kv_lora,
        ", qk_rope_head_dim ", rope, " (expected DeepSeek-V3's latent: kv_lora_rank 512, qk_rope_head_dim 64)"));
  }
  // head_gemm.cuh's kernel copies 16 bytes at a time: every width and stride
  // of the two per-head GEMMs (q rows of nope + rope, kv_b rows of kv_lora,
  // outputs of kv_lora and v) a whole number of 8 BF16 values.
  if (v.gemm == MlaDecodeGemm::kHead &&
      (c.qk_nope_head_dim % 8 != 0 || c.qk_rope_head_dim % 8 != 0 || c.kv_lora_rank % 8 != 0 ||
       c.v_head_dim % 8 != 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "decode gemm head for qk_nope_head_dim ", c.qk_nope_head_dim, ", qk_rope_head_dim ", c.qk_rope_head_dim,
        ", kv_lora_rank ", c.kv_lora_rank, ", v_head_dim ", c.v_head_dim,
        " (expected each a multiple of 8: the per-head GEMM kernel copies 16 bytes at a time)"));
  }
  return absl::OkStatus();
}

absl::Status CheckLimits(const ModelConfig& c, const CudaModelOptions& o) {
  if (o.attention_path == AttentionPath::kAbsorbed) {
    return absl::InvalidArgumentError(
        "attention_path kAbsorbed is not supported on CUDA (expected kAuto or kNaive): the absorbed kernel "
        "takes one query per sequence");
  }
  if (c.latent_dim() > kMlaDecodeMaxLatent) {
    return absl::InvalidArgumentError(absl::StrCat("kv_lora_rank + qk_rope_head_dim = ", c.latent_dim(),
                                                   " (expected at most ", kMlaDecodeMaxLatent, " on CUDA)"));
  }
  if (c.qk_head_dim() > kMlaPrefillMaxDim || c.v_head_dim > kMlaPrefillMaxDim) {
    return absl::InvalidArgumentError(absl::StrCat("qk_head_dim ", c.qk_head_dim(), ", v_head_dim ", c.v_head_dim,
                                                   " (expected each at most ", kMlaPrefillMaxDim, " on CUDA)"));
  }
  MLA_RETURN_IF_ERROR(CheckDecodeVariant(c, o.decode));
  if (c.qk_rope_head_dim % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("qk_rope_head_dim ", c.qk_rope_head_dim, " (expected even)"));
  }
  bool any_moe = false;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) any_moe = any_moe || c.IsMoeLayer(l);
  if (any_moe) {
    if (c.n_routed_experts > kMoeMaxExperts || c.num_experts_per_tok < 1 ||
        c.num_experts_per_tok > c.n_routed_experts) {
      return absl::InvalidArgumentError(absl::StrCat("n_routed_experts ", c.n_routed_experts,
                                                     ", num_experts_per_tok ", c.num_experts_per_tok,
                                                     " (expected 1 <= num_experts_per_tok <= n_routed_experts <= ",
                                                     kMoeMaxExperts, " on CUDA)"));
    }
    if (c.n_group < 1 || c.n_routed_experts % c.n_group != 0 ||
        (c.topk_method != TopkMethod::kGreedy && (c.topk_group < 1 || c.topk_group > c.n_group)) ||
        (c.topk_method == TopkMethod::kNoauxTc && c.n_routed_experts / c.n_group < 2)) {
      return absl::InvalidArgumentError(absl::StrCat("n_group ", c.n_group, ", topk_group ", c.topk_group,
                                                     " over ", c.n_routed_experts,
                                                     " experts (expected groups that divide the experts, "
                                                     "1 <= topk_group <= n_group, and two experts per group "
                                                     "for noaux_tc)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<CudaModel>> CudaModel::Load(const std::string& dir, const CudaModelOptions& options,
                                                           Communicator* comm) {
  MLA_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(dir));
  ShardSpec shard;
  if (comm != nullptr) shard = ShardSpec{comm->rank(), comm->size()};
  MLA_RETURN_IF_ERROR(CheckShardable(config, shard.size));  // before any weight is read
  MLA_RETURN_IF_ERROR(CheckLimits(config, options));
  MLA_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ckpt, Checkpoint::Open(dir));
  MLA_ASSIGN_OR_RETURN(ModelWeights weights, LoadWeights(*ckpt, config, shard));
  return Create(std::move(config), std::move(weights), options, comm);
}

absl::StatusOr<std::unique_ptr<CudaModel>> CudaModel::Create(ModelConfig config, ModelWeights weights,
                                                             const CudaModelOptions& options, Communicator* comm) {
  MLA_RETURN_IF_ERROR(CheckLimits(config, options));
  if (comm != nullptr && (weights.shard.rank != comm->rank() || weights.shard.size != comm->size())) {
    return absl::InvalidArgumentError(absl::StrCat("weights of rank ", weights.shard.rank, " of ", weights.shard.size,
                                                   " for communicator rank ", comm->rank(), " of ", comm->size()));
  }
  MLA_ASSIGN_OR_RETURN(std::unique_ptr<CudaContext> ctx, CudaContext::Create(options.device));
  std::unique_ptr<CudaModel> model(new CudaModel(std::move(config), options, comm, std::move(ctx)));
  MLA_ASSIGN_OR_RETURN(model->weights_, UploadWeights(model->config_, std::move(weights)));
  if (options.moe_grouping == MoeGrouping::kDevice) MLA_RETURN_IF_ERROR(model->CheckDeviceGrouping());
  const cpu::RopeParams rope = RopeParamsFor(model->config_);
  const std::vector<float> inv_freq = cpu::RopeInvFreq(rope);
  model->rope_attention_factor_ = static_cast<float>(rope.attention_factor);
  MLA_ASSIGN_OR_RETURN(model->inv_freq_, DeviceBuffer::Allocate(inv_freq.size() * sizeof(float)));
  if (!inv_freq.empty()) {
    MLA_CUDA_RETURN_IF_ERROR(cudaMemcpy(model->inv_freq_.data(), inv_freq.data(), inv_freq.size() * sizeof(float),
                                        cudaMemcpyHostToDevice));
  }
  if (options.decode.merge_in_block) {
    const size_t counters = static_cast<size_t>(MlaDecodeMaxMerges(model->ctx_->sm_count()));
    MLA_ASSIGN_OR_RETURN(model->decode_merge_counters_, DeviceBuffer::Allocate(counters * sizeof(int32_t)));
    MLA_CUDA_RETURN_IF_ERROR(cudaMemset(model->decode_merge_counters_.data(), 0, counters * sizeof(int32_t)));
  }
  MLA_CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());  // the model's stream does not wait for the default one
  return model;
}

// What MoeGroupedOnDevice needs of the weights (head_gemm.cuh's kernel: 16-byte pieces).
absl::Status CudaModel::CheckDeviceGrouping() const {
  const int64_t hd = config_.hidden_size;
  for (size_t l = 0; l < weights_.layers.size(); ++l) {
    const DeviceMoe& m = weights_.layers[l].moe;
    if (!weights_.layers[l].is_moe) continue;
    const int64_t inter = m.experts.empty() ? 0 : m.experts.front().inter;
    if (hd % 8 != 0 || inter % 8 != 0 || inter <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "moe grouping device for hidden_size ", hd, " and a per-rank expert intermediate size of ", inter,
          " (expected both multiples of 8: the grouped expert GEMM copies 16 bytes at a time)"));
    }
    if (!m.experts_strided) {
      return absl::InternalError(absl::StrCat("layer ", l, "'s experts are not at one stride on the device"));
    }
  }
  return absl::OkStatus();
}

CudaModel::CudaModel(ModelConfig config, const CudaModelOptions& options, Communicator* comm,
                     std::unique_ptr<CudaContext> ctx)
    : config_(std::move(config)), options_(options), comm_(comm), ctx_(std::move(ctx)) {
  softmax_scale_ = static_cast<float>(config_.SoftmaxScale());
}

CudaModel::~CudaModel() {
  // Nothing queued may outlive the buffers it uses.
  if (ctx_ != nullptr) cudaStreamSynchronize(ctx_->stream());
  for (const DecodeGraph& g : decode_graphs_) cudaGraphExecDestroy(g.exec);
}

absl::StatusOr<CudaLatentCache> CudaModel::MakeCache(int64_t num_blocks) const {
  MLA_RETURN_IF_ERROR(ctx_->Activate());
  return CudaLatentCache::Create(config_.num_hidden_layers, num_blocks, kDefaultBlockSize, config_.latent_dim());
}

// The CPU model's checks and messages (runtime/model.cc Model::Validate).
absl::Status CudaModel::Validate(std::span<const SequenceStep> batch, const CudaLatentCache& cache) const {
  if (absl::Status s = ValidateStep(config_, batch,
                                    CacheShape{cache.num_layers(), cache.latent_dim(), cache.block_size(),
                                               cache.num_blocks()});
      !s.ok()) {
    return s;
  }
  int64_t rows = 0, kv = 0;
  for (const SequenceStep& seq : batch) {
    rows += static_cast<int64_t>(seq.tokens.size());
    kv += seq.cached_len + static_cast<int64_t>(seq.tokens.size());
  }
  // Kernels index rows and latents with 32-bit ids and grid dimensions.
  const int64_t top_k = std::max<int64_t>(config_.num_experts_per_tok, 1);
  if (rows * top_k > INT32_MAX || kv > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("step of ", rows, " new tokens over ", kv,
                                                   " positions (expected fewer than ", INT32_MAX / top_k, ")"));
  }
  return absl::OkStatus();
}

CudaModel::StepPlan CudaModel::Plan(std::span<const SequenceStep> batch, int64_t block_size) const {
  StepPlan p;
  std::vector<size_t> order;  // plan order -> batch index
  for (size_t s = 0; s < batch.size(); ++s) {
    const bool absorbed = options_.attention_path == AttentionPath::kAuto && batch[s].tokens.size() == 1;
    if (!absorbed) order.push_back(s);
  }
  p.naive_seqs = static_cast<int64_t>(order.size());
  for (size_t s = 0; s < batch.size(); ++s) {
    const bool absorbed = options_.attention_path == AttentionPath::kAuto && batch[s].tokens.size() == 1;
    if (absorbed) order.push_back(s);
  }
  p.decode_seqs = static_cast<int64_t>(order.size()) - p.naive_seqs;
  for (const SequenceStep& s : batch) {
    const int64_t n = static_cast<int64_t>(s.tokens.size());
    p.rows += n;
    p.max_blocks = std::max(p.max_blocks, (s.cached_len + n + block_size - 1) / block_size);
  }
  for (int64_t i = 0; i < p.naive_seqs; ++i) {
    const SequenceStep& s = batch[order[static_cast<size_t>(i)]];
    p.naive_rows += static_cast<int64_t>(s.tokens.size());
    p.naive_kv += s.cached_len + static_cast<int64_t>(s.tokens.size());
  }

  const int64_t seqs = static_cast<int64_t>(order.size());
  std::vector<int32_t>& m = p.meta;
  auto reserve = [&m](size_t& offset, int64_t count) {
    offset = m.size();
    m.resize(m.size() + static_cast<size_t>(count), 0);
  };
  reserve(p.token_ids, p.rows);
  reserve(p.positions, p.rows);
  reserve(p.token_seq, p.rows);
  reserve(p.tables, seqs * p.max_blocks);
  reserve(p.kv_lens, p.decode_seqs);
  reserve(p.cu_q, p.naive_seqs + 1);
  reserve(p.cu_kv, p.naive_seqs + 1);
  reserve(p.kv_seq, p.naive_kv);
  reserve(p.kv_pos, p.naive_kv);

  std::vector<int64_t> first_row(batch.size());  // batch index -> its first row in plan order
  int64_t row = 0, kv = 0;
  for (int64_t i = 0; i < seqs; ++i) {
    const size_t b = order[static_cast<size_t>(i)];
    const SequenceStep& s = batch[b];
    const int64_t n = static_cast<int64_t>(s.tokens.size()), len = s.cached_len + n;
    first_row[b] = row;
    for (int64_t j = 0; j < n; ++j, ++row) {
      m[p.token_ids + row] = s.tokens[static_cast<size_t>(j)];
      m[p.positions + row] = static_cast<int32_t>(s.cached_len + j);
      m[p.token_seq + row] = static_cast<int32_t>(i);
    }
    const int64_t blocks = (len + block_size - 1) / block_size;
    for (int64_t j = 0; j < p.max_blocks; ++j) {
      m[p.tables + i * p.max_blocks + j] = j < blocks ? s.block_table[static_cast<size_t>(j)] : -1;
    }
    if (i < p.naive_seqs) {
      m[p.cu_q + i + 1] = static_cast<int32_t>(row);
      m[p.cu_kv + i + 1] = static_cast<int32_t>(kv + len);
      for (int64_t pos = 0; pos < len; ++pos, ++kv) {
        m[p.kv_seq + kv] = static_cast<int32_t>(i);
        m[p.kv_pos + kv] = static_cast<int32_t>(pos);
      }
    } else {
      m[p.kv_lens + (i - p.naive_seqs)] = static_cast<int32_t>(len);
    }
  }
  if (p.decode_seqs > 0 && MlaDecodeUsesTensorCores(static_cast<int>(config_.kv_lora_rank),
                                                    static_cast<int>(config_.qk_rope_head_dim))) {
    const std::vector<int32_t> kv_lens(m.begin() + static_cast<ptrdiff_t>(p.kv_lens),
                                       m.begin() + static_cast<ptrdiff_t>(p.kv_lens + p.decode_seqs));
    const int heads = static_cast<int>(weights_.local_heads);
    const int heads_per_block =
        options_.decode.heads_per_block != 0
            ? options_.decode.heads_per_block
            : MlaDecodeDefaultHeadsPerBlock(kv_lens, heads, static_cast<int>(config_.kv_lora_rank),
                                            static_cast<int>(config_.qk_rope_head_dim), ctx_->sm_count());
    const MlaDecodePlan dp = PlanMlaDecode(kv_lens, heads, ctx_->sm_count(), heads_per_block);
    p.num_decode_items = static_cast<int>(dp.items.size());
    p.num_decode_merges = static_cast<int>(dp.merges.size());
    p.decode_heads_per_block = dp.heads_per_block;
    p.decode_partials = dp.num_partials;
    p.decode_items = AppendPod(m, dp.items);
    p.decode_merges = AppendPod(m, dp.merges);
  }
  std::vector<int32_t> out_rows;
  for (size_t b = 0; b < batch.size(); ++b) {
    const int64_t n = static_cast<int64_t>(batch[b].tokens.size());
    for (int64_t j = batch[b].all_logits ? 0 : n - 1; j < n; ++j) {
      out_rows.push_back(static_cast<int32_t>(first_row[b] + j));
    }
  }
  p.logit_rows = static_cast<int64_t>(out_rows.size());
  p.out_rows = m.size();
  m.insert(m.end(), out_rows.begin(), out_rows.end());
  return p;
}

absl::Status CudaModel::Layout(const StepPlan& plan, Workspace& ws) {
  const ModelConfig& c = config_;
  const int64_t t = plan.rows, hd = c.hidden_size, heads = weights_.local_heads, lat = c.latent_dim(),
                kvl = c.kv_lora_rank, d = plan.decode_seqs, kvw = c.qk_nope_head_dim + c.v_head_dim;
  const int64_t top_k = c.num_experts_per_tok;
  bool any_moe = false;
  int64_t mlp_elems = 0;  // rows * inter of the largest MLP this step runs
  for (const DeviceLayer& l : weights_.layers) {
    if (l.is_moe) {
      any_moe = true;
      mlp_elems = std::max({mlp_elems, t * top_k * l.moe.experts.front().inter, t * l.moe.shared.inter});
    } else {
      mlp_elems = std::max(mlp_elems, t * l.dense.inter);
    }
  }
  const size_t f = sizeof(float), b = sizeof(bf16), i = sizeof(int32_t);
  DeviceArena& a = workspace_;
  a.Clear();
  // Offsets first; the pointers once the (possibly grown) allocation exists.
  std::vector<std::pair<size_t, std::function<void(void*)>>> pieces;
  auto add = [&](auto*& ptr, size_t bytes) {
    using T = std::remove_reference_t<decltype(*ptr)>;
    pieces.emplace_back(a.Add(bytes), [&ptr](void* base) { ptr = static_cast<T*>(base); });
  };
  add(ws.meta, plan.meta.size() * i);
  add(ws.x, t * hd * f);
  add(ws.branch, t * hd * f);
  add(ws.h, t * hd * b);
  if (any_moe) add(ws.h32, t * hd * f);
  if (c.q_lora_rank > 0) {
    add(ws.qa32, t * c.q_lora_rank * f);
    add(ws.qa, t * c.q_lora_rank * b);
  }
  add(ws.q, t * heads * c.qk_head_dim() * b);
  add(ws.kva32, t * lat * f);
  add(ws.latent, t * lat * b);
  add(ws.heads_out, t * heads * c.v_head_dim * b);
  add(ws.kv_lat, plan.naive_kv * lat * b);
  add(ws.kv, plan.naive_kv * heads * kvw * b);
  add(ws.q_pe, d * heads * c.qk_rope_head_dim * b);
  add(ws.q_lat, d * heads * kvl * b);
  add(ws.o_lat, d * heads * kvl * b);
  add(ws.decode_partial, plan.decode_partials * plan.decode_heads_per_block * kvl * f);
  add(ws.decode_partial_lse, plan.decode_partials * plan.decode_heads_per_block * f);
  add(ws.gate_up, 2 * mlp_elems * b);
  add(ws.act, mlp_elems * b);
  if (any_moe) {
    add(ws.router, t * c.n_routed_experts * f);
    add(ws.expert_ids, t * top_k * i);
    add(ws.expert_w, t * top_k * f);
    add(ws.dispatch, 2 * t * top_k * i);
    add(ws.expert_rows, (c.n_routed_experts + 1) * i);
    add(ws.moe_bad_ids, i);
    add(ws.xs, t * top_k * hd * b);
    add(ws.ys, t * top_k * hd * f);
  }
  add(ws.sel, plan.logit_rows * hd * b);
  add(ws.logits, plan.logit_rows * weights_.local_vocab * f);
  if (ranks() > 1 && comm_->rank() == 0) add(ws.gathered, ranks() * plan.logit_rows * weights_.local_vocab * f);
  MLA_RETURN_IF_ERROR(a.Allocate());
  for (const auto& [offset, assign] : pieces) assign(a.Pointer<void>(offset));
  return absl::OkStatus();
}

absl::Status CudaModel::AllReduce(float* data, size_t count) {
  if (ranks() == 1) return absl::OkStatus();
  if (enqueue_collectives_) return comm_->EnqueueAllReduceSum(data, count);
  // The communicator may run on its own stream: the input must be complete.
  MLA_RETURN_IF_ERROR(ctx_->Synchronize());
  return comm_->AllReduceSum(data, count);
}

absl::StatusOr<std::vector<float>> CudaModel::Forward(std::span<const SequenceStep> batch, CudaLatentCache& cache) {
  MLA_RETURN_IF_ERROR(Validate(batch, cache));
  MLA_RETURN_IF_ERROR(ctx_->Activate());
  // Whatever an earlier, failed step left queued must not run into buffers resized here.
  MLA_RETURN_IF_ERROR(ctx_->Synchronize());
  const StepPlan plan = Plan(batch, cache.block_size());
  if (plan.rows == 0) return std::vector<float>();  // an empty batch: no logits rows
  Workspace ws;
  MLA_RETURN_IF_ERROR(Layout(plan, ws));
  // Where the MoE layers group their tokens' expert choices (CudaModelOptions.moe_grouping).
  const bool moe_on_device = ws.expert_rows != nullptr && options_.moe_grouping == MoeGrouping::kDevice &&
                             plan.rows <= kMoeDeviceMaxTokens;
  // The all-reduces go into the stream without a wait where the
  // communicator enqueues on this model's stream (NCCL after SetStream) and
  // nothing in the step waits for the device before the logits' gather,
  // whose wait is bounded: no MoE layer grouped on the host (its wait would
  // hang behind a collective a dead peer never joins).
  const bool any_moe = ws.expert_rows != nullptr;
  enqueue_collectives_ = ranks() > 1 && (!any_moe || moe_on_device) && comm_->CanEnqueueOn(ctx_->stream());
  absl::StatusOr<std::vector<float>> logits = RunStep(plan, ws, cache, moe_on_device);
  if (!logits.ok() && enqueue_collectives_) {
    // Collectives may still be queued: wait for them, bounded (a timeout
    // aborts the communicator, whose kernels then quit), so that no later
    // call waits behind them without a bound. The step's own error is the
    // one to report; a failed wait leaves the group unusable, which every
    // later collective says.
    comm_->Wait().IgnoreError();
  }
  enqueue_collectives_ = false;
  return logits;
}

absl::StatusOr<std::vector<float>> CudaModel::RunStep(const StepPlan& plan, Workspace& ws, CudaLatentCache& cache,
                                                      bool moe_on_device) {
  const cudaStream_t stream = ctx_->stream();
  const ModelConfig& c = config_;
  const int64_t t = plan.rows;

  // Host staging, grown only here, while nothing is in flight.
  const size_t meta_bytes = plan.meta.size() * sizeof(int32_t);
  const size_t slot_bytes = static_cast<size_t>(t * std::max<int64_t>(c.num_experts_per_tok, 1)) * sizeof(int32_t);
  MLA_RETURN_IF_ERROR(meta_host_.Reserve(meta_bytes));
  MLA_RETURN_IF_ERROR(routing_host_.Reserve(slot_bytes));
  MLA_RETURN_IF_ERROR(dispatch_host_.Reserve(2 * slot_bytes));
  std::memcpy(meta_host_.data(), plan.meta.data(), meta_bytes);
  MLA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(ws.meta, meta_host_.data(), meta_bytes, cudaMemcpyHostToDevice, stream));
  if (moe_on_device) {
    MLA_RETURN_IF_ERROR(moe_bad_ids_host_.Reserve(sizeof(int32_t)));
    MLA_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(ws.moe_bad_ids, 0, sizeof(int32_t), stream));
  }
  MLA_RETURN_IF_ERROR(StepOnDevice(plan, ws, cache, moe_on_device));
  if (!moe_on_device) return LogitsToHost(plan, ws);
  // The device grouping's count of out-of-range expert ids, read once the
  // step is done (LogitsToHost waits for the stream on every rank).
  int32_t* bad_ids = static_cast<int32_t*>(moe_bad_ids_host_.data());
  MLA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(bad_ids, ws.moe_bad_ids, sizeof(int32_t), cudaMemcpyDeviceToHost, stream));
  absl::StatusOr<std::vector<float>> logits = LogitsToHost(plan, ws);
  if (logits.ok() && *bad_ids != 0) {
    return absl::InternalError(absl::StrCat("MoE routing kernel chose ", *bad_ids,
                                            " expert ids outside [0, ", c.n_routed_experts, ") in this step"));
  }
  return logits;
}

// A step's device work, from the uploaded metadata to the logits rows in
// ws.logits: replayed from a CUDA graph where options_.decode_graphs takes
// the step, else launched.
absl::Status CudaModel::StepOnDevice(const StepPlan& plan, const Workspace& ws, CudaLatentCache& cache,
                                     bool moe_on_device) {
  const bool graphs = options_.decode_graphs && ranks() == 1 && plan.naive_rows == 0 &&
                      (ws.expert_rows == nullptr || moe_on_device);
  if (!graphs) return LaunchStep(plan, ws, cache, moe_on_device);
  const DecodeGraphKey key{plan.rows,
                           plan.max_blocks,
                           static_cast<int64_t>(plan.meta.size()),
                           plan.num_decode_items,
                           plan.num_decode_merges,
                           plan.decode_heads_per_block,
                           plan.decode_partials,
                           ws.meta,
                           cache.Layer(0),
                           cache.num_blocks()};
  const cudaStream_t stream = ctx_->stream();
  for (size_t i = 0; i < decode_graphs_.size(); ++i) {
    if (decode_graphs_[i].key == key) {
      std::rotate(decode_graphs_.begin(), decode_graphs_.begin() + static_cast<std::ptrdiff_t>(i),
                  decode_graphs_.begin() + static_cast<std::ptrdiff_t>(i) + 1);  // most recent first
      MLA_CUDA_RETURN_IF_ERROR(cudaGraphLaunch(decode_graphs_.front().exec, stream));
      ++decode_graph_launches_;
      return absl::OkStatus();
    }
  }
  // A shape's first step runs launched (the kernels' one-time setup, e.g.
  // shared-memory opt-ins and cuBLAS's first choices, stays out of any
  // capture); its second is captured, then replayed from then on.
  auto seen = std::find(decode_shapes_seen_.begin(), decode_shapes_seen_.end(), key);
  if (seen == decode_shapes_seen_.end()) {
    decode_shapes_seen_.insert(decode_shapes_seen_.begin(), key);
    if (decode_shapes_seen_.size() > kDecodeGraphsKept) decode_shapes_seen_.pop_back();
    return LaunchStep(plan, ws, cache, moe_on_device);
  }
  decode_shapes_seen_.erase(seen);
  MLA_CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  const absl::Status launched = LaunchStep(plan, ws, cache, moe_on_device);
  cudaGraph_t graph = nullptr;
  const cudaError_t ended = cudaStreamEndCapture(stream, &graph);  // always: the stream leaves capture mode
  if (!launched.ok()) {
    if (graph != nullptr) cudaGraphDestroy(graph);
    return launched;
  }
  MLA_CUDA_RETURN_IF_ERROR(ended);
  cudaGraphExec_t exec = nullptr;
  const cudaError_t instantiated = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  MLA_CUDA_RETURN_IF_ERROR(instantiated);
  if (decode_graphs_.size() >= kDecodeGraphsKept) {
    cudaGraphExecDestroy(decode_graphs_.back().exec);
    decode_graphs_.pop_back();
  }
  decode_graphs_.insert(decode_graphs_.begin(), DecodeGraph{key, exec});
  MLA_CUDA_RETURN_IF_ERROR(cudaGraphLaunch(exec, stream));
  ++decode_graph_launches_;
  return absl::OkStatus();
}

absl::Status CudaModel::LaunchStep(const StepPlan& plan, const Workspace& ws, CudaLatentCache& cache,
                                   bool moe_on_device) {
  const ModelConfig& c = config_;
  const int64_t t = plan.rows, hd = c.hidden_size;
  const float eps = static_cast<float>(c.rms_norm_eps);
  // Embedding (BF16 rows of this rank's vocabulary slice, zeros elsewhere) into the FP32 stream.
  EmbeddingParams embed;
  embed.token_ids = ws.meta + plan.token_ids;
  embed.table = weights_.embed;
  embed.out = ws.h;
  embed.num_tokens = t;
  embed.hidden = hd;
  embed.vocab_begin = weights_.vocab_begin;
  embed.local_vocab = weights_.local_vocab;
  MLA_LAUNCH(LaunchEmbedding, embed);
  Bf16ToF32Params widen;
  widen.in = ws.h;
  widen.out = ws.x;
  widen.n = t * hd;
  MLA_LAUNCH(LaunchBf16ToF32, widen);
  MLA_RETURN_IF_ERROR(AllReduce(ws.x, static_cast<size_t>(t * hd)));

  // Each sublayer's output waits in `branch`; the next norm adds it into x.
  RmsNormF32Params norm;
  norm.x = ws.x;
  norm.ldx = hd;
  norm.ld_delta = hd;
  norm.out = ws.h;
  norm.ldo = hd;
  norm.rows = t;
  norm.dim = hd;
  norm.eps = eps;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const DeviceLayer& lw = weights_.layers[static_cast<size_t>(l)];
    norm.delta = l > 0 ? ws.branch : nullptr;
    norm.weight = lw.input_norm;
    norm.out_f32 = nullptr;
    MLA_LAUNCH(LaunchRmsNormF32, norm);
    MLA_RETURN_IF_ERROR(Attention(l, plan, ws, cache));
    MLA_RETURN_IF_ERROR(AllReduce(ws.branch, static_cast<size_t>(t * hd)));
    norm.delta = ws.branch;
    norm.weight = lw.post_norm;
    norm.out_f32 = lw.is_moe ? ws.h32 : nullptr;
    MLA_LAUNCH(LaunchRmsNormF32, norm);
    if (lw.is_moe) {
      MLA_RETURN_IF_ERROR(moe_on_device ? MoeGroupedOnDevice(lw.moe, t, ws) : Moe(lw.moe, t, ws));
    } else {
      MLA_RETURN_IF_ERROR(Mlp(lw.dense, ws.h, t, ws, ws.branch));
    }
    MLA_RETURN_IF_ERROR(AllReduce(ws.branch, static_cast<size_t>(t * hd)));
  }
  // The last residual add and the final norm over every row, then the logits rows.
  norm.delta = c.num_hidden_layers > 0 ? ws.branch : nullptr;
  norm.weight = weights_.final_norm;
  norm.out_f32 = nullptr;
  MLA_LAUNCH(LaunchRmsNormF32, norm);
  return LogitsOnDevice(plan, ws);
}

absl::Status CudaModel::Attention(int64_t layer, const StepPlan& plan, const Workspace& ws, CudaLatentCache& cache) {
  const ModelConfig& c = config_;
  const DeviceAttention& w = weights_.layers[static_cast<size_t>(layer)].attn;
  const cudaStream_t stream = ctx_->stream();
  const int64_t t = plan.rows, hd = c.hidden_size, heads = weights_.local_heads, nope = c.qk_nope_head_dim,
                rope = c.qk_rope_head_dim, qk = c.qk_head_dim(), kvl = c.kv_lora_rank, vd = c.v_head_dim,
                lat = c.latent_dim(), kvw = nope + vd;
  const float eps = static_cast<float>(c.rms_norm_eps);
  const int32_t* meta = ws.meta;

  // Queries [t, heads, qk] (BF16) and latents [t, kv_lora | rope] (FP32 into the norm).
  const bf16* q_in = ws.h;  // what q_b projects: the normed hidden state, or the normed q_a output
  int64_t q_in_dim = hd;
  if (c.q_lora_rank > 0) {
    MLA_RETURN_IF_ERROR(
        ctx_->Gemm(DenseGemm(t, c.q_lora_rank, hd, ws.h, DType::kBF16, w.q_a, DType::kBF16, ws.qa32, DType::kF32)));
    RmsNormF32Params qn;
    qn.x = ws.qa32;
    qn.weight = w.q_a_norm;
    qn.out = ws.qa;
    qn.rows = t;
    qn.dim = c.q_lora_rank;
    qn.ldx = qn.ldo = c.q_lora_rank;
    qn.eps = eps;
    MLA_LAUNCH(LaunchRmsNormF32, qn);
    q_in = ws.qa;
    q_in_dim = c.q_lora_rank;
  }
  MLA_RETURN_IF_ERROR(
      ctx_->Gemm(DenseGemm(t, heads * qk, q_in_dim, q_in, DType::kBF16, w.q_b, DType::kBF16, ws.q, DType::kBF16)));
  MLA_RETURN_IF_ERROR(ctx_->Gemm(DenseGemm(t, lat, hd, ws.h, DType::kBF16, w.kv_a, DType::kBF16, ws.kva32, DType::kF32)));

  // kv_a_layernorm on c_kv and RoPE on k_pe, rounded once to BF16; RoPE on q_pe.
  LatentNormRopeParams ln;
  ln.kv_a = ws.kva32;
  ln.norm_weight = w.kv_a_norm;
  ln.positions = meta + plan.positions;
  ln.inv_freq = static_cast<const float*>(inv_freq_.data());
  ln.latent = ws.latent;
  ln.num_tokens = t;
  ln.ld_in = ln.ld_out = lat;
  ln.kv_lora = static_cast<int>(kvl);
  ln.rope_dim = static_cast<int>(rope);
  ln.eps = eps;
  ln.attention_factor = rope_attention_factor_;
  MLA_LAUNCH(LaunchLatentNormRope, ln);
  RopeParams qr;
  qr.q_pe = ws.q + nope;
  qr.positions = meta + plan.positions;
  qr.inv_freq = ln.inv_freq;
  qr.num_tokens = t;
  qr.num_heads = static_cast<int>(heads);
  qr.q_token_stride = heads * qk;
  qr.q_head_stride = qk;
  qr.rope_dim = static_cast<int>(rope);
  qr.attention_factor = rope_attention_factor_;
  MLA_LAUNCH(LaunchRope, qr);

  // Every new latent into the cache, before either form reads it back.
  bf16* layer_cache = cache.Layer(layer);
  LatentAppendParams app;
  app.latent = ws.latent;
  app.cache = layer_cache;
  app.block_tables = meta + plan.tables;
  app.token_seq = meta + plan.token_seq;
  app.positions = meta + plan.positions;
  app.num_tokens = t;
  app.latent_dim = lat;
  app.latent_stride = lat;
  app.num_blocks = cache.num_blocks();
  app.block_size = static_cast<int>(cache.block_size());
  app.max_blocks_per_seq = static_cast<int>(plan.max_blocks);
  MLA_LAUNCH(LaunchLatentAppend, app);

  // Naive form (rows [0, naive_rows)): gather each sequence's cached + new
  // latents, up-project with kv_b into per-head k_nope | v, causal attention.
  if (plan.naive_seqs > 0) {
    LatentGatherParams gather;
    gather.cache = layer_cache;
    gather.block_tables = meta + plan.tables;
    gather.row_seq = meta + plan.kv_seq;
    gather.row_pos = meta + plan.kv_pos;
    gather.out = ws.kv_lat;
    gather.num_rows = plan.naive_kv;
    gather.latent_dim = lat;
    gather.num_blocks = cache.num_blocks();
    gather.block_size = static_cast<int>(cache.block_size());
    gather.max_blocks_per_seq = static_cast<int>(plan.max_blocks);
    MLA_LAUNCH(LaunchLatentGather, gather);
    GemmParams g;
    g.m = plan.naive_kv;
    g.n = heads * kvw;
    g.k = kvl;
    g.x = {ws.kv_lat, DType::kBF16, lat};
    g.w = {w.kv_b, DType::kBF16, kvl};
    g.out = ws.kv;
    g.out_dtype = DType::kBF16;
    g.ldo = heads * kvw;
    MLA_RETURN_IF_ERROR(ctx_->Gemm(g));
    MlaPrefillParams pf;
    pf.q = ws.q;
    pf.kv = ws.kv;
    pf.k_pe = ws.kv_lat + kvl;
    pf.k_pe_stride = lat;
    pf.out = ws.heads_out;
    pf.cu_seqlens_q = meta + plan.cu_q;
    pf.cu_seqlens_kv = meta + plan.cu_kv;
    pf.total_q = plan.naive_rows;
    pf.num_seqs = static_cast<int>(plan.naive_seqs);
    pf.num_heads = static_cast<int>(heads);
    pf.qk_nope = static_cast<int>(nope);
    pf.qk_rope = static_cast<int>(rope);
    pf.v_dim = static_cast<int>(vd);
    pf.scale = softmax_scale_;
    MLA_LAUNCH(LaunchMlaPrefill, pf);
  }

  // Absorbed form (rows [naive_rows, rows), one per sequence): q_lat = W_UK^T
  // q_nope per head, attention over the latent cache, then W_UV per head.
  if (plan.decode_seqs > 0) {
    const int64_t d = plan.decode_seqs, r0 = plan.naive_rows;
    const bf16* qd = ws.q + r0 * heads * qk;
    // q_pe of each (row, head) packed to [d, heads, rope] for the decode kernel.
    if (rope > 0) {
      MLA_CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(ws.q_pe, rope * sizeof(bf16), qd + nope, qk * sizeof(bf16),
                                                 rope * sizeof(bf16), d * heads, cudaMemcpyDeviceToDevice, stream));
    }
    // Head h: q_lat[r, h, j] = sum_i q[r, h, i] * kv_b[h * kvw + i, j], i < nope:
    // kv_b's W_UK rows of head h read as a [k = nope, n = kv_lora] matrix.
    MLA_RETURN_IF_ERROR(HeadGemm(d, qd, heads * qk, qk, nope, w.kv_b, true, ws.q_lat, heads * kvl, kvl));
    MlaDecodeParams dp;
    dp.q_latent = ws.q_lat;
    dp.q_pe = ws.q_pe;
    dp.cache = layer_cache;
    dp.block_tables = meta + plan.tables + plan.naive_seqs * plan.max_blocks;
    dp.kv_lens = meta + plan.kv_lens;
    dp.out_latent = ws.o_lat;
    dp.num_seqs = d;
    dp.num_heads = static_cast<int>(heads);
    dp.kv_lora = static_cast<int>(kvl);
    dp.qk_rope = static_cast<int>(rope);
    dp.block_size = static_cast<int>(cache.block_size());
    dp.max_blocks_per_seq = static_cast<int>(plan.max_blocks);
    dp.scale = softmax_scale_;
    if (plan.num_decode_items > 0) {
      dp.work_items = reinterpret_cast<const MlaDecodeWorkItem*>(meta + plan.decode_items);
      dp.num_work_items = plan.num_decode_items;
      dp.merge_items = reinterpret_cast<const MlaDecodeMergeItem*>(meta + plan.decode_merges);
      dp.num_merge_items = plan.num_decode_merges;
      dp.heads_per_block = plan.decode_heads_per_block;
      dp.partial_out = ws.decode_partial;
      dp.partial_lse = ws.decode_partial_lse;
      dp.mma = options_.decode.mma;
      dp.query = options_.decode.query;
      dp.copy = options_.decode.copy;
      dp.issue_ahead = options_.decode.issue_ahead;
      dp.prefetch_l2 = options_.decode.prefetch_l2;
      dp.pdl = options_.decode.pdl;
      if (options_.decode.merge_in_block) {
        if (static_cast<size_t>(plan.num_decode_merges) * sizeof(int32_t) > decode_merge_counters_.bytes()) {
          return absl::InternalError(absl::StrCat("decode plan with ", plan.num_decode_merges,
                                                  " merges (expected at most ",
                                                  decode_merge_counters_.bytes() / sizeof(int32_t), ")"));
        }
        dp.merge_counters = static_cast<int32_t*>(decode_merge_counters_.data());
      }
    }
    MLA_LAUNCH(LaunchMlaDecode, dp);
    // Head h: out[r, h, :] = W_UV_h o_lat[r, h, :], W_UV_h = kv_b rows [h * kvw + nope, (h + 1) * kvw).
    MLA_RETURN_IF_ERROR(HeadGemm(d, ws.o_lat, heads * kvl, kvl, kvl, w.kv_b + nope * kvl, false,
                                 ws.heads_out + r0 * heads * vd, heads * vd, vd));
  }

  // o_proj into the FP32 branch (this rank's heads: a partial sum under TP).
  return ctx_->Gemm(
      DenseGemm(t, hd, heads * vd, ws.heads_out, DType::kBF16, w.o_proj, DType::kBF16, ws.branch, DType::kF32));
}

absl::Status CudaModel::HeadGemm(int64_t rows, const bf16* x, int64_t x_ld, int64_t x_head_stride, int64_t k,
                                 const bf16* w, bool w_is_k_by_n, bf16* out, int64_t out_ld, int64_t n) {
  const int64_t heads = weights_.local_heads, kvl = config_.kv_lora_rank,
                kvw = config_.qk_nope_head_dim + config_.v_head_dim;
  if (options_.decode.gemm == MlaDecodeGemm::kHead) {
    HeadGemmParams g;
    g.x = x;
    g.x_ld = x_ld;
    g.x_head_stride = x_head_stride;
    g.w = w;
    g.w_ld = kvl;
    g.w_head_stride = kvw * kvl;
    g.w_is_k_by_n = w_is_k_by_n;
    g.out = out;
    g.out_ld = out_ld;
    g.out_head_stride = n;
    g.rows = rows;
    g.n = static_cast<int>(n);
    g.k = static_cast<int>(k);
    g.heads = static_cast<int>(heads);
    g.pdl = options_.decode.pdl;  // w is kv_b: weights, which no kernel writes
    MLA_LAUNCH(LaunchHeadGemm, g);
    return absl::OkStatus();
  }
  GemmParams g;
  g.m = rows;
  g.n = n;
  g.k = k;
  g.x = {x, DType::kBF16, x_ld, x_head_stride};
  g.w = {w, DType::kBF16, kvl, kvw * kvl};
  g.w_is_k_by_n = w_is_k_by_n;
  g.out = out;
  g.out_dtype = DType::kBF16;
  g.ldo = out_ld;
  g.out_stride = n;
  g.batch = static_cast<int>(heads);
  return ctx_->Gemm(g);
}

// ws.act[r] = silu(gate) * up of ws.gate_up[r] ([rows, 2 * inter]: gate, then up) for r < rows.
absl::Status CudaModel::SiluMul(int64_t rows, int64_t inter, const Workspace& ws) {
  SiluMulParams act;
  act.gate_up = ws.gate_up;
  act.out = ws.act;
  act.rows = rows;
  act.inter = inter;
  MLA_LAUNCH(LaunchSiluMul, act);
  return absl::OkStatus();
}

// out[rows, hidden] (FP32) = down(silu(gate(x)) * up(x)), x [rows, hidden] BF16.
absl::Status CudaModel::Mlp(const DeviceMlp& w, const bf16* x, int64_t rows, const Workspace& ws, float* out) {
  const int64_t hd = config_.hidden_size;
  MLA_RETURN_IF_ERROR(
      ctx_->Gemm(DenseGemm(rows, 2 * w.inter, hd, x, DType::kBF16, w.gate_up, DType::kBF16, ws.gate_up, DType::kBF16)));
  MLA_RETURN_IF_ERROR(SiluMul(rows, w.inter, ws));
  return ctx_->Gemm(DenseGemm(rows, hd, w.inter, ws.act, DType::kBF16, w.down, DType::kBF16, out, DType::kF32));
}

// The router: FP32 logits from FP32 inputs, then each token's top_k experts
// and their weights into ws.expert_ids and ws.expert_w.
absl::Status CudaModel::Route(const DeviceMoe& w, int64_t rows, const Workspace& ws) {
  const ModelConfig& c = config_;
  MLA_RETURN_IF_ERROR(ctx_->Gemm(
      DenseGemm(rows, c.n_routed_experts, c.hidden_size, ws.h32, DType::kF32, w.router, DType::kF32, ws.router,
                DType::kF32)));
  MoeRoutingParams rp;
  rp.logits = ws.router;
  rp.bias = w.router_bias;
  rp.expert_ids = ws.expert_ids;
  rp.weights = ws.expert_w;
  rp.num_tokens = rows;
  rp.num_experts = static_cast<int>(c.n_routed_experts);
  rp.top_k = static_cast<int>(c.num_experts_per_tok);
  rp.num_groups = static_cast<int>(c.n_group);
  rp.topk_groups = static_cast<int>(c.topk_group);
  rp.scoring = c.scoring_func == ScoringFunc::kSigmoid ? RouterScoring::kSigmoid : RouterScoring::kSoftmax;
  rp.method = c.topk_method == TopkMethod::kNoauxTc  ? RouterTopk::kNoauxTc
              : c.topk_method == TopkMethod::kGreedy ? RouterTopk::kGreedy
                                                     : RouterTopk::kGroupLimitedGreedy;
  rp.norm_topk_prob = c.norm_topk_prob;
  rp.routed_scaling_factor = static_cast<float>(c.routed_scaling_factor);
  MLA_LAUNCH(LaunchMoeRouting, rp);
  return absl::OkStatus();
}

// out[i] = ws.h[rows[i]] for i < count: hidden rows, [*, hidden] BF16.
absl::Status CudaModel::GatherHiddenRows(const Workspace& ws, const int32_t* rows, int64_t count, bf16* out) {
  GatherRowsParams gr;
  gr.in = ws.h;
  gr.rows = rows;
  gr.out = out;
  gr.num_rows = count;
  gr.dim = config_.hidden_size;
  gr.ld_in = config_.hidden_size;
  gr.ldo = config_.hidden_size;
  MLA_LAUNCH(LaunchGatherRows, gr);
  return absl::OkStatus();
}

// The shared experts into ws.branch, then the routed outputs (ws.ys,
// dispatch order) added per token in slot order (routed + shared, as the
// CPU: one FP32 addition either way round).
absl::Status CudaModel::CombineExperts(const DeviceMoe& w, int64_t rows, const Workspace& ws) {
  const bool shared = w.shared.inter > 0;
  if (shared) MLA_RETURN_IF_ERROR(Mlp(w.shared, ws.h, rows, ws, ws.branch));
  const int64_t k = config_.num_experts_per_tok;
  MoeCombineParams cb;
  cb.expert_out = ws.ys;
  cb.slot_rows = ws.dispatch + rows * k;
  cb.weights = ws.expert_w;
  cb.out = ws.branch;
  cb.num_tokens = rows;
  cb.dim = config_.hidden_size;
  cb.ld_expert = config_.hidden_size;
  cb.ldo = config_.hidden_size;
  cb.top_k = static_cast<int>(k);
  cb.accumulate = shared;
  MLA_LAUNCH(LaunchMoeCombine, cb);
  return absl::OkStatus();
}

// Routed experts over the rows routed to each (only the experts used this
// step run), combined per token in slot order, plus the shared experts; into
// ws.branch. The expert ids come to the host once per layer to plan the
// grouping (CudaModelOptions.moe_grouping kHost).
absl::Status CudaModel::Moe(const DeviceMoe& w, int64_t rows, const Workspace& ws) {
  const ModelConfig& c = config_;
  const cudaStream_t stream = ctx_->stream();
  const int64_t hd = c.hidden_size, experts = c.n_routed_experts, k = c.num_experts_per_tok, slots = rows * k;
  const int64_t inter = w.experts.front().inter;
  MLA_RETURN_IF_ERROR(Route(w, rows, ws));

  // Group the (token, slot) choices by expert: ascending expert id, token order within.
  const size_t id_bytes = static_cast<size_t>(slots) * sizeof(int32_t);  // staging reserved by Forward
  MLA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(routing_host_.data(), ws.expert_ids, id_bytes, cudaMemcpyDeviceToHost,
                                           stream));
  MLA_RETURN_IF_ERROR(ctx_->Synchronize());
  const int32_t* ids = static_cast<const int32_t*>(routing_host_.data());
  std::vector<int64_t> begin(static_cast<size_t>(experts) + 1, 0);
  for (int64_t s = 0; s < slots; ++s) {
    if (ids[s] < 0 || ids[s] >= experts) {
      return absl::InternalError(absl::StrCat("MoE routing kernel chose expert ", ids[s], " for slot ", s,
                                              " (expected 0 <= id < ", experts, ")"));
    }
    ++begin[static_cast<size_t>(ids[s]) + 1];
  }
  for (int64_t e = 0; e < experts; ++e) begin[e + 1] += begin[e];
  int32_t* gather_rows = static_cast<int32_t*>(dispatch_host_.data());  // [slots]: token of each dispatch row
  int32_t* slot_rows = gather_rows + slots;                             // [slots]: dispatch row of each slot
  std::vector<int64_t> next(begin.begin(), begin.end() - 1);
  for (int64_t s = 0; s < slots; ++s) {
    const int64_t r = next[static_cast<size_t>(ids[s])]++;
    gather_rows[r] = static_cast<int32_t>(s / k);
    slot_rows[s] = static_cast<int32_t>(r);
  }
  MLA_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(ws.dispatch, dispatch_host_.data(), 2 * id_bytes, cudaMemcpyHostToDevice, stream));
  // The normed hidden states into dispatch order, by the gather rows.
  MLA_RETURN_IF_ERROR(GatherHiddenRows(ws, ws.dispatch, slots, ws.xs));
  for (int64_t e = 0; e < experts; ++e) {
    const int64_t r0 = begin[e], n = begin[e + 1] - r0;
    if (n == 0) continue;
    MLA_RETURN_IF_ERROR(ctx_->Gemm(DenseGemm(n, 2 * inter, hd, ws.xs + r0 * hd, DType::kBF16,
                                             w.experts[static_cast<size_t>(e)].gate_up, DType::kBF16,
                                             ws.gate_up + r0 * 2 * inter, DType::kBF16)));
  }
  MLA_RETURN_IF_ERROR(SiluMul(slots, inter, ws));
  for (int64_t e = 0; e < experts; ++e) {
    const int64_t r0 = begin[e], n = begin[e + 1] - r0;
    if (n == 0) continue;
    MLA_RETURN_IF_ERROR(ctx_->Gemm(DenseGemm(n, hd, inter, ws.act + r0 * inter, DType::kBF16,
                                             w.experts[static_cast<size_t>(e)].down, DType::kBF16, ws.ys + r0 * hd,
                                             DType::kF32)));
  }
  return CombineExperts(w, rows, ws);
}

// Moe's work grouped on the device (CudaModelOptions.moe_grouping kDevice):
// the same routing, then the grouping kernel (moe_dispatch.cuh) instead of
// the expert ids' trip to the host, and each projection of every routed
// expert in one launch of head_gemm.cuh's kernel over the grouped rows
// (experts as heads at DeviceMoe's strides, at most `rows` rows each: top_k
// picks distinct experts a token). Nothing here waits for the device.
absl::Status CudaModel::MoeGroupedOnDevice(const DeviceMoe& w, int64_t rows, const Workspace& ws) {
  const ModelConfig& c = config_;
  const int64_t hd = c.hidden_size, experts = c.n_routed_experts, k = c.num_experts_per_tok, slots = rows * k;
  const int64_t inter = w.experts.front().inter;
  MLA_RETURN_IF_ERROR(Route(w, rows, ws));
  MoeGroupParams gp;
  gp.expert_ids = ws.expert_ids;
  gp.num_tokens = rows;
  gp.top_k = static_cast<int>(k);
  gp.num_experts = static_cast<int>(experts);
  gp.expert_rows = ws.expert_rows;
  gp.gather_rows = ws.dispatch;
  gp.slot_rows = ws.dispatch + slots;
  gp.bad_ids = ws.moe_bad_ids;
  MLA_LAUNCH(LaunchMoeGroupByExpert, gp);
  // The normed hidden states into dispatch order, by the gather rows.
  MLA_RETURN_IF_ERROR(GatherHiddenRows(ws, ws.dispatch, slots, ws.xs));

  // Both projections: W_e is a linear layer's [n, k] (gate_up [2 inter, hidden], down [hidden, inter]).
  HeadGemmParams g;
  g.w_is_k_by_n = false;
  g.rows = rows;
  g.heads = static_cast<int>(experts);
  g.group_rows = ws.expert_rows;
  g.x = ws.xs;
  g.x_ld = hd;
  g.w = w.experts.front().gate_up;
  g.w_ld = hd;
  g.w_head_stride = w.gate_up_stride;
  g.out = ws.gate_up;
  g.out_ld = 2 * inter;
  g.n = static_cast<int>(2 * inter);
  g.k = static_cast<int>(hd);
  MLA_LAUNCH(LaunchHeadGemm, g);
  MLA_RETURN_IF_ERROR(SiluMul(slots, inter, ws));
  g.x = ws.act;
  g.x_ld = inter;
  g.w = w.experts.front().down;
  g.w_ld = inter;
  g.w_head_stride = w.down_stride;
  g.out = nullptr;
  g.out_f32 = ws.ys;
  g.out_ld = hd;
  g.n = static_cast<int>(hd);
  g.k = static_cast<int>(inter);
  MLA_LAUNCH(LaunchHeadGemm, g);
  return CombineExperts(w, rows, ws);
}

// The rows that need logits (normed already, in ws.h), then the vocabulary
// projection of this rank's slice into ws.logits.
absl::Status CudaModel::LogitsOnDevice(const StepPlan& plan, const Workspace& ws) {
  const int64_t hd = config_.hidden_size, lv = weights_.local_vocab, rows = plan.logit_rows;
  MLA_RETURN_IF_ERROR(GatherHiddenRows(ws, ws.meta + plan.out_rows, rows, ws.sel));
  return ctx_->Gemm(
      DenseGemm(rows, lv, hd, ws.sel, DType::kBF16, weights_.lm_head, DType::kBF16, ws.logits, DType::kF32));
}

// ws.logits to the host, with several ranks through a gather to rank 0.
absl::StatusOr<std::vector<float>> CudaModel::LogitsToHost(const StepPlan& plan, const Workspace& ws) {
  const int64_t lv = weights_.local_vocab, vocab = config_.vocab_size, rows = plan.logit_rows;
  const cudaStream_t stream = ctx_->stream();
  const size_t local = static_cast<size_t>(rows * lv);
  if (ranks() == 1) {
    std::vector<float> logits(local);
    if (local > 0) {
      MLA_CUDA_RETURN_IF_ERROR(
          cudaMemcpyAsync(logits.data(), ws.logits, local * sizeof(float), cudaMemcpyDeviceToHost, stream));
    }
    MLA_RETURN_IF_ERROR(ctx_->Synchronize());
    return logits;
  }
  // The gather's own wait (bounded) covers the stream; enqueued all-reduces
  // ahead of it must not be waited for here without a bound.
  if (!enqueue_collectives_) MLA_RETURN_IF_ERROR(ctx_->Synchronize());
  const bool root = comm_->rank() == 0;
  MLA_RETURN_IF_ERROR(comm_->Gather(ws.logits, local, root ? ws.gathered : nullptr, 0));
  if (!root) return std::vector<float>();
  std::vector<float> gathered(local * static_cast<size_t>(ranks()));
  MLA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(gathered.data(), ws.gathered, gathered.size() * sizeof(float),
                                           cudaMemcpyDeviceToHost, stream));
  MLA_RETURN_IF_ERROR(ctx_->Synchronize());
  // [ranks][rows][local_vocab] -> [rows][vocab]
  std::vector<float> logits(static_cast<size_t>(rows * vocab));
  for (int r = 0; r < ranks(); ++r) {
    for (int64_t i = 0; i < rows; ++i) {
      std::memcpy(&logits[i * vocab + r * lv], &gathered[(r * rows + i) * lv], sizeof(float) * lv);
    }
  }
  return logits;
}

}  // namespace mla::cuda
