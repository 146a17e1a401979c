// The DeepSeek-V3/V2 forward pass on the CPU over a ragged batch, on one rank
// of a tensor-parallel group (DESIGN.md section 3) or alone.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cpu/rope.h"
#include "runtime/communicator.h"
#include "runtime/config.h"
#include "runtime/kv_cache.h"
#include "runtime/thread_pool.h"
#include "runtime/weights.h"

namespace mla {

// One sequence's part of a step: its new tokens, which continue the
// cached_len tokens its cache blocks already hold.
struct SequenceStep {
  std::span<const int32_t> tokens;       // new token ids; positions cached_len, cached_len + 1, ...
  int64_t cached_len = 0;                // tokens already in the cache
  std::span<const int32_t> block_table;  // covers at least cached_len + tokens.size() positions
  bool all_logits = false;               // logits for every new token, not only the last
};

// Which attention form a sequence's step uses.
enum class AttentionPath {
  kAuto,      // absorbed for single-token steps (decode), naive otherwise (prefill)
  kNaive,     // always up-project the cached latents into per-head keys and values
  kAbsorbed,  // always attend in the latent space
};

struct ModelOptions {
  int num_threads = 1;  // threads for attention; BLAS threads are set separately
  AttentionPath attention_path = AttentionPath::kAuto;
  // Test hooks: deliberately wrong conventions, to show the golden tests catch them.
  float softmax_scale_multiplier = 1.0f;
  cpu::RopePairing rope_pairing = cpu::RopePairing::kInterleaved;
};

class Model {
 public:
  // Reads <dir>/config.json and this rank's slice of the weights. `comm` is
  // the tensor-parallel group (not owned; it must outlive the model); null
  // means a group of one.
  static absl::StatusOr<std::unique_ptr<Model>> Load(const std::string& dir, const ModelOptions& options = {},
                                                     Communicator* comm = nullptr);
  Model(ModelConfig config, ModelWeights weights, const ModelOptions& options, Communicator* comm = nullptr);

  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  // A latent cache of num_blocks blocks shaped for this model.
  PagedLatentCache MakeCache(int64_t num_blocks, CacheDType dtype) const;

  // Runs one step over a ragged batch: writes every new token's latent into
  // `cache` and returns logits [rows, vocab], one row per sequence (its last
  // token) or one per new token with all_logits, in batch order. With several
  // ranks every rank must run the same batch; the logits go to rank 0 only
  // (other ranks return an empty vector). A sequence's rows do not depend on
  // the rest of the batch. Bad ids, positions or block tables give
  // InvalidArgument and leave the cache untouched; a failed collective its error.
  absl::StatusOr<std::vector<float>> Forward(std::span<const SequenceStep> batch, PagedLatentCache& cache);

 private:
  absl::Status Validate(std::span<const SequenceStep> batch, const PagedLatentCache& cache) const;
  // Each writes this rank's partial sum into `out`; the caller all-reduces.
  void Attention(int64_t layer, std::span<const SequenceStep> batch, const float* x, PagedLatentCache& cache,
                 float* out);
  void Mlp(const MlpWeights& w, const float* x, int64_t rows, float* out);
  void Moe(const MoeWeights& w, const float* x, int64_t rows, float* out);
  absl::Status Embed(std::span<const SequenceStep> batch, float* x);
  absl::StatusOr<std::vector<float>> Logits(const std::vector<float>& normed, int64_t rows);

  ModelConfig config_;
  ModelWeights weights_;
  ModelOptions options_;
  std::vector<float> inv_freq_;  // [qk_rope / 2]
  float rope_attention_factor_ = 1.0f;
  float softmax_scale_ = 0.0f;
  ThreadPool pool_;
  std::unique_ptr<Communicator> own_comm_;  // the group of one when none is given
  Communicator* comm_;
};

// Checks a step against the model and a latent cache of that shape (the same
// rules on every backend): InvalidArgument naming the sequence and the value.
struct CacheShape {
  int64_t num_layers, latent_dim, block_size, num_blocks;
};
absl::Status ValidateStep(const ModelConfig& config, std::span<const SequenceStep> batch, const CacheShape& cache);

// RoPE parameters for a config (YaRN when rope_scaling says so).
cpu::RopeParams RopeParamsFor(const ModelConfig& config);

}  // namespace mla
