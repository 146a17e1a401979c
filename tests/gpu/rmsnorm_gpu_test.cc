// RMSNorm (plain, strided, in place, fused residual add) against cpu::RmsNorm
// on the same BF16 inputs. Tolerance: rtol 1e-2 (the output is rounded to BF16,
// 2^-9 relative, and the GPU sums squares in float where the CPU uses double,
// ~1e-6 relative), atol 1e-6. The residual written back must equal
// bf16(x + residual) bit for bit, and the padding between rows stays untouched.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <ostream>
#include <vector>

#include "kernels/cpu/rmsnorm.h"
#include "kernels/cuda/rmsnorm.cuh"
#include "tests/gpu/gpu_test_util.h"

namespace mla {
namespace {

using gpu_test::DeviceBuffer;

constexpr double kRtol = 1e-2, kAtol = 1e-6;
constexpr float kEps = 1e-6f;

struct NormCase {
  int64_t rows, dim, ld;  // ld >= dim: row stride of x, residual and out
  bool residual;
  bool in_place;  // out = x
};

void PrintTo(const NormCase& c, std::ostream* os) {
  *os << "rows " << c.rows << " dim " << c.dim << " ld " << c.ld << (c.residual ? " +residual" : "")
      << (c.in_place ? " in-place" : "");
}

class RmsNormGpuTest : public ::testing::TestWithParam<NormCase> {};

TEST_P(RmsNormGpuTest, MatchesCpu) {
  MLA_SKIP_WITHOUT_GPU();
  const NormCase c = GetParam();
  SCOPED_TRACE(::testing::Message() << "rows " << c.rows << " dim " << c.dim << " ld " << c.ld << " residual "
                                    << c.residual << " in_place " << c.in_place << " seed " << gpu_test::BaseSeed());
  auto rng = gpu_test::CaseRng(static_cast<uint64_t>(c.rows * 7919 + c.dim * 3 + c.residual * 2 + c.in_place));
  const size_t n = static_cast<size_t>(c.rows * c.ld);
  std::vector<uint16_t> x = gpu_test::RandomBf16(rng, n, -3.0f, 3.0f);
  std::vector<uint16_t> res = gpu_test::RandomBf16(rng, n, -3.0f, 3.0f);
  std::vector<uint16_t> w = gpu_test::RandomBf16(rng, static_cast<size_t>(c.dim), 0.5f, 1.5f);

  // Reference: the BF16-rounded sum (fused case) or x, normalised by the CPU op.
  std::vector<uint16_t> want_res = res;
  std::vector<float> src(n, 0.0f);
  for (int64_t r = 0; r < c.rows; ++r) {
    for (int64_t i = 0; i < c.dim; ++i) {
      const size_t k = static_cast<size_t>(r * c.ld + i);
      if (c.residual) {
        want_res[k] = cpu::FloatToBf16(cpu::Bf16ToFloat(x[k]) + cpu::Bf16ToFloat(res[k]));
        src[k] = cpu::Bf16ToFloat(want_res[k]);
      } else {
        src[k] = cpu::Bf16ToFloat(x[k]);
      }
    }
  }
  std::vector<float> wf = gpu_test::ToFloats(w), want(n, 0.0f);
  cpu::RmsNorm(src.data(), c.ld, wf.data(), c.rows, c.dim, kEps, want.data(), c.ld);

  DeviceBuffer<uint16_t> d_x(x), d_res(res), d_w(w), d_out(n);
  MLA_ASSERT_CUDA(d_out.Poison());
  cuda::RmsNormParams p;
  p.x = d_x.bf16();
  p.residual = c.residual ? d_res.bf16() : nullptr;
  p.weight = d_w.bf16();
  p.out = c.in_place ? d_x.bf16() : d_out.bf16();
  p.rows = c.rows;
  p.dim = c.dim;
  p.ldx = p.ld_residual = p.ldo = c.ld;
  p.eps = kEps;
  MLA_ASSERT_CUDA(cuda::LaunchRmsNorm(p, nullptr));

  std::vector<uint16_t> got_bits, got_res;
  MLA_ASSERT_CUDA((c.in_place ? d_x : d_out).Download(got_bits));
  MLA_ASSERT_CUDA(d_res.Download(got_res));
  std::vector<float> got_rows, want_rows;
  for (int64_t r = 0; r < c.rows; ++r) {
    for (int64_t i = 0; i < c.ld; ++i) {
      const size_t k = static_cast<size_t>(r * c.ld + i);
      if (i < c.dim) {
        got_rows.push_back(cpu::Bf16ToFloat(got_bits[k]));
        want_rows.push_back(want[k]);
      } else {
        // Between rows: the poison (out-of-place) or x itself (in place) is left alone.
        ASSERT_EQ(got_bits[k], c.in_place ? x[k] : gpu_test::kBf16NaNBits) << "row " << r << " pad " << i;
      }
    }
  }
  EXPECT_TRUE(gpu_test::AllClose(got_rows, want_rows, kRtol, kAtol));
  EXPECT_TRUE(gpu_test::BitsEqual(got_res, c.residual ? want_res : res));
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, RmsNormGpuTest,
    ::testing::Values(NormCase{0, 7168, 7168, false, false}, NormCase{1, 7168, 7168, false, false},
                      NormCase{65, 7168, 7168, true, false}, NormCase{3, 7168, 7168, true, true},
                      NormCase{64, 1536, 1536, false, true},
                      // kv_a_layernorm: the first 512 of each 576-wide row, in place.
                      NormCase{63, 512, 576, false, true}, NormCase{65, 512, 576, false, false},
                      NormCase{7, 100, 103, true, false}, NormCase{5, 1, 1, false, false},
                      NormCase{2, 4000, 4000, true, true}));

}  // namespace
}  // namespace mla
