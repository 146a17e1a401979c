#include "kernels/cpu/moe_routing.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

namespace mla::cpu {
namespace {

// Indices of the k largest values, largest first, ties to the lower index.
void TopK(const std::vector<float>& v, int k, std::vector<int>& idx) {
  idx.resize(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                    [&](int a, int b) { return v[a] > v[b] || (v[a] == v[b] && a < b); });
  idx.resize(static_cast<size_t>(k));
}

}  // namespace

void MoeRoute(const MoeRoutingParams& p) {
  const int e = p.num_experts;
  const int per_group = e / p.num_groups;
  const float excluded = -std::numeric_limits<float>::infinity();
  std::vector<float> scores(e), choice(e), group_score(p.num_groups), group_vals;
  std::vector<int> groups, picked, order(p.top_k);
  for (int64_t t = 0; t < p.num_tokens; ++t) {
    const float* l = p.logits + t * e;
    if (p.scoring == RouterScoring::kSigmoid) {
      for (int i = 0; i < e; ++i) scores[i] = 1.0f / (1.0f + std::exp(-l[i]));
    } else {
      float mx = *std::max_element(l, l + e);
      double sum = 0.0;
      for (int i = 0; i < e; ++i) sum += std::exp(static_cast<double>(l[i] - mx));
      for (int i = 0; i < e; ++i) scores[i] = static_cast<float>(std::exp(static_cast<double>(l[i] - mx)) / sum);
    }
    // Selection uses `choice`; the weights always come from `scores`.
    for (int i = 0; i < e; ++i) choice[i] = scores[i] + (p.method == RouterTopk::kNoauxTc ? p.bias[i] : 0.0f);

    if (p.method != RouterTopk::kGreedy) {
      for (int g = 0; g < p.num_groups; ++g) {
        group_vals.assign(choice.begin() + g * per_group, choice.begin() + (g + 1) * per_group);
        std::sort(group_vals.begin(), group_vals.end(), std::greater<float>());
        group_score[g] = p.method == RouterTopk::kNoauxTc ? group_vals[0] + group_vals[1] : group_vals[0];
      }
      TopK(group_score, p.topk_groups, groups);
      std::vector<bool> keep(static_cast<size_t>(p.num_groups), false);
      for (int g : groups) keep[static_cast<size_t>(g)] = true;
      for (int i = 0; i < e; ++i) {
        if (!keep[static_cast<size_t>(i / per_group)]) choice[i] = excluded;
      }
    }
    TopK(choice, p.top_k, picked);
    std::sort(picked.begin(), picked.end());  // ascending expert id: a fixed combine order

    float sum = 0.0f;
    for (int j = 0; j < p.top_k; ++j) sum += scores[picked[j]];
    for (int j = 0; j < p.top_k; ++j) {
      float w = scores[picked[j]];
      if (p.norm_topk_prob) w /= (sum + 1e-20f);
      p.expert_ids[t * p.top_k + j] = picked[j];
      p.weights[t * p.top_k + j] = w * p.routed_scaling_factor;
    }
  }
}

}  // namespace mla::cpu
