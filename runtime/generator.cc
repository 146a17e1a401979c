#include "runtime/generator.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "runtime/status_macros.h"

namespace mla {
namespace {

struct Running {
  const GenerationRequest* request;
  GenerationResult result;
  BlockTable blocks;
  int64_t cached = 0;  // tokens in the cache
  std::vector<int32_t> step_tokens;
};

// Gives every block back however Generate ends.
class ReleaseAll {
 public:
  ReleaseAll(std::vector<Running>& running, BlockAllocator& allocator) : running_(running), allocator_(allocator) {}
  ~ReleaseAll() {
    for (Running& r : running_) r.blocks.Release(allocator_);
  }

 private:
  std::vector<Running>& running_;
  BlockAllocator& allocator_;
};

}  // namespace

absl::Status ValidateRequest(const ModelConfig& config, const GenerationRequest& r) {
  if (r.prompt_ids.empty()) return absl::InvalidArgumentError("prompt_ids is empty (expected at least one token)");
  for (int32_t id : r.prompt_ids) {
    if (id < 0 || id >= config.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("prompt token id ", id, " (expected 0 <= id < vocab_size = ", config.vocab_size, ")"));
    }
  }
  if (r.max_new_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_new_tokens ", r.max_new_tokens, " (expected >= 1)"));
  }
  const int64_t total = static_cast<int64_t>(r.prompt_ids.size()) + r.max_new_tokens;
  if (total > config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("prompt (", r.prompt_ids.size(), ") + max_new_tokens (",
                                                   r.max_new_tokens, ") = ", total,
                                                   " tokens (expected at most max_position_embeddings = ",
                                                   config.max_position_embeddings, ")"));
  }
  if (r.prefill_chunk < 0) {
    return absl::InvalidArgumentError(absl::StrCat("prefill_chunk ", r.prefill_chunk, " (expected >= 0)"));
  }
  return ValidateSamplingParams(r.sampling);
}

absl::StatusOr<std::vector<GenerationResult>> Generate(Model& model, PagedLatentCache& cache,
                                                       BlockAllocator& allocator,
                                                       std::span<const GenerationRequest> requests) {
  return Generate(
      model.config(), cache.block_size(),
      [&](std::span<const SequenceStep> batch) { return model.Forward(batch, cache); }, allocator, requests);
}

absl::StatusOr<std::vector<GenerationResult>> Generate(const ModelConfig& config, int64_t block_size,
                                                       const ForwardStep& forward, BlockAllocator& allocator,
                                                       std::span<const GenerationRequest> requests) {
  std::vector<Running> running;
  for (const GenerationRequest& r : requests) {
    MLA_RETURN_IF_ERROR(ValidateRequest(config, r));
    running.push_back(Running{&r, {}, BlockTable(block_size), 0, {}});
  }
  ReleaseAll release(running, allocator);
  const int64_t vocab = config.vocab_size;

  while (true) {
    std::vector<SequenceStep> batch;
    std::vector<Running*> members;
    for (Running& r : running) {
      const GenerationRequest& req = *r.request;
      const int64_t prompt = static_cast<int64_t>(req.prompt_ids.size());
      if (static_cast<int64_t>(r.result.generated_ids.size()) == req.max_new_tokens) continue;
      if (r.cached < prompt) {
        int64_t n = req.prefill_chunk > 0 ? std::min(req.prefill_chunk, prompt - r.cached) : prompt - r.cached;
        r.step_tokens.assign(req.prompt_ids.begin() + r.cached, req.prompt_ids.begin() + r.cached + n);
      } else {
        r.step_tokens.assign(1, r.result.generated_ids.back());
      }
      const int64_t n = static_cast<int64_t>(r.step_tokens.size());
      MLA_RETURN_IF_ERROR(r.blocks.Reserve(r.cached + n, allocator));
      batch.push_back(SequenceStep{r.step_tokens, r.cached, r.blocks.blocks(), false});
      members.push_back(&r);
    }
    if (batch.empty()) break;
    MLA_ASSIGN_OR_RETURN(std::vector<float> logits, forward(batch));
    for (size_t i = 0; i < members.size(); ++i) {
      Running& r = *members[i];
      r.cached += static_cast<int64_t>(r.step_tokens.size());
      if (r.cached < static_cast<int64_t>(r.request->prompt_ids.size())) continue;  // mid-prompt chunk
      std::span<const float> row(&logits[i * vocab], static_cast<size_t>(vocab));
      const uint64_t step = r.result.generated_ids.size();
      r.result.generated_ids.push_back(SampleToken(row, r.request->sampling, step));
      if (r.request->record_logits) r.result.logits.emplace_back(row.begin(), row.end());
    }
  }
  std::vector<GenerationResult> results;
  for (Running& r : running) results.push_back(std::move(r.result));
  return results;
}

}  // namespace mla
