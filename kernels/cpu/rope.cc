#include "kernels/cpu/rope.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace mla::cpu {

void YarnCorrectionRange(const RopeParams& p, double* lo, double* hi) {
  const double d = static_cast<double>(p.rope_dim);
  const double l0 = static_cast<double>(p.original_max_position_embeddings);
  auto dim_for = [&](double rotations) {
    return d * std::log(l0 / (rotations * 2.0 * std::numbers::pi)) / (2.0 * std::log(p.theta));
  };
  *lo = std::max(std::floor(dim_for(p.beta_fast)), 0.0);
  *hi = std::min(std::ceil(dim_for(p.beta_slow)), d - 1.0);
}

std::vector<float> RopeInvFreq(const RopeParams& p) {
  const int64_t pairs = p.rope_dim / 2;
  std::vector<float> inv(static_cast<size_t>(pairs));
  double lo = 0, hi = 0;
  if (p.yarn) {
    YarnCorrectionRange(p, &lo, &hi);
    if (hi == lo) hi += 0.001;  // avoid a zero-width ramp, as transformers does
  }
  for (int64_t i = 0; i < pairs; ++i) {
    double f = 1.0 / std::pow(p.theta, static_cast<double>(2 * i) / static_cast<double>(p.rope_dim));
    if (p.yarn) {
      double r = std::clamp((static_cast<double>(i) - lo) / (hi - lo), 0.0, 1.0);
      f = f * (1.0 - r) + (f / p.factor) * r;
    }
    inv[static_cast<size_t>(i)] = static_cast<float>(f);
  }
  return inv;
}

void ApplyRope(float* x, int64_t rope_dim, int64_t pos, const float* inv_freq, float attention_factor,
               RopePairing pairing) {
  const int64_t half = rope_dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    // The angle is rounded to float32 as the reference computes it.
    float angle = static_cast<float>(pos) * inv_freq[i];
    float c = static_cast<float>(std::cos(static_cast<double>(angle))) * attention_factor;
    float s = static_cast<float>(std::sin(static_cast<double>(angle))) * attention_factor;
    float* a = pairing == RopePairing::kInterleaved ? &x[2 * i] : &x[i];
    float* b = pairing == RopePairing::kInterleaved ? &x[2 * i + 1] : &x[i + half];
    float xa = *a, xb = *b;
    *a = xa * c - xb * s;
    *b = xb * c + xa * s;
  }
}

}  // namespace mla::cpu
