// Naive-form MLA prefill over a ragged batch against cpu::MlaNaiveAttention per
// sequence, on the same BF16 inputs. Sequences have queries over an existing
// cache (chunked prefill) or start from scratch; one has no queries.
// Tolerance: rtol 1e-2 for the BF16 output (2^-9 relative), atol 2e-5: scores,
// softmax and sums are FP32 on both sides, only in a different order
// (~1e-6 relative on values of order 1e-2..1).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <sstream>
#include <ostream>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cuda/mla_prefill.cuh"
#include "tests/gpu/gpu_test_util.h"
#include "tests/gpu/paged_batch.h"

namespace mla {
namespace {

using gpu_test::DeviceBuffer;
using gpu_test::SeqShape;

constexpr double kRtol = 1e-2, kAtol = 2e-5;

struct PrefillCase {
  int heads, nope, rope, v;
  int64_t k_pe_stride;  // k_pe rows as slices of the latent rows ([c_kv | k_pe]) or packed
  float scale;          // 0: DeepSeek-V3's (1/sqrt(192) * mscale^2 = 0.1352)
  std::vector<SeqShape> seqs;  // cached = kv_len - q_len, fresh = q_len
};

void PrintTo(const PrefillCase& c, std::ostream* os) {
  *os << c.heads << " heads, nope " << c.nope << " rope " << c.rope << " v " << c.v << ", {cached, fresh}:";
  for (const SeqShape& s : c.seqs) *os << " {" << s.cached << ", " << s.fresh << "}";
}

class MlaPrefillGpuTest : public ::testing::TestWithParam<PrefillCase> {};

TEST_P(MlaPrefillGpuTest, MatchesCpuNaive) {
  MLA_SKIP_WITHOUT_GPU();
  const PrefillCase& c = GetParam();
  int64_t head_pairs = 0;  // emulated cost: about 15 us per (head, query, key)
  for (const SeqShape& s : c.seqs) head_pairs += s.fresh * s.total() * c.heads;
  MLA_SKIP_LARGE_FOR_EMULATOR(head_pairs, 5000000);
  std::ostringstream shape;
  for (const SeqShape& s : c.seqs) shape << " (" << s.fresh << "/" << s.total() << ")";
  SCOPED_TRACE(::testing::Message() << "heads " << c.heads << " nope " << c.nope << " rope " << c.rope << " v " << c.v
                                    << " q/kv" << shape.str() << " seed " << gpu_test::BaseSeed());
  auto rng = gpu_test::CaseRng(static_cast<uint64_t>(c.heads * 7 + c.nope + c.seqs.size() * 1000));
  const int qk = c.nope + c.rope, kvw = c.nope + c.v;
  const float scale = c.scale != 0.0f ? c.scale : 0.135230f;
  std::vector<int32_t> cu_q{0}, cu_kv{0};
  for (const SeqShape& s : c.seqs) {
    cu_q.push_back(cu_q.back() + static_cast<int32_t>(s.fresh));
    cu_kv.push_back(cu_kv.back() + static_cast<int32_t>(s.total()));
  }
  const int64_t total_q = cu_q.back(), total_kv = cu_kv.back();
  std::vector<uint16_t> q = gpu_test::RandomBf16(rng, total_q * c.heads * qk, -1.0f, 1.0f);
  std::vector<uint16_t> kv = gpu_test::RandomBf16(rng, total_kv * c.heads * kvw, -1.0f, 1.0f);
  std::vector<uint16_t> k_pe = gpu_test::RandomBf16(rng, total_kv * c.k_pe_stride, -1.0f, 1.0f);
  const int64_t k_pe_offset = c.k_pe_stride - c.rope;  // rope values at the end of each row
  // Past the rope values of the last row nothing exists; the rest of each row is NaN.
  for (int64_t t = 0; t < total_kv; ++t) {
    for (int64_t i = 0; i < k_pe_offset; ++i) k_pe[t * c.k_pe_stride + i] = gpu_test::kBf16NaNBits;
  }

  const std::vector<float> qf = gpu_test::ToFloats(q), kvf = gpu_test::ToFloats(kv), kpef = gpu_test::ToFloats(k_pe);
  std::vector<float> want(static_cast<size_t>(total_q * c.heads * c.v), 0.0f);
  for (size_t s = 0; s < c.seqs.size(); ++s) {
    if (c.seqs[s].fresh == 0) continue;
    cpu::MlaNaiveParams p;
    p.q = &qf[cu_q[s] * c.heads * qk];
    p.kv = &kvf[cu_kv[s] * c.heads * kvw];
    p.k_pe = &kpef[cu_kv[s] * c.k_pe_stride + k_pe_offset];
    p.k_pe_stride = c.k_pe_stride;
    p.out = &want[cu_q[s] * c.heads * c.v];
    p.num_queries = c.seqs[s].fresh;
    p.kv_len = c.seqs[s].total();
    p.num_heads = c.heads;
    p.qk_nope = c.nope;
    p.qk_rope = c.rope;
    p.v_dim = c.v;
    p.scale = scale;
    gpu_test::ParallelFor(c.heads, [&](int64_t b, int64_t e) {
      cpu::MlaNaiveAttention(p, static_cast<int>(b), static_cast<int>(e));
    });
  }

  DeviceBuffer<uint16_t> d_q(q), d_kv(kv), d_kpe(k_pe), d_out(want.size());
  DeviceBuffer<int32_t> d_cu_q(cu_q), d_cu_kv(cu_kv);
  MLA_ASSERT_CUDA(d_out.Poison());
  cuda::MlaPrefillParams p;
  p.q = d_q.bf16();
  p.kv = d_kv.bf16();
  p.k_pe = d_kpe.bf16() + k_pe_offset;
  p.out = d_out.bf16();
  p.cu_seqlens_q = d_cu_q.get();
  p.cu_seqlens_kv = d_cu_kv.get();
  p.total_q = total_q;
  p.num_seqs = static_cast<int>(c.seqs.size());
  p.num_heads = c.heads;
  p.qk_nope = c.nope;
  p.qk_rope = c.rope;
  p.v_dim = c.v;
  p.k_pe_stride = c.k_pe_stride;
  p.scale = scale;
  MLA_ASSERT_CUDA(cuda::LaunchMlaPrefill(p, nullptr));
  MLA_ASSERT_CUDA(cudaDeviceSynchronize());
  std::vector<uint16_t> got;
  MLA_ASSERT_CUDA(d_out.Download(got));
  EXPECT_TRUE(gpu_test::AllClose(gpu_test::ToFloats(got), want, kRtol, kAtol));
}

// Shapes: {cached, fresh} per sequence; kv_len = cached + fresh, q_len = fresh.
INSTANTIATE_TEST_SUITE_P(
    Batches, MlaPrefillGpuTest,
    ::testing::Values(
        // DeepSeek-V3 dims: 128 heads, nope 128, rope 64, v 128; k_pe inside 576-wide latent rows.
        PrefillCase{128, 128, 64, 128, 576, 0.0f, {{0, 1}}},
        PrefillCase{128, 128, 64, 128, 576, 0.0f, {{0, 63}, {0, 0}, {0, 64}, {0, 65}, {64, 1}, {1, 64}}},
        PrefillCase{128, 128, 64, 128, 576, 0.0f, {{4000, 1}, {2000, 16}}},
        PrefillCase{16, 128, 64, 128, 576, 0.0f, {{3000, 33}, {0, 65}, {7, 0}, {63, 65}}},
        // A from-scratch prefill of a few thousand tokens, small dims (the CPU side is quadratic).
        PrefillCase{16, 32, 16, 32, 16, 0.0f, {{0, 2000}, {0, 1}, {5, 63}}},
        // Peaky softmax (scale 1) and odd dims; every lane mapping of the kernels.
        PrefillCase{16, 32, 16, 32, 16, 1.0f, {{0, 65}, {100, 64}}},
        PrefillCase{3, 40, 24, 200, 30, 0.5f, {{0, 1}, {2, 63}, {64, 64}}},
        PrefillCase{5, 0, 8, 8, 8, 0.3f, {{1, 1}, {0, 17}}}));

}  // namespace
}  // namespace mla
