// Token sampling: greedy, temperature, top-k, top-p. The random stream of a
// request is counter-based: the draw for generated token `step` depends only on
// (seed, step), never on what else is in the batch or on earlier draws.
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "absl/status/status.h"

namespace mla {

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy
  int32_t top_k = 0;         // 0: no top-k cut
  float top_p = 1.0f;        // in (0, 1]; 1: no nucleus cut
  uint64_t seed = 0;
};

// InvalidArgument naming the field and the allowed range.
absl::Status ValidateSamplingParams(const SamplingParams& params);

// A uniform double in [0, 1) for (seed, step): a fixed hash, no state.
double CounterUniform(uint64_t seed, uint64_t step);

// Picks a token from one row of logits [vocab]. Greedy ties go to the lowest id.
int32_t SampleToken(std::span<const float> logits, const SamplingParams& params, uint64_t step);

// Log probabilities under softmax(logits) (raw logits: no temperature or cuts).
struct TokenLogprobs {
  float logprob = 0.0f;                         // of the chosen token
  std::vector<std::pair<int32_t, float>> top;  // the top_k most likely, most likely first (ties: lower id)
};
TokenLogprobs ComputeLogprobs(std::span<const float> logits, int32_t token, int top_k);

}  // namespace mla
