// Rotary position embedding as DeepSeek applies it: interleaved pairs
// (x[2i], x[2i+1]) rotated by pos * f_i, with YaRN-scaled frequencies.
#pragma once

#include <cstdint>
#include <vector>

namespace mla::cpu {

struct RopeParams {
  int64_t rope_dim = 0;  // qk_rope_head_dim; pairs = rope_dim / 2
  double theta = 10000.0;
  bool yarn = false;
  double factor = 1.0;  // YaRN context extension factor s
  int64_t original_max_position_embeddings = 0;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double attention_factor = 1.0;  // multiplies cos and sin (mscale ratio)
};

// Per-pair inverse frequencies f'_i, i < rope_dim / 2.
std::vector<float> RopeInvFreq(const RopeParams& p);

// YaRN's correction range [lo, hi] of pair indices (DESIGN.md section 2).
void YarnCorrectionRange(const RopeParams& p, double* lo, double* hi);

// Which elements form the pairs that RoPE rotates.
enum class RopePairing {
  kInterleaved,  // (x[2i], x[2i+1]): DeepSeek's convention
  kHalves,       // (x[i], x[i + d/2]): the GPT-NeoX convention, wrong for DeepSeek
};

// Rotates x[0..rope_dim) in place for position pos.
//   x: [rope_dim];  inv_freq: [rope_dim / 2]
void ApplyRope(float* x, int64_t rope_dim, int64_t pos, const float* inv_freq, float attention_factor,
               RopePairing pairing = RopePairing::kInterleaved);

}  // namespace mla::cpu
