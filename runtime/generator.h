// Offline generation: runs requests to completion as one ragged batch per
// step (chunked prefill, then one decode token per request per step).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/kv_cache.h"
#include "runtime/model.h"
#include "runtime/sampler.h"

namespace mla {

struct GenerationRequest {
  std::vector<int32_t> prompt_ids;
  int64_t max_new_tokens = 16;  // always generated in full: offline runs do not stop at EOS
  SamplingParams sampling;
  bool record_logits = false;  // keep the logits row that chose each generated token
  int64_t prefill_chunk = 0;   // prompt tokens per step; 0: the whole prompt in one step
};

struct GenerationResult {
  std::vector<int32_t> generated_ids;
  std::vector<std::vector<float>> logits;  // [max_new_tokens][vocab] when record_logits
};

// Checks a request against the model before any work: InvalidArgument naming the field.
absl::Status ValidateRequest(const ModelConfig& config, const GenerationRequest& request);

// Blocks come from `allocator` and all go back before returning.
absl::StatusOr<std::vector<GenerationResult>> Generate(Model& model, PagedLatentCache& cache,
                                                       BlockAllocator& allocator,
                                                       std::span<const GenerationRequest> requests);

// One forward step of any backend over its own cache (Model::Forward semantics).
using ForwardStep = std::function<absl::StatusOr<std::vector<float>>(std::span<const SequenceStep>)>;

// The same loop for any backend: `forward` runs a step over a cache of
// `block_size`-token blocks whose ids `allocator` hands out.
absl::StatusOr<std::vector<GenerationResult>> Generate(const ModelConfig& config, int64_t block_size,
                                                       const ForwardStep& forward, BlockAllocator& allocator,
                                                       std::span<const GenerationRequest> requests);

}  // namespace mla
