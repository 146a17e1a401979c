// The warpgroup-MMA conventions of kernels/cuda/wgmma.cuh, on their own: one
// m64nNk16 through the probe (kernels/cuda/wgmma_probe.cuh) against a CPU
// product of the same BF16 values, at the strides the wgmma decode kernels
// (mla_decode_wgmma.cu, mla_decode_wgmma16.cu) use and at others, unswizzled
// and 128-byte swizzled as TMA writes them. If their
// runs fail on a GPU, this says whether the layouts are the cause: a failing
// case also tries the descriptors with LBO and SBO swapped and reports
// whether those match instead. On the emulator (tests/emu) it checks the
// probe against the emulator's own reading of the same documentation.
// Tolerance: exact BF16 products, FP32 sums of 16 terms in any order: 1e-5
// relative to the sum of |terms| (atol 1e-4 over values in [-1, 1]).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda/wgmma_probe.cuh"
#include "tests/gpu/gpu_test_util.h"

namespace mla {
namespace {

using gpu_test::DeviceBuffer;

struct ProbeCase {
  const char* name;
  int n;
  bool trans_a, trans_b;  // MN-major A, B (wgmma_probe.cuh lists the shapes)
  uint32_t a_lbo, a_sbo, b_lbo, b_sbo;
  // A 128-byte swizzled (wgmma_probe.cuh): a_sbo its 8-row stride, a_lbo
  // only the descriptor's LBO; K-major A at k-step a_kstep of its rows.
  bool a_sw128 = false;
  int a_kstep = 0;
  // B 128-byte swizzled: b_sbo its 8-row stride; MN-major b_lbo its 64-column
  // stride (K-major: only the descriptor's LBO); K-major B at k-step b_kstep.
  bool b_sw128 = false;
  int b_kstep = 0;
};

void PrintTo(const ProbeCase& c, std::ostream* os) { *os << c.name; }

class WgmmaGpuTest : public ::testing::TestWithParam<ProbeCase> {};

// D = A B through the probe with the descriptors' strides as given.
std::vector<float> RunProbe(const ProbeCase& c, const DeviceBuffer<uint16_t>& a, const DeviceBuffer<uint16_t>& b,
                            bool swap_desc) {
  DeviceBuffer<float> d(static_cast<size_t>(64) * c.n);
  cuda::WgmmaProbeParams p;
  p.a = a.bf16();
  p.b = b.bf16();
  p.d = d.get();
  p.n = c.n;
  p.trans_a = c.trans_a;
  p.trans_b = c.trans_b;
  p.a_lbo = c.a_lbo;
  p.a_sbo = c.a_sbo;
  p.b_lbo = c.b_lbo;
  p.b_sbo = c.b_sbo;
  p.a_sw128 = c.a_sw128;
  p.a_kstep = c.a_kstep;
  p.b_sw128 = c.b_sw128;
  p.b_kstep = c.b_kstep;
  p.desc_a_lbo = swap_desc ? c.a_sbo : c.a_lbo;
  p.desc_a_sbo = swap_desc ? c.a_lbo : c.a_sbo;
  p.desc_b_lbo = swap_desc ? c.b_sbo : c.b_lbo;
  p.desc_b_sbo = swap_desc ? c.b_lbo : c.b_sbo;
  std::vector<float> got;
  EXPECT_EQ(cuda::LaunchWgmmaProbe(p, nullptr), cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(d.Download(got), cudaSuccess);
  return got;
}

TEST_P(WgmmaGpuTest, MatchesCpuProduct) {
  MLA_SKIP_WITHOUT_GPU();
  const ProbeCase& c = GetParam();
  auto rng = gpu_test::CaseRng(static_cast<uint64_t>(c.n) * 7 + c.a_sbo + c.b_lbo + (c.trans_a ? 1 : 0));
  const std::vector<uint16_t> a_bits = gpu_test::RandomBf16(rng, 64 * 16, -1.0f, 1.0f);
  const std::vector<uint16_t> b_bits = gpu_test::RandomBf16(rng, 16 * static_cast<size_t>(c.n), -1.0f, 1.0f);
  const std::vector<float> a = gpu_test::ToFloats(a_bits), b = gpu_test::ToFloats(b_bits);
  std::vector<float> want(static_cast<size_t>(64) * c.n);
  for (int m = 0; m < 64; ++m) {
    for (int n = 0; n < c.n; ++n) {
      double sum = 0.0;
      for (int k = 0; k < 16; ++k) sum += static_cast<double>(a[m * 16 + k]) * b[k * c.n + n];
      want[m * c.n + n] = static_cast<float>(sum);
    }
  }
  DeviceBuffer<uint16_t> d_a(a_bits), d_b(b_bits);
  const std::vector<float> got = RunProbe(c, d_a, d_b, /*swap_desc=*/false);
  const ::testing::AssertionResult match = gpu_test::AllClose(got, want, 1e-5, 1e-4);
  if (!match) {
    // Diagnosis for the next change: does the other reading of LBO and SBO fit?
    const std::vector<float> swapped = RunProbe(c, d_a, d_b, /*swap_desc=*/true);
    ADD_FAILURE() << "wgmma.cuh's layout reading does not match the hardware; with LBO and SBO swapped in the "
                  << "descriptors the result " << (gpu_test::AllClose(swapped, want, 1e-5, 1e-4) ? "MATCHES" : "does not match either");
  }
  EXPECT_TRUE(match);
}

TEST(WgmmaProbeTest, RejectsBadShapes) {
  MLA_SKIP_WITHOUT_GPU();
  cuda::WgmmaProbeParams p;
  DeviceBuffer<uint16_t> buf(64 * 256);
  DeviceBuffer<float> d(64 * 256);
  p.a = buf.bf16();
  p.b = buf.bf16();
  p.d = d.get();
  p.n = 64;  // no probe for it
  EXPECT_EQ(cuda::LaunchWgmmaProbe(p, nullptr), cudaErrorInvalidValue);
  p.n = 16;
  p.trans_a = true;  // n16 takes A and B both MN-major or both K-major
  EXPECT_EQ(cuda::LaunchWgmmaProbe(p, nullptr), cudaErrorInvalidValue);
  p.trans_a = false;
  p.n = 32;
  p.b_sbo = 200;  // not a multiple of 16
  EXPECT_EQ(cuda::LaunchWgmmaProbe(p, nullptr), cudaErrorInvalidValue);
  p.b_sbo = 256;
  p.a_sbo = 64 * 1024;  // A alone beyond 227 KiB
  EXPECT_EQ(cuda::LaunchWgmmaProbe(p, nullptr), cudaErrorInvalidValue);
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, WgmmaGpuTest,
    ::testing::Values(
        // The decode kernel's score: Q and a cache stage as A and B, K-major,
        // 8 rows of 72 pieces apart (SBO 9216), pieces adjacent (LBO 128).
        ProbeCase{"decode_scores", 32, false, false, 128, 9216, 128, 9216},
        // Its P V: P as A (8 heads 1024 apart), V as MN-major B: 8 positions
        // (K) 9216 apart, 8 columns (N) 128 apart.
        ProbeCase{"decode_pv", 256, false, true, 128, 1024, 9216, 128},
        // The 16-head decode (mla_decode_wgmma16.cu): scores with a cache
        // stage as A and Q (16 heads) as B, both K-major; P V with V^T as
        // MN-major A (8 positions 9216 apart along K, 8 latent columns 128
        // apart along M) and P^T as MN-major B (8 positions 128 apart, 8 heads
        // 1024 apart).
        ProbeCase{"decode16_scores", 16, false, false, 128, 9216, 128, 9216},
        ProbeCase{"decode16_pv", 16, true, true, 9216, 128, 128, 1024},
        // Other strides: gaps between core matrices, K steps larger than M/N steps.
        ProbeCase{"kmajor_gaps", 32, false, false, 2048, 160, 1104, 272},
        ProbeCase{"mnmajor_gaps", 256, false, true, 1168, 144, 272, 4112},
        ProbeCase{"mnmajor_a_gaps", 16, true, true, 1296, 144, 160, 2064},
        // The 16-head decode staged by TMA (--copy bulk): A 128-byte swizzled
        // as TMA writes a 64 x 64 box (rows of 128 bytes, 8-row groups 1024
        // apart), the descriptors' LBO = SBO = 1024 as the kernel sets them;
        // scores at k-step 1 of the rows, P V with V^T MN-major.
        ProbeCase{"decode16_tma_scores", 16, false, false, 1024, 1024, 128, 9216, true, 1},
        ProbeCase{"decode16_tma_pv", 16, true, true, 1024, 1024, 128, 1024, true},
        // Swizzled with 8-row groups 2048 or 3072 apart and LBO 1024: says
        // which field steps the 8-row groups (wgmma.cuh reads SBO for both
        // majors; a failure that matches with LBO and SBO swapped says LBO).
        ProbeCase{"sw128_kmajor_gaps", 16, false, false, 1024, 2048, 128, 9216, true, 3},
        ProbeCase{"sw128_mnmajor_gaps", 16, true, true, 1024, 3072, 128, 1024, true},
        // The 64-head decode staged by TMA (--heads-per-block 64 --copy
        // bulk): B 128-byte swizzled. Scores: Q as A (unswizzled, K-major), a
        // warpgroup's 32 positions of the stage as K-major B at k-step 2 of
        // the rows; P V: P as A, V as MN-major B over 256 columns, 4 boxes
        // 8192 apart (LBO, CUTLASS's reading) and 8-row groups 1024 apart.
        ProbeCase{"decode64_tma_scores", 32, false, false, 128, 9216, 1024, 1024, false, 0, true, 2},
        ProbeCase{"decode64_tma_pv", 256, false, true, 128, 1024, 8192, 1024, false, 0, true},
        // MN-major swizzled B with the 64-column atoms 3072 and the 8-row
        // groups 2048 apart: says which field steps which.
        ProbeCase{"sw128_b_mnmajor_gaps", 256, false, true, 128, 1024, 3072, 2048, false, 0, true},
        ProbeCase{"sw128_b_kmajor_gaps", 32, false, false, 128, 9216, 1024, 3072, false, 0, true, 3}),
    [](const ::testing::TestParamInfo<ProbeCase>& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace mla
