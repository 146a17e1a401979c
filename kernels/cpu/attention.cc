#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace mla::cpu {
namespace {

float Dot(const float* a, const float* b, int64_t n) {
  float s = 0.0f;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// In-place softmax over s[0..n); returns nothing, fixed order.
void Softmax(float* s, int64_t n) {
  float mx = *std::max_element(s, s + n);
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    s[i] = std::exp(s[i] - mx);
    sum += s[i];
  }
  float inv = static_cast<float>(1.0 / sum);
  for (int64_t i = 0; i < n; ++i) s[i] *= inv;
}

// Row pos of the cache as float32: a pointer into the cache when it is float32,
// else converted into `scratch`.
const float* LatentRow(const PagedLatentView& cache, const int32_t* block_table, int64_t pos, float* scratch) {
  if (cache.dtype == CacheDType::kF32) {
    int64_t block = block_table[pos / cache.block_size];
    return static_cast<const float*>(cache.base) + (block * cache.block_size + pos % cache.block_size) * cache.latent_dim;
  }
  ReadLatent(cache, block_table, pos, scratch);
  return scratch;
}

}  // namespace

void MlaNaiveAttention(const MlaNaiveParams& p, int head_begin, int head_end) {
  const int qk = p.qk_nope + p.qk_rope, kvw = p.qk_nope + p.v_dim;
  std::vector<float> scores(static_cast<size_t>(p.kv_len));
  for (int64_t j = 0; j < p.num_queries; ++j) {
    const int64_t visible = p.kv_len - p.num_queries + j + 1;
    for (int h = head_begin; h < head_end; ++h) {
      const float* q = p.q + (j * p.num_heads + h) * qk;
      for (int64_t t = 0; t < visible; ++t) {
        const float* k = p.kv + (t * p.num_heads + h) * kvw;
        scores[t] = p.scale * (Dot(q, k, p.qk_nope) + Dot(q + p.qk_nope, p.k_pe + t * p.k_pe_stride, p.qk_rope));
      }
      Softmax(scores.data(), visible);
      float* o = p.out + (j * p.num_heads + h) * p.v_dim;
      std::fill(o, o + p.v_dim, 0.0f);
      for (int64_t t = 0; t < visible; ++t) {
        const float* v = p.kv + (t * p.num_heads + h) * kvw + p.qk_nope;
        for (int d = 0; d < p.v_dim; ++d) o[d] += scores[t] * v[d];
      }
    }
  }
}

void MlaAbsorbedAttention(const MlaAbsorbedParams& p, int head_begin, int head_end) {
  const int heads = head_end - head_begin;
  if (heads <= 0) return;
  std::vector<float> scores(static_cast<size_t>(heads) * p.kv_len);
  std::vector<float> scratch(static_cast<size_t>(p.cache.latent_dim));
  for (int64_t j = 0; j < p.num_queries; ++j) {
    const int64_t visible = p.kv_len - p.num_queries + j + 1;
    const float* q_lat = p.q_latent + (j * p.num_heads + head_begin) * p.kv_lora;
    const float* q_pe = p.q_pe + (j * p.num_heads + head_begin) * p.qk_rope;
    // Pass 1: scores[h][t] = scale * (q_lat . c_kv_t + q_pe . k_pe_t), one cache row read per t.
    for (int64_t t = 0; t < visible; ++t) {
      const float* row = LatentRow(p.cache, p.block_table, t, scratch.data());
      for (int h = 0; h < heads; ++h) {
        scores[h * p.kv_len + t] =
            p.scale * (Dot(q_lat + h * p.kv_lora, row, p.kv_lora) + Dot(q_pe + h * p.qk_rope, row + p.kv_lora, p.qk_rope));
      }
    }
    for (int h = 0; h < heads; ++h) Softmax(&scores[h * p.kv_len], visible);
    // Pass 2: o_lat[h] = sum_t p[h][t] c_kv_t, in position order.
    float* out = p.out_latent + (j * p.num_heads + head_begin) * p.kv_lora;
    std::fill(out, out + static_cast<int64_t>(heads) * p.kv_lora, 0.0f);
    for (int64_t t = 0; t < visible; ++t) {
      const float* row = LatentRow(p.cache, p.block_table, t, scratch.data());
      for (int h = 0; h < heads; ++h) {
        const float w = scores[h * p.kv_len + t];
        float* o = out + h * p.kv_lora;
        for (int d = 0; d < p.kv_lora; ++d) o[d] += w * row[d];
      }
    }
  }
}

}  // namespace mla::cpu
