#include "runtime/sampler.h"

#include <algorithm>

#include "runtime/mix64.h"
#include <cmath>
#include <numeric>
#include <vector>

#include "absl/strings/str_cat.h"

namespace mla {
namespace {


}  // namespace

absl::Status ValidateSamplingParams(const SamplingParams& p) {
  if (!(p.temperature >= 0.0f) || !std::isfinite(p.temperature)) {
    return absl::InvalidArgumentError(absl::StrCat("temperature ", p.temperature, " (expected a finite value >= 0)"));
  }
  if (p.top_k < 0) return absl::InvalidArgumentError(absl::StrCat("top_k ", p.top_k, " (expected >= 0)"));
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p ", p.top_p, " (expected 0 < top_p <= 1)"));
  }
  return absl::OkStatus();
}

double CounterUniform(uint64_t seed, uint64_t step) {
  uint64_t bits = Mix64(Mix64(seed ^ 0x9e3779b97f4a7c15ULL) + step * 0x9e3779b97f4a7c15ULL);
  return static_cast<double>(bits >> 11) * 0x1.0p-53;
}

int32_t SampleToken(std::span<const float> logits, const SamplingParams& p, uint64_t step) {
  const int64_t vocab = static_cast<int64_t>(logits.size());
  if (p.temperature == 0.0f || p.top_k == 1) {
    return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  }
  // Candidates by descending logit, ties to the lower id: a total order, so
  // the cut-offs below never depend on sort stability.
  std::vector<int32_t> order(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  auto before = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  int64_t keep = p.top_k > 0 ? std::min<int64_t>(p.top_k, vocab) : vocab;
  std::partial_sort(order.begin(), order.begin() + keep, order.end(), before);
  order.resize(static_cast<size_t>(keep));

  std::vector<double> prob(order.size());
  const double mx = logits[order[0]];
  double sum = 0.0;
  for (size_t i = 0; i < order.size(); ++i) {
    prob[i] = std::exp((logits[order[i]] - mx) / p.temperature);
    sum += prob[i];
  }
  // Nucleus: the shortest prefix whose mass reaches top_p.
  size_t n = order.size();
  if (p.top_p < 1.0f) {
    double acc = 0.0;
    for (size_t i = 0; i < order.size(); ++i) {
      acc += prob[i] / sum;
      if (acc >= p.top_p) {
        n = i + 1;
        break;
      }
    }
  }
  double mass = 0.0;
  for (size_t i = 0; i < n; ++i) mass += prob[i];
  const double u = CounterUniform(p.seed, step) * mass;
  double acc = 0.0;
  for (size_t i = 0; i < n; ++i) {
    acc += prob[i];
    if (u < acc) return order[i];
  }
  return order[n - 1];
}

TokenLogprobs ComputeLogprobs(std::span<const float> logits, int32_t token, int top_k) {
  const double mx = *std::max_element(logits.begin(), logits.end());
  double sum = 0.0;
  for (float l : logits) sum += std::exp(static_cast<double>(l) - mx);
  const double lse = mx + std::log(sum);
  TokenLogprobs out;
  out.logprob = static_cast<float>(logits[static_cast<size_t>(token)] - lse);
  const int64_t k = std::min<int64_t>(std::max(top_k, 0), static_cast<int64_t>(logits.size()));
  std::vector<int32_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  for (int64_t i = 0; i < k; ++i) out.top.emplace_back(order[i], static_cast<float>(logits[order[i]] - lse));
  return out;
}

}  // namespace mla
