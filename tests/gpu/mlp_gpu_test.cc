// SiLU-gate and the residual add against kernels/cpu/mlp.h on the same BF16
// inputs. SiluMul: rtol 1e-2 (BF16 output, 2^-9 relative; expf within 2 ulp
// of glibc's), atol 1e-6. AddInPlace: exact (one float add of two BF16 values,
// then round to nearest even, on both sides).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <ostream>
#include <vector>

#include "kernels/cpu/mlp.h"
#include "kernels/cuda/mlp.cuh"
#include "tests/gpu/gpu_test_util.h"

namespace mla {
namespace {

using gpu_test::DeviceBuffer;

struct SiluCase {
  int64_t rows, inter;
};

void PrintTo(const SiluCase& c, std::ostream* os) { *os << "rows " << c.rows << " inter " << c.inter; }

class SiluMulGpuTest : public ::testing::TestWithParam<SiluCase> {};

TEST_P(SiluMulGpuTest, MatchesCpu) {
  MLA_SKIP_WITHOUT_GPU();
  const SiluCase c = GetParam();
  SCOPED_TRACE(::testing::Message() << "rows " << c.rows << " inter " << c.inter << " seed " << gpu_test::BaseSeed());
  auto rng = gpu_test::CaseRng(static_cast<uint64_t>(c.rows * 31 + c.inter));
  std::vector<uint16_t> gate_up = gpu_test::RandomBf16(rng, c.rows * 2 * c.inter, -8.0f, 8.0f);
  const std::vector<float> gu = gpu_test::ToFloats(gate_up);
  std::vector<float> want(static_cast<size_t>(c.rows * c.inter));
  cpu::SiluMul(gu.data(), c.rows, c.inter, want.data());

  DeviceBuffer<uint16_t> d_in(gate_up), d_out(want.size());
  MLA_ASSERT_CUDA(d_out.Poison());
  cuda::SiluMulParams p;
  p.gate_up = d_in.bf16();
  p.out = d_out.bf16();
  p.rows = c.rows;
  p.inter = c.inter;
  MLA_ASSERT_CUDA(cuda::LaunchSiluMul(p, nullptr));
  std::vector<uint16_t> got;
  MLA_ASSERT_CUDA(d_out.Download(got));
  EXPECT_TRUE(gpu_test::AllClose(gpu_test::ToFloats(got), want, 1e-2, 1e-6));
}

// V3: dense inter 18432 / 8 ranks, experts 2048; V2-Lite experts 1408; odd ones.
INSTANTIATE_TEST_SUITE_P(Shapes, SiluMulGpuTest,
                         ::testing::Values(SiluCase{0, 2048}, SiluCase{1, 2048}, SiluCase{65, 2304},
                                           SiluCase{300, 1408}, SiluCase{7, 5}, SiluCase{3000, 64}));

class AddGpuTest : public ::testing::TestWithParam<int64_t> {};

TEST_P(AddGpuTest, MatchesCpuExactly) {
  MLA_SKIP_WITHOUT_GPU();
  const int64_t n = GetParam();
  SCOPED_TRACE(::testing::Message() << "n " << n << " seed " << gpu_test::BaseSeed());
  auto rng = gpu_test::CaseRng(static_cast<uint64_t>(n));
  std::vector<uint16_t> y = gpu_test::RandomBf16(rng, n, -4.0f, 4.0f), x = gpu_test::RandomBf16(rng, n, -4.0f, 4.0f);
  std::vector<float> yf = gpu_test::ToFloats(y), xf = gpu_test::ToFloats(x);
  cpu::AddInPlace(yf.data(), xf.data(), n);
  const std::vector<uint16_t> want = gpu_test::ToBf16(yf);

  DeviceBuffer<uint16_t> d_y(y), d_x(x);
  cuda::AddParams p;
  p.y = d_y.bf16();
  p.x = d_x.bf16();
  p.n = n;
  MLA_ASSERT_CUDA(cuda::LaunchAddInPlace(p, nullptr));
  std::vector<uint16_t> got;
  MLA_ASSERT_CUDA(d_y.Download(got));
  EXPECT_TRUE(gpu_test::BitsEqual(got, want));
}

// 65 * 7168 (a prefill chunk of V3 hidden states) and past the grid-stride limit.
INSTANTIATE_TEST_SUITE_P(Sizes, AddGpuTest, ::testing::Values(0, 1, 63, 65 * 7168, 4096 * 7168 + 3));

}  // namespace
}  // namespace mla
