#include "runtime/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/mlp.h"
#include "kernels/cpu/moe_routing.h"
#include "kernels/cpu/rmsnorm.h"
#include "runtime/checkpoint.h"
#include "runtime/status_macros.h"

namespace mla {
cpu::RopeParams RopeParamsFor(const ModelConfig& c) {
  cpu::RopeParams p;
  p.rope_dim = c.qk_rope_head_dim;
  p.theta = c.rope_theta;
  if (c.yarn) {
    p.yarn = true;
    p.factor = c.yarn->factor;
    p.original_max_position_embeddings = c.yarn->original_max_position_embeddings;
    p.beta_fast = c.yarn->beta_fast;
    p.beta_slow = c.yarn->beta_slow;
    // cos/sin carry mscale(s, mscale) / mscale(s, mscale_all_dim) (1 for V3),
    // or mscale(s) alone when either is unset, as transformers does.
    p.attention_factor = (c.yarn->mscale != 0.0 && c.yarn->mscale_all_dim != 0.0)
                             ? YarnMscale(p.factor, c.yarn->mscale) / YarnMscale(p.factor, c.yarn->mscale_all_dim)
                             : YarnMscale(p.factor, 1.0);
  }
  return p;
}

absl::StatusOr<std::unique_ptr<Model>> Model::Load(const std::string& dir, const ModelOptions& options,
                                                   Communicator* comm) {
  MLA_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(dir));
  ShardSpec shard;
  if (comm != nullptr) shard = ShardSpec{comm->rank(), comm->size()};
  MLA_RETURN_IF_ERROR(CheckShardable(config, shard.size));  // before any weight is read
  MLA_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ckpt, Checkpoint::Open(dir));
  MLA_ASSIGN_OR_RETURN(ModelWeights weights, LoadWeights(*ckpt, config, shard));
  return std::make_unique<Model>(std::move(config), std::move(weights), options, comm);
}

Model::Model(ModelConfig config, ModelWeights weights, const ModelOptions& options, Communicator* comm)
    : config_(std::move(config)),
      weights_(std::move(weights)),
      options_(options),
      pool_(options.num_threads),
      own_comm_(comm == nullptr ? MakeLocalCommunicator() : nullptr),
      comm_(comm == nullptr ? own_comm_.get() : comm) {
  cpu::RopeParams rope = RopeParamsFor(config_);
  inv_freq_ = cpu::RopeInvFreq(rope);
  rope_attention_factor_ = static_cast<float>(rope.attention_factor);
  softmax_scale_ = static_cast<float>(config_.SoftmaxScale()) * options_.softmax_scale_multiplier;
}

PagedLatentCache Model::MakeCache(int64_t num_blocks, CacheDType dtype) const {
  return PagedLatentCache(config_.num_hidden_layers, num_blocks, kDefaultBlockSize, config_.latent_dim(), dtype);
}

absl::Status ValidateStep(const ModelConfig& config, std::span<const SequenceStep> batch, const CacheShape& cache) {
  if (cache.num_layers != config.num_hidden_layers || cache.latent_dim != config.latent_dim()) {
    return absl::InvalidArgumentError(absl::StrCat("latent cache has ", cache.num_layers, " layers of width ",
                                                   cache.latent_dim, " (expected ", config.num_hidden_layers,
                                                   " layers of width ", config.latent_dim(), ")"));
  }
  for (size_t s = 0; s < batch.size(); ++s) {
    const SequenceStep& seq = batch[s];
    const int64_t n = static_cast<int64_t>(seq.tokens.size());
    if (n == 0) return absl::InvalidArgumentError(absl::StrCat("sequence ", s, ": no new tokens (expected >= 1)"));
    if (seq.cached_len < 0 || seq.cached_len + n > config.max_position_embeddings) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", s, ": positions [", seq.cached_len, ", ",
                                                     seq.cached_len + n, ") (expected within [0, ",
                                                     config.max_position_embeddings, "))"));
    }
    for (int32_t id : seq.tokens) {
      if (id < 0 || id >= config.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", s, ": token id ", id, " (expected 0 <= id < ",
                                                       config.vocab_size, ")"));
      }
    }
    const int64_t blocks_needed = (seq.cached_len + n + cache.block_size - 1) / cache.block_size;
    if (static_cast<int64_t>(seq.block_table.size()) < blocks_needed) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", s, ": block table of ", seq.block_table.size(),
                                                     " blocks (expected >= ", blocks_needed, " for ",
                                                     seq.cached_len + n, " tokens)"));
    }
    for (int64_t b = 0; b < blocks_needed; ++b) {
      int32_t id = seq.block_table[static_cast<size_t>(b)];
      if (id < 0 || id >= cache.num_blocks) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", s, ": block id ", id, " (expected 0 <= id < ",
                                                       cache.num_blocks, ")"));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status Model::Validate(std::span<const SequenceStep> batch, const PagedLatentCache& cache) const {
  return ValidateStep(config_, batch,
                      CacheShape{cache.num_layers(), cache.latent_dim(), cache.block_size(), cache.num_blocks()});
}

absl::StatusOr<std::vector<float>> Model::Forward(std::span<const SequenceStep> batch, PagedLatentCache& cache) {
  MLA_RETURN_IF_ERROR(Validate(batch, cache));
  const int64_t hd = config_.hidden_size;
  int64_t total = 0;
  for (const SequenceStep& s : batch) total += static_cast<int64_t>(s.tokens.size());

  std::vector<float> x(static_cast<size_t>(total * hd)), h(x.size()), branch(x.size());
  MLA_RETURN_IF_ERROR(Embed(batch, x.data()));
  const float eps = static_cast<float>(config_.rms_norm_eps);
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
    const LayerWeights& lw = weights_.layers[static_cast<size_t>(l)];
    cpu::RmsNorm(x.data(), hd, lw.input_norm.data(), total, hd, eps, h.data(), hd);
    Attention(l, batch, h.data(), cache, branch.data());
    MLA_RETURN_IF_ERROR(comm_->AllReduceSum(branch.data(), branch.size()));
    cpu::AddInPlace(x.data(), branch.data(), total * hd);
    cpu::RmsNorm(x.data(), hd, lw.post_norm.data(), total, hd, eps, h.data(), hd);
    if (lw.is_moe) {
      Moe(lw.moe, h.data(), total, branch.data());
    } else {
      Mlp(lw.dense, h.data(), total, branch.data());
    }
    MLA_RETURN_IF_ERROR(comm_->AllReduceSum(branch.data(), branch.size()));
    cpu::AddInPlace(x.data(), branch.data(), total * hd);
  }

  // The rows that need logits, normed, then the vocabulary projection.
  std::vector<float> sel;
  int64_t row = 0;
  for (const SequenceStep& s : batch) {
    const int64_t n = static_cast<int64_t>(s.tokens.size());
    const int64_t first = s.all_logits ? row : row + n - 1;
    sel.insert(sel.end(), x.begin() + first * hd, x.begin() + (row + n) * hd);
    row += n;
  }
  const int64_t rows = static_cast<int64_t>(sel.size()) / hd;
  cpu::RmsNorm(sel.data(), hd, weights_.final_norm.data(), rows, hd, eps, sel.data(), hd);
  return Logits(sel, rows);
}

// Each rank holds the embedding rows of its vocabulary slice: it fills the
// tokens it owns, zeros the rest, and the all-reduce completes every row.
absl::Status Model::Embed(std::span<const SequenceStep> batch, float* x) {
  const int64_t hd = config_.hidden_size, v0 = weights_.vocab_begin, v1 = v0 + weights_.local_vocab;
  int64_t row = 0;
  for (const SequenceStep& s : batch) {
    for (int32_t id : s.tokens) {
      float* dst = x + row++ * hd;
      if (id >= v0 && id < v1) {
        std::memcpy(dst, &weights_.embed[static_cast<size_t>(id - v0) * hd], sizeof(float) * hd);
      } else {
        std::fill(dst, dst + hd, 0.0f);
      }
    }
  }
  if (comm_->size() == 1) return absl::OkStatus();
  return comm_->AllReduceSum(x, static_cast<size_t>(row * hd));
}

// Each rank projects onto its vocabulary slice; rank 0 gathers the slices
// [ranks][rows][local_vocab] and interleaves them into [rows][vocab].
absl::StatusOr<std::vector<float>> Model::Logits(const std::vector<float>& normed, int64_t rows) {
  const int64_t hd = config_.hidden_size, lv = weights_.local_vocab, vocab = config_.vocab_size;
  std::vector<float> local(static_cast<size_t>(rows * lv));
  cpu::Linear(normed.data(), hd, rows, hd, weights_.lm_head.data(), lv, local.data(), lv);
  const int ranks = comm_->size();
  if (ranks == 1) return local;
  const bool root = comm_->rank() == 0;
  std::vector<float> gathered(root ? local.size() * ranks : 0);
  MLA_RETURN_IF_ERROR(comm_->Gather(local.data(), local.size(), root ? gathered.data() : nullptr, 0));
  if (!root) return std::vector<float>();
  std::vector<float> logits(static_cast<size_t>(rows * vocab));
  for (int r = 0; r < ranks; ++r) {
    for (int64_t i = 0; i < rows; ++i) {
      std::memcpy(&logits[i * vocab + r * lv], &gathered[(r * rows + i) * lv], sizeof(float) * lv);
    }
  }
  return logits;
}

void Model::Attention(int64_t layer, std::span<const SequenceStep> batch, const float* x, PagedLatentCache& cache,
                      float* out) {
  const ModelConfig& c = config_;
  const AttentionWeights& w = weights_.layers[static_cast<size_t>(layer)].attn;
  const int64_t hd = c.hidden_size, heads = weights_.local_heads, nope = c.qk_nope_head_dim,
                rope = c.qk_rope_head_dim, qk = c.qk_head_dim(), kvl = c.kv_lora_rank, vd = c.v_head_dim,
                lat = c.latent_dim(), kvw = nope + vd;
  const float eps = static_cast<float>(c.rms_norm_eps);
  int64_t total = 0;
  for (const SequenceStep& s : batch) total += static_cast<int64_t>(s.tokens.size());

  // Queries [total, heads, qk] and latents [total, kv_lora | rope].
  std::vector<float> q(static_cast<size_t>(total * heads * qk)), kv_a(static_cast<size_t>(total * lat));
  if (c.q_lora_rank > 0) {
    std::vector<float> qa(static_cast<size_t>(total * c.q_lora_rank));
    cpu::Linear(x, hd, total, hd, w.q_a.data(), c.q_lora_rank, qa.data(), c.q_lora_rank);
    cpu::RmsNorm(qa.data(), c.q_lora_rank, w.q_a_norm.data(), total, c.q_lora_rank, eps, qa.data(), c.q_lora_rank);
    cpu::Linear(qa.data(), c.q_lora_rank, total, c.q_lora_rank, w.q_b.data(), heads * qk, q.data(), heads * qk);
  } else {
    cpu::Linear(x, hd, total, hd, w.q_b.data(), heads * qk, q.data(), heads * qk);
  }
  cpu::Linear(x, hd, total, hd, w.kv_a.data(), lat, kv_a.data(), lat);
  cpu::RmsNorm(kv_a.data(), lat, w.kv_a_norm.data(), total, kvl, eps, kv_a.data(), lat);

  // RoPE on q_pe and k_pe at each token's position, then the latents go into the cache.
  cpu::PagedLatentView view = cache.Layer(layer);
  int64_t row = 0;
  for (const SequenceStep& s : batch) {
    for (size_t i = 0; i < s.tokens.size(); ++i, ++row) {
      const int64_t pos = s.cached_len + static_cast<int64_t>(i);
      cpu::ApplyRope(&kv_a[row * lat + kvl], rope, pos, inv_freq_.data(), rope_attention_factor_,
                     options_.rope_pairing);
      for (int64_t h = 0; h < heads; ++h) {
        cpu::ApplyRope(&q[(row * heads + h) * qk + nope], rope, pos, inv_freq_.data(), rope_attention_factor_,
                       options_.rope_pairing);
      }
      cpu::WriteLatent(view, s.block_table.data(), pos, &kv_a[row * lat]);
    }
  }

  // Split the batch by attention form.
  std::vector<float> heads_out(static_cast<size_t>(total * heads * vd));
  std::vector<size_t> naive, absorbed;
  std::vector<int64_t> start(batch.size());
  row = 0;
  for (size_t s = 0; s < batch.size(); ++s) {
    start[s] = row;
    row += static_cast<int64_t>(batch[s].tokens.size());
    bool use_absorbed = options_.attention_path == AttentionPath::kAbsorbed ||
                        (options_.attention_path == AttentionPath::kAuto && batch[s].tokens.size() == 1);
    (use_absorbed ? absorbed : naive).push_back(s);
  }

  // Naive form: up-project every cached latent of the sequence into per-head k_nope and v.
  for (size_t s : naive) {
    const SequenceStep& seq = batch[s];
    const int64_t n = static_cast<int64_t>(seq.tokens.size()), kv_len = seq.cached_len + n;
    std::vector<float> latents(static_cast<size_t>(kv_len * lat)), kv(static_cast<size_t>(kv_len * heads * kvw));
    cpu::GatherLatents(view, seq.block_table.data(), kv_len, latents.data());
    cpu::Linear(latents.data(), lat, kv_len, kvl, w.kv_b.data(), heads * kvw, kv.data(), heads * kvw);
    cpu::MlaNaiveParams p;
    p.q = &q[start[s] * heads * qk];
    p.kv = kv.data();
    p.k_pe = latents.data() + kvl;
    p.k_pe_stride = lat;
    p.out = &heads_out[start[s] * heads * vd];
    p.num_queries = n;
    p.kv_len = kv_len;
    p.num_heads = static_cast<int>(heads);
    p.qk_nope = static_cast<int>(nope);
    p.qk_rope = static_cast<int>(rope);
    p.v_dim = static_cast<int>(vd);
    p.scale = softmax_scale_;
    pool_.ParallelFor(heads, [&](int64_t h) { MlaNaiveAttention(p, static_cast<int>(h), static_cast<int>(h) + 1); });
  }

  // Absorbed form over the rows of all absorbed sequences at once:
  // q_lat = W_UK^T q_nope per head, attend over the latent cache, then W_UV per head.
  if (!absorbed.empty()) {
    std::vector<int64_t> rows;  // batch rows, in batch order
    for (size_t s : absorbed) {
      for (size_t i = 0; i < batch[s].tokens.size(); ++i) rows.push_back(start[s] + static_cast<int64_t>(i));
    }
    const int64_t d = static_cast<int64_t>(rows.size());
    std::vector<float> qd(static_cast<size_t>(d * heads * qk)), q_lat(static_cast<size_t>(d * heads * kvl)),
        q_pe(static_cast<size_t>(d * heads * rope)), o_lat(q_lat.size()), od(static_cast<size_t>(d * heads * vd));
    for (int64_t r = 0; r < d; ++r) {
      std::memcpy(&qd[r * heads * qk], &q[rows[r] * heads * qk], sizeof(float) * heads * qk);
      for (int64_t h = 0; h < heads; ++h) {
        std::memcpy(&q_pe[(r * heads + h) * rope], &qd[(r * heads + h) * qk + nope], sizeof(float) * rope);
      }
    }
    for (int64_t h = 0; h < heads; ++h) {
      cpu::Linear(&qd[h * qk], heads * qk, d, nope, &w.w_uk_t[h * kvl * nope], kvl, &q_lat[h * kvl], heads * kvl);
    }
    std::vector<cpu::MlaAbsorbedParams> params;
    int64_t r0 = 0;
    for (size_t s : absorbed) {
      const SequenceStep& seq = batch[s];
      const int64_t n = static_cast<int64_t>(seq.tokens.size());
      cpu::MlaAbsorbedParams p;
      p.q_latent = &q_lat[r0 * heads * kvl];
      p.q_pe = &q_pe[r0 * heads * rope];
      p.cache = view;
      p.block_table = seq.block_table.data();
      p.out_latent = &o_lat[r0 * heads * kvl];
      p.num_queries = n;
      p.kv_len = seq.cached_len + n;
      p.num_heads = static_cast<int>(heads);
      p.kv_lora = static_cast<int>(kvl);
      p.qk_rope = static_cast<int>(rope);
      p.scale = softmax_scale_;
      params.push_back(p);
      r0 += n;
    }
    const int64_t tasks = static_cast<int64_t>(params.size()) * heads;
    pool_.ParallelFor(tasks, [&](int64_t t) {
      int h = static_cast<int>(t % heads);
      MlaAbsorbedAttention(params[static_cast<size_t>(t / heads)], h, h + 1);
    });
    for (int64_t h = 0; h < heads; ++h) {
      const float* w_uv = &w.kv_b[(h * kvw + nope) * kvl];  // [v_head, kv_lora]
      cpu::Linear(&o_lat[h * kvl], heads * kvl, d, kvl, w_uv, vd, &od[h * vd], heads * vd);
    }
    for (int64_t r = 0; r < d; ++r) {
      std::memcpy(&heads_out[rows[r] * heads * vd], &od[r * heads * vd], sizeof(float) * heads * vd);
    }
  }
  cpu::Linear(heads_out.data(), heads * vd, total, heads * vd, w.o_proj.data(), hd, out, hd);
}

void Model::Mlp(const MlpWeights& w, const float* x, int64_t rows, float* out) {
  const int64_t hd = config_.hidden_size;
  std::vector<float> gate_up(static_cast<size_t>(rows * 2 * w.inter)), act(static_cast<size_t>(rows * w.inter));
  cpu::Linear(x, hd, rows, hd, w.gate_up.data(), 2 * w.inter, gate_up.data(), 2 * w.inter);
  cpu::SiluMul(gate_up.data(), rows, w.inter, act.data());
  cpu::Linear(act.data(), w.inter, rows, w.inter, w.down.data(), hd, out, hd);
}

void Model::Moe(const MoeWeights& w, const float* x, int64_t rows, float* out) {
  const ModelConfig& c = config_;
  const int64_t hd = c.hidden_size, experts = c.n_routed_experts, k = c.num_experts_per_tok;
  std::vector<float> logits(static_cast<size_t>(rows * experts)), weights(static_cast<size_t>(rows * k));
  std::vector<int32_t> ids(static_cast<size_t>(rows * k));
  cpu::Linear(x, hd, rows, hd, w.router.data(), experts, logits.data(), experts);
  cpu::MoeRoutingParams rp;
  rp.logits = logits.data();
  rp.bias = w.router_bias.empty() ? nullptr : w.router_bias.data();
  rp.num_tokens = rows;
  rp.num_experts = static_cast<int>(experts);
  rp.top_k = static_cast<int>(k);
  rp.num_groups = static_cast<int>(c.n_group);
  rp.topk_groups = static_cast<int>(c.topk_group);
  rp.scoring = c.scoring_func == ScoringFunc::kSigmoid ? cpu::RouterScoring::kSigmoid : cpu::RouterScoring::kSoftmax;
  rp.method = c.topk_method == TopkMethod::kNoauxTc  ? cpu::RouterTopk::kNoauxTc
              : c.topk_method == TopkMethod::kGreedy ? cpu::RouterTopk::kGreedy
                                                     : cpu::RouterTopk::kGroupLimitedGreedy;
  rp.norm_topk_prob = c.norm_topk_prob;
  rp.routed_scaling_factor = static_cast<float>(c.routed_scaling_factor);
  rp.expert_ids = ids.data();
  rp.weights = weights.data();
  cpu::MoeRoute(rp);

  // Each used expert runs once over the rows routed to it; outputs land in
  // their (row, slot) place and are combined per row in slot order.
  std::vector<std::vector<int64_t>> slots(static_cast<size_t>(experts));  // row * k + slot
  for (int64_t i = 0; i < rows * k; ++i) slots[static_cast<size_t>(ids[i])].push_back(i);
  std::vector<float> expert_out(static_cast<size_t>(rows * k * hd));
  std::vector<float> xs, ys;
  for (int64_t e = 0; e < experts; ++e) {
    const auto& list = slots[static_cast<size_t>(e)];
    if (list.empty()) continue;
    const int64_t n = static_cast<int64_t>(list.size());
    xs.resize(static_cast<size_t>(n * hd));
    ys.resize(xs.size());
    for (int64_t i = 0; i < n; ++i) std::memcpy(&xs[i * hd], x + (list[i] / k) * hd, sizeof(float) * hd);
    Mlp(w.experts[static_cast<size_t>(e)], xs.data(), n, ys.data());
    for (int64_t i = 0; i < n; ++i) std::memcpy(&expert_out[list[i] * hd], &ys[i * hd], sizeof(float) * hd);
  }
  for (int64_t r = 0; r < rows; ++r) {
    float* o = out + r * hd;
    std::fill(o, o + hd, 0.0f);
    for (int64_t j = 0; j < k; ++j) {
      const float wt = weights[r * k + j];
      const float* eo = &expert_out[(r * k + j) * hd];
      for (int64_t i = 0; i < hd; ++i) o[i] += wt * eo[i];
    }
  }
  if (w.shared.inter > 0) {
    std::vector<float> shared(static_cast<size_t>(rows * hd));
    Mlp(w.shared, x, rows, shared.data());
    cpu::AddInPlace(out, shared.data(), rows * hd);
  }
}

}  // namespace mla
