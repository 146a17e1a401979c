// The per-head GEMM around the absorbed decode (kernels/cuda/head_gemm.cuh)
// against a double-precision product of the same BF16 values, at the shapes
// and strides the CUDA model and the decode benchmark use (W_UK read out of
// kv_b as [k, n], W_UV as [n, k]; x rows interleaved with other heads and the
// rope part) and at ragged ones (rows past a tile, n past a 64-column tile).
// Every output outside the product is NaN before and must stay NaN; with its
// span recorded (--trace) the same bits again.
// Grouped (the routed experts' GEMMs): per group against the same product.
// Tolerance: BF16 output (2^-9 relative) of FP32 sums: rtol 1e-2, atol 1e-3
// (sums of up to 512 terms of magnitude about 1/sqrt(k)); FP32 output rtol 1e-4.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <ostream>
#include <random>
#include <vector>

#include "kernels/cuda/head_gemm.cuh"
#include "tests/gpu/gpu_test_util.h"

namespace mla {
namespace {

using gpu_test::DeviceBuffer;

struct HeadGemmCase {
  int64_t rows;
  int heads, n, k;
  bool k_by_n;
  int x_extra = 0;  // elements after each head's k in x (the rope part of q)
  bool pdl = false;  // launched with programmatic dependent launch (W requested before the wait)
};

void PrintTo(const HeadGemmCase& c, std::ostream* os) {
  *os << c.rows << " rows, " << c.heads << " heads, n " << c.n << " k " << c.k << (c.k_by_n ? " [k, n]" : " [n, k]")
      << " x extra " << c.x_extra << (c.pdl ? " PDL" : "");
}

class HeadGemmGpuTest : public ::testing::TestWithParam<HeadGemmCase> {};

TEST_P(HeadGemmGpuTest, MatchesCpu) {
  MLA_SKIP_WITHOUT_GPU();
  const HeadGemmCase& c = GetParam();
  auto rng = gpu_test::CaseRng(static_cast<uint64_t>(c.rows * 31 + c.heads * 7 + c.n + c.k));
  const int64_t x_head = c.k + c.x_extra, x_ld = c.heads * x_head;
  // W: heads blocks of [k, n] or [n, k], each padded by 8 rows (a head stride
  // larger than the matrix, as kv_b's W_UK rows are followed by W_UV's).
  const int64_t w_ld = c.k_by_n ? c.n : c.k;
  const int64_t w_rows = c.k_by_n ? c.k : c.n;
  const int64_t w_head = (w_rows + 8) * w_ld;
  const float w_scale = 1.0f / std::sqrt(static_cast<float>(c.k));
  const std::vector<uint16_t> x_bits = gpu_test::RandomBf16(rng, c.rows * x_ld, -1.0f, 1.0f);
  const std::vector<uint16_t> w_bits = gpu_test::RandomBf16(rng, c.heads * w_head, -w_scale, w_scale);
  const std::vector<float> x = gpu_test::ToFloats(x_bits), w = gpu_test::ToFloats(w_bits);
  // out: [rows, heads, n + 8]: the 8 columns after each head's n stay NaN.
  const int64_t out_head = c.n + 8, out_ld = c.heads * out_head;
  std::vector<float> want(static_cast<size_t>(c.rows * out_ld), NAN);
  for (int64_t m = 0; m < c.rows; ++m) {
    for (int h = 0; h < c.heads; ++h) {
      for (int n = 0; n < c.n; ++n) {
        double sum = 0.0;
        for (int k = 0; k < c.k; ++k) {
          const float wv = c.k_by_n ? w[h * w_head + k * w_ld + n] : w[h * w_head + n * w_ld + k];
          sum += static_cast<double>(x[m * x_ld + h * x_head + k]) * wv;
        }
        want[m * out_ld + h * out_head + n] = static_cast<float>(sum);
      }
    }
  }
  DeviceBuffer<uint16_t> d_x(x_bits), d_w(w_bits), d_out(want.size());
  MLA_ASSERT_CUDA(d_out.Poison());
  cuda::HeadGemmParams p;
  p.x = d_x.bf16();
  p.x_ld = x_ld;
  p.x_head_stride = x_head;
  p.w = d_w.bf16();
  p.w_ld = w_ld;
  p.w_head_stride = w_head;
  p.w_is_k_by_n = c.k_by_n;
  p.out = d_out.bf16();
  p.out_ld = out_ld;
  p.out_head_stride = out_head;
  p.rows = c.rows;
  p.n = c.n;
  p.k = c.k;
  p.heads = c.heads;
  p.pdl = c.pdl;
  ASSERT_TRUE(cuda::HeadGemmTakes(p));
  MLA_ASSERT_CUDA(cuda::LaunchHeadGemm(p, nullptr));
  MLA_ASSERT_CUDA(cudaDeviceSynchronize());
  std::vector<uint16_t> got_bits;
  MLA_ASSERT_CUDA(d_out.Download(got_bits));
  const std::vector<float> got = gpu_test::ToFloats(got_bits);
  std::vector<float> got_in, want_in;
  for (size_t i = 0; i < want.size(); ++i) {
    if (std::isnan(want[i])) {
      ASSERT_TRUE(std::isnan(got[i])) << "wrote outside the product at " << i;
    } else {
      got_in.push_back(got[i]);
      want_in.push_back(want[i]);
    }
  }
  EXPECT_TRUE(gpu_test::AllClose(got_in, want_in, 1e-2, 1e-3));

  // Again with its span recorded (HeadGemmParams.span, for the benchmark's
  // --trace): the same bits, and a span from the first block's start to the
  // last one's end.
  DeviceBuffer<uint64_t> d_span(std::vector<uint64_t>{UINT64_MAX, 0});
  p.span = d_span.get();
  MLA_ASSERT_CUDA(d_out.Poison());
  MLA_ASSERT_CUDA(cuda::LaunchHeadGemm(p, nullptr));
  std::vector<uint16_t> spanned_bits;
  MLA_ASSERT_CUDA(d_out.Download(spanned_bits));
  EXPECT_EQ(spanned_bits, got_bits);
  std::vector<uint64_t> span;
  MLA_ASSERT_CUDA(d_span.Download(span));
  if (c.rows > 0) {
    EXPECT_NE(span[0], UINT64_MAX);
    EXPECT_LE(span[0], span[1]);
  }
}

// Grouped (HeadGemmParams.group_rows): the routed experts' GEMMs over rows
// grouped by expert, W as a linear layer's [n, k] a head (gate_up, down), BF16
// or FP32 out. Group sizes are random, with empty groups, a full one and one
// past the `rows` bound (only its first `rows` are computed); every output
// row outside the computed ones is NaN before and must stay NaN.
struct GroupedGemmCase {
  int experts;
  int64_t max_rows;  // HeadGemmParams.rows: the grid's bound on a group's rows
  int n, k;
  bool f32_out;
  bool pdl = false;
};

void PrintTo(const GroupedGemmCase& c, std::ostream* os) {
  *os << c.experts << " experts, at most " << c.max_rows << " rows, n " << c.n << " k " << c.k
      << (c.f32_out ? " FP32 out" : " BF16 out") << (c.pdl ? " PDL" : "");
}

class HeadGemmGroupedGpuTest : public ::testing::TestWithParam<GroupedGemmCase> {};

TEST_P(HeadGemmGroupedGpuTest, MatchesCpuPerGroup) {
  MLA_SKIP_WITHOUT_GPU();
  const GroupedGemmCase& c = GetParam();
  auto rng = gpu_test::CaseRng(static_cast<uint64_t>(c.experts * 131 + c.max_rows * 17 + c.n + c.k));
  // Group sizes: expert 0 empty, expert 1 full, the last past the bound, the rest random in [0, max_rows].
  std::vector<int32_t> group_rows(static_cast<size_t>(c.experts) + 1, 0);
  std::uniform_int_distribution<int64_t> size(0, c.max_rows);
  for (int e = 0; e < c.experts; ++e) {
    const int64_t n = e == 0 ? 0 : e == 1 ? c.max_rows : e == c.experts - 1 ? c.max_rows + 3 : size(rng);
    group_rows[e + 1] = group_rows[e] + static_cast<int32_t>(n);
  }
  const int64_t total = group_rows.back();
  // x [total, k] (ld k + 8), W [experts][n + 8 rows][k] (a head stride past the matrix).
  const int64_t x_ld = c.k + 8, w_head = static_cast<int64_t>(c.n + 8) * c.k, out_ld = c.n + 8;
  const float w_scale = 1.0f / std::sqrt(static_cast<float>(c.k));
  const std::vector<uint16_t> x_bits = gpu_test::RandomBf16(rng, total * x_ld, -1.0f, 1.0f);
  const std::vector<uint16_t> w_bits = gpu_test::RandomBf16(rng, c.experts * w_head, -w_scale, w_scale);
  const std::vector<float> x = gpu_test::ToFloats(x_bits), w = gpu_test::ToFloats(w_bits);
  std::vector<float> want(static_cast<size_t>(total * out_ld), NAN);
  for (int e = 0; e < c.experts; ++e) {
    const int64_t computed = std::min<int64_t>(group_rows[e + 1] - group_rows[e], c.max_rows);
    for (int64_t r = group_rows[e]; r < group_rows[e] + computed; ++r) {
      for (int n = 0; n < c.n; ++n) {
        double sum = 0.0;
        for (int k = 0; k < c.k; ++k) sum += static_cast<double>(x[r * x_ld + k]) * w[e * w_head + n * c.k + k];
        want[r * out_ld + n] = static_cast<float>(sum);
      }
    }
  }
  DeviceBuffer<uint16_t> d_x(x_bits), d_w(w_bits), d_out_bf16(c.f32_out ? 0 : want.size());
  DeviceBuffer<float> d_out_f32(c.f32_out ? want.size() : 0);
  DeviceBuffer<int32_t> d_groups(group_rows);
  MLA_ASSERT_CUDA(d_out_bf16.Poison());
  MLA_ASSERT_CUDA(d_out_f32.Poison());
  cuda::HeadGemmParams p;
  p.x = d_x.bf16();
  p.x_ld = x_ld;
  p.w = d_w.bf16();
  p.w_ld = c.k;
  p.w_head_stride = w_head;
  p.w_is_k_by_n = false;
  if (c.f32_out) {
    p.out_f32 = d_out_f32.get();
  } else {
    p.out = d_out_bf16.bf16();
  }
  p.out_ld = out_ld;
  p.rows = c.max_rows;
  p.n = c.n;
  p.k = c.k;
  p.heads = c.experts;
  p.group_rows = d_groups.get();
  p.pdl = c.pdl;
  ASSERT_TRUE(cuda::HeadGemmTakes(p));
  MLA_ASSERT_CUDA(cuda::LaunchHeadGemm(p, nullptr));
  MLA_ASSERT_CUDA(cudaDeviceSynchronize());
  std::vector<float> got;
  if (c.f32_out) {
    MLA_ASSERT_CUDA(d_out_f32.Download(got));
  } else {
    std::vector<uint16_t> bits;
    MLA_ASSERT_CUDA(d_out_bf16.Download(bits));
    got = gpu_test::ToFloats(bits);
  }
  std::vector<float> got_in, want_in;
  for (size_t i = 0; i < want.size(); ++i) {
    if (std::isnan(want[i])) {
      ASSERT_TRUE(std::isnan(got[i])) << "wrote outside the groups' products at row " << i / out_ld << " column "
                                      << i % out_ld;
    } else {
      got_in.push_back(got[i]);
      want_in.push_back(want[i]);
    }
  }
  ASSERT_FALSE(want_in.empty());
  // FP32 out: only the summation order differs from the double product.
  EXPECT_TRUE(gpu_test::AllClose(got_in, want_in, c.f32_out ? 1e-4 : 1e-2, 1e-3));
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, HeadGemmGroupedGpuTest,
    ::testing::Values(
        // The golden fixtures' experts (hidden 64, inter 32): gate_up (n 64,
        // k 64) and down (n 64, k 32) over a few tokens' rows.
        GroupedGemmCase{16, 5, 64, 64, false}, GroupedGemmCase{16, 5, 64, 32, true},
        // Groups past one 32-row tile; k past a 64 stage; ragged n.
        GroupedGemmCase{6, 40, 96, 160, true}, GroupedGemmCase{5, 33, 40, 72, false, true},
        // Many experts at decode sizes, most with a row or none; k past the 8
        // stages requested at once (the 8-slot ring).
        GroupedGemmCase{256, 4, 48, 64, true, true}, GroupedGemmCase{4, 9, 40, 600, false},
        GroupedGemmCase{3, 8, 24, 1032, true},
        // DeepSeek-V3's gate_up k (hidden 7168: the ring wraps 14 times) and a
        // ragged one past several wraps.
        GroupedGemmCase{3, 2, 64, 7168, false}, GroupedGemmCase{5, 6, 32, 2056, true, true}));

TEST(HeadGemmTest, TakesOnlyWholePieces) {
  cuda::HeadGemmParams p;
  alignas(16) static const uint16_t buf[64] = {};
  p.x = p.w = reinterpret_cast<const __nv_bfloat16*>(buf);
  p.out = reinterpret_cast<__nv_bfloat16*>(const_cast<uint16_t*>(buf));
  p.x_ld = p.w_ld = p.out_ld = 8;
  p.rows = 1;
  p.n = p.k = 8;
  p.heads = 1;
  EXPECT_TRUE(cuda::HeadGemmTakes(p));
  p.n = 12;  // not a multiple of 8
  EXPECT_FALSE(cuda::HeadGemmTakes(p));
  p.n = 8;
  p.x_ld = 12;
  EXPECT_FALSE(cuda::HeadGemmTakes(p));
  p.x_ld = 8;
  p.x = reinterpret_cast<const __nv_bfloat16*>(buf + 1);  // 2-byte aligned
  EXPECT_FALSE(cuda::HeadGemmTakes(p));
  p.x = reinterpret_cast<const __nv_bfloat16*>(buf);
  p.heads = 0;
  EXPECT_FALSE(cuda::HeadGemmTakes(p));
  EXPECT_EQ(cuda::LaunchHeadGemm(p, nullptr), cudaErrorInvalidValue);
  p.heads = 1;
  // Exactly one output, and grouped rows with no head strides.
  p.out_f32 = reinterpret_cast<float*>(const_cast<uint16_t*>(buf));
  EXPECT_FALSE(cuda::HeadGemmTakes(p));
  p.out = nullptr;
  EXPECT_TRUE(cuda::HeadGemmTakes(p));
  alignas(16) static const int32_t groups[2] = {0, 1};
  p.group_rows = groups;
  EXPECT_TRUE(cuda::HeadGemmTakes(p));
  p.x_head_stride = 8;
  EXPECT_FALSE(cuda::HeadGemmTakes(p));
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, HeadGemmGpuTest,
    ::testing::Values(
        // DeepSeek-V3 at 16 heads (TP=8): W_UK ([k 128, n 512], q rows carry the
        // 64 rope values after each head's 128) and W_UV ([n 128, k 512]).
        HeadGemmCase{64, 16, 512, 128, true, 64}, HeadGemmCase{64, 16, 128, 512, false},
        HeadGemmCase{64, 16, 512, 128, true, 64, true}, HeadGemmCase{64, 16, 128, 512, false, 0, true},
        // One sequence at 128 heads, and a batch past one 32-row tile.
        HeadGemmCase{1, 128, 512, 128, true, 64}, HeadGemmCase{1, 128, 128, 512, false},
        HeadGemmCase{37, 16, 128, 512, false}, HeadGemmCase{70, 8, 512, 128, true},
        // The golden fixtures' attention: kv_lora 160 (n past a 64-column tile,
        // k past a 64 stage), nope 32, v 32.
        HeadGemmCase{5, 8, 160, 32, true, 16}, HeadGemmCase{5, 8, 32, 160, false},
        // Ragged k (a partial last stage) and n at one 8-column piece.
        HeadGemmCase{3, 2, 8, 72, false}, HeadGemmCase{33, 3, 24, 200, true, 8},
        // k past the 8 stages a block requests at once (512): the 8-slot ring,
        // with a ragged last stage.
        HeadGemmCase{9, 2, 40, 600, false}, HeadGemmCase{17, 3, 72, 1032, true, 8},
        HeadGemmCase{9, 2, 40, 600, false, 0, true}));

}  // namespace
}  // namespace mla
