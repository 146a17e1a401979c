// MLA attention for one sequence, in its two forms (DESIGN.md section 2).
// Causality: the sequence's last num_queries tokens are the queries; query j
// sits at position kv_len - num_queries + j and attends to positions [0, that].
// Work is split by head range so callers can spread heads over threads; each
// output element has a fixed reduction order (results never depend on threads).
#pragma once

#include <cstdint>

#include "kernels/cpu/latent_cache.h"

namespace mla::cpu {

// Naive form: per-head keys and values up-projected from the latents.
struct MlaNaiveParams {
  const float* q = nullptr;     // [num_queries, num_heads, qk_nope + qk_rope], RoPE applied
  const float* kv = nullptr;    // [kv_len, num_heads, qk_nope + v_dim]: k_nope | v per head
  const float* k_pe = nullptr;  // [kv_len, k_pe_stride] RoPE applied, first qk_rope values used
  int64_t k_pe_stride = 0;
  float* out = nullptr;         // [num_queries, num_heads, v_dim]
  int64_t num_queries = 0;
  int64_t kv_len = 0;
  int num_heads = 0;
  int qk_nope = 0;
  int qk_rope = 0;
  int v_dim = 0;
  float scale = 0.0f;  // softmax scale, mscale^2 included
};
void MlaNaiveAttention(const MlaNaiveParams& p, int head_begin, int head_end);

// Absorbed form: queries folded into the latent space, reading only the paged
// latent cache; no per-head key or value exists.
struct MlaAbsorbedParams {
  const float* q_latent = nullptr;  // [num_queries, num_heads, kv_lora]: W_UK^T q_nope per head
  const float* q_pe = nullptr;      // [num_queries, num_heads, qk_rope], RoPE applied
  PagedLatentView cache;            // latent_dim = kv_lora + qk_rope
  const int32_t* block_table = nullptr;  // [ceil(kv_len / block_size)]
  float* out_latent = nullptr;      // [num_queries, num_heads, kv_lora]: softmax-weighted sum of c_kv
  int64_t num_queries = 0;
  int64_t kv_len = 0;
  int num_heads = 0;
  int kv_lora = 0;
  int qk_rope = 0;
  float scale = 0.0f;
};
void MlaAbsorbedAttention(const MlaAbsorbedParams& p, int head_begin, int head_end);

}  // namespace mla::cpu
