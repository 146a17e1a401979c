// The absorbed attention (latent space, paged cache) against the naive one
// (per-head keys and values up-projected), on random inputs.
#include "kernels/cpu/attention.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/gemm.h"
#include "runtime/kv_cache.h"

namespace mla {
namespace {

constexpr int kLora = 48, kNope = 16, kRope = 8, kV = 12;
constexpr double kTolerance = 1e-5;  // relative L2, float32 on both sides

double RelL2(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num / den);
}

struct Case {
  int heads;
  int64_t kv_len;
  int64_t queries;
  CacheDType dtype;
};

void RunCase(const Case& c) {
  SCOPED_TRACE(testing::Message() << "heads " << c.heads << " kv_len " << c.kv_len << " queries " << c.queries);
  std::mt19937 rng(static_cast<uint32_t>(c.heads * 1000 + c.kv_len * 7 + c.queries));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int lat = kLora + kRope, kvw = kNope + kV;
  const int64_t bs = kDefaultBlockSize, blocks_needed = (c.kv_len + bs - 1) / bs;
  // A pool with spare blocks, NaN everywhere; the sequence gets scattered, non-contiguous blocks.
  PagedLatentCache cache(1, blocks_needed * 2 + 3, bs, lat, c.dtype);
  cache.Poison();
  std::vector<int32_t> table;
  for (int64_t b = 0; b < blocks_needed; ++b) table.push_back(static_cast<int32_t>(2 * (blocks_needed - b)));
  table.push_back(1 << 30);  // an out-of-range slot past the end must never be read
  cpu::PagedLatentView view = cache.Layer(0);
  std::vector<float> row(lat);
  for (int64_t t = 0; t < c.kv_len; ++t) {
    for (float& v : row) v = normal(rng);
    cpu::WriteLatent(view, table.data(), t, row.data());
  }
  std::vector<float> kv_b(static_cast<size_t>(c.heads * kvw * kLora));
  for (float& v : kv_b) v = normal(rng) * 0.2f;
  std::vector<float> q(static_cast<size_t>(c.queries * c.heads * (kNope + kRope)));
  for (float& v : q) v = normal(rng);
  const float scale = 0.3f;

  // Naive: up-project every latent into per-head k_nope | v.
  std::vector<float> latents(static_cast<size_t>(c.kv_len * lat)), kv(static_cast<size_t>(c.kv_len * c.heads * kvw));
  cpu::GatherLatents(view, table.data(), c.kv_len, latents.data());
  cpu::Linear(latents.data(), lat, c.kv_len, kLora, kv_b.data(), c.heads * kvw, kv.data(), c.heads * kvw);
  std::vector<float> naive(static_cast<size_t>(c.queries * c.heads * kV), NAN);
  cpu::MlaNaiveParams np{q.data(), kv.data(), latents.data() + kLora, lat, naive.data(), c.queries, c.kv_len,
                         c.heads, kNope, kRope, kV, scale};
  cpu::MlaNaiveAttention(np, 0, c.heads);

  // Absorbed: q_lat = W_UK^T q_nope, attend over the cache, then W_UV.
  std::vector<float> q_lat(static_cast<size_t>(c.queries * c.heads * kLora)),
      q_pe(static_cast<size_t>(c.queries * c.heads * kRope)), o_lat(q_lat.size(), NAN),
      absorbed(naive.size(), NAN);
  for (int64_t j = 0; j < c.queries; ++j) {
    for (int h = 0; h < c.heads; ++h) {
      const float* qh = &q[(j * c.heads + h) * (kNope + kRope)];
      for (int d = 0; d < kLora; ++d) {
        float s = 0;
        for (int i = 0; i < kNope; ++i) s += qh[i] * kv_b[(h * kvw + i) * kLora + d];
        q_lat[(j * c.heads + h) * kLora + d] = s;
      }
      for (int i = 0; i < kRope; ++i) q_pe[(j * c.heads + h) * kRope + i] = qh[kNope + i];
    }
  }
  cpu::MlaAbsorbedParams ap;
  ap.q_latent = q_lat.data();
  ap.q_pe = q_pe.data();
  ap.cache = view;
  ap.block_table = table.data();
  ap.out_latent = o_lat.data();
  ap.num_queries = c.queries;
  ap.kv_len = c.kv_len;
  ap.num_heads = c.heads;
  ap.kv_lora = kLora;
  ap.qk_rope = kRope;
  ap.scale = scale;
  // Two head ranges, as threads would split them.
  cpu::MlaAbsorbedAttention(ap, 0, c.heads / 2);
  cpu::MlaAbsorbedAttention(ap, c.heads / 2, c.heads);
  for (int64_t j = 0; j < c.queries; ++j) {
    for (int h = 0; h < c.heads; ++h) {
      for (int d = 0; d < kV; ++d) {
        float s = 0;
        for (int i = 0; i < kLora; ++i) s += kv_b[(h * kvw + kNope + d) * kLora + i] * o_lat[(j * c.heads + h) * kLora + i];
        absorbed[(j * c.heads + h) * kV + d] = s;
      }
    }
  }
  for (float v : absorbed) ASSERT_TRUE(std::isfinite(v));
  EXPECT_LT(RelL2(absorbed, naive), kTolerance);
}

TEST(AttentionTest, AbsorbedEqualsNaive) {
  for (int heads : {16, 128}) {
    for (int64_t kv_len : {1, 63, 64, 65, 200}) {
      RunCase({heads, kv_len, 1, CacheDType::kF32});
    }
  }
}

TEST(AttentionTest, AbsorbedEqualsNaiveCausalChunk) {
  for (int64_t kv_len : {5, 64, 130}) RunCase({16, kv_len, 5, CacheDType::kF32});
  RunCase({16, 1, 1, CacheDType::kF32});
}

TEST(AttentionTest, AbsorbedEqualsNaiveBf16Cache) {
  for (int64_t kv_len : {3, 65, 129}) RunCase({16, kv_len, 3, CacheDType::kBF16});
  RunCase({16, 1, 1, CacheDType::kBF16});
}

TEST(AttentionTest, LongContext) { RunCase({16, 3000, 1, CacheDType::kF32}); }

TEST(AttentionTest, SingleTokenAttendsOnlyToItself) {
  // With one visible position the output is exactly that position's value.
  const int heads = 2;
  PagedLatentCache cache(1, 2, kDefaultBlockSize, kLora + kRope, CacheDType::kF32);
  cache.Poison();
  std::vector<int32_t> table = {1};
  std::vector<float> row(kLora + kRope);
  for (int i = 0; i < kLora + kRope; ++i) row[i] = 0.01f * i;
  cpu::WriteLatent(cache.Layer(0), table.data(), 0, row.data());
  std::vector<float> q_lat(heads * kLora, 1.0f), q_pe(heads * kRope, 1.0f), out(heads * kLora);
  cpu::MlaAbsorbedParams ap;
  ap.q_latent = q_lat.data();
  ap.q_pe = q_pe.data();
  ap.cache = cache.Layer(0);
  ap.block_table = table.data();
  ap.out_latent = out.data();
  ap.num_queries = 1;
  ap.kv_len = 1;
  ap.num_heads = heads;
  ap.kv_lora = kLora;
  ap.qk_rope = kRope;
  ap.scale = 1.0f;
  cpu::MlaAbsorbedAttention(ap, 0, heads);
  for (int h = 0; h < heads; ++h) {
    for (int i = 0; i < kLora; ++i) EXPECT_FLOAT_EQ(out[h * kLora + i], row[i]);
  }
}

}  // namespace
}  // namespace mla
