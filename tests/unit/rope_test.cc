#include "kernels/cpu/rope.h"

#include <cmath>
#include <numbers>

#include "gtest/gtest.h"
#include "runtime/config.h"
#include "runtime/model.h"

namespace mla::cpu {
namespace {

RopeParams V3Rope() {
  RopeParams p;
  p.rope_dim = 64;
  p.theta = 10000.0;
  p.yarn = true;
  p.factor = 40.0;
  p.original_max_position_embeddings = 4096;
  p.beta_fast = 32.0;
  p.beta_slow = 1.0;
  return p;
}

TEST(RopeTest, YarnCorrectionRangeOfV3) {
  // DESIGN.md: V3 keeps pairs 0-10 unchanged and divides pairs 23-31 by 40.
  double lo, hi;
  YarnCorrectionRange(V3Rope(), &lo, &hi);
  EXPECT_EQ(lo, 10.0);
  EXPECT_EQ(hi, 23.0);
  std::vector<float> f = RopeInvFreq(V3Rope());
  ASSERT_EQ(f.size(), 32u);
  for (int i = 0; i <= 10; ++i) {
    EXPECT_FLOAT_EQ(f[i], static_cast<float>(std::pow(10000.0, -2.0 * i / 64))) << i;
  }
  for (int i = 23; i < 32; ++i) {
    EXPECT_FLOAT_EQ(f[i], static_cast<float>(std::pow(10000.0, -2.0 * i / 64) / 40.0)) << i;
  }
  // Inside the ramp: a blend, r = (i - 10) / 13.
  double base = std::pow(10000.0, -2.0 * 16 / 64), r = 6.0 / 13.0;
  EXPECT_NEAR(f[16], base * (1 - r) + base / 40.0 * r, 1e-9);
}

TEST(RopeTest, PlainFrequenciesWithoutYarn) {
  RopeParams p;
  p.rope_dim = 16;
  std::vector<float> f = RopeInvFreq(p);
  for (int i = 0; i < 8; ++i) EXPECT_FLOAT_EQ(f[i], static_cast<float>(std::pow(10000.0, -2.0 * i / 16)));
}

TEST(RopeTest, RotatesInterleavedPairs) {
  // Hand-computed: pair i of x rotated by pos * f_i.
  std::vector<float> f = {1.0f, 0.5f};
  float x[4] = {1.0f, 0.0f, 0.0f, 2.0f};
  ApplyRope(x, 4, 3, f.data(), 1.0f);
  EXPECT_NEAR(x[0], std::cos(3.0), 1e-6);
  EXPECT_NEAR(x[1], std::sin(3.0), 1e-6);
  EXPECT_NEAR(x[2], -2.0 * std::sin(1.5), 1e-6);
  EXPECT_NEAR(x[3], 2.0 * std::cos(1.5), 1e-6);
}

TEST(RopeTest, HalvesPairingDiffers) {
  std::vector<float> f = {1.0f, 0.5f};
  float a[4] = {1, 2, 3, 4}, b[4] = {1, 2, 3, 4};
  ApplyRope(a, 4, 5, f.data(), 1.0f, RopePairing::kInterleaved);
  ApplyRope(b, 4, 5, f.data(), 1.0f, RopePairing::kHalves);
  EXPECT_GT(std::abs(a[1] - b[1]), 0.1f);
}

TEST(RopeTest, PositionZeroIsIdentityAndScoresAreRelative) {
  std::vector<float> f = RopeInvFreq(V3Rope());
  std::vector<float> q(64), k(64);
  for (int i = 0; i < 64; ++i) {
    q[i] = std::sin(0.3f * i);
    k[i] = std::cos(0.7f * i);
  }
  std::vector<float> q0 = q;
  ApplyRope(q0.data(), 64, 0, f.data(), 1.0f);
  for (int i = 0; i < 64; ++i) EXPECT_FLOAT_EQ(q0[i], q[i]);
  // q.k depends only on the distance between the positions.
  auto score = [&](int pq, int pk) {
    std::vector<float> a = q, b = k;
    ApplyRope(a.data(), 64, pq, f.data(), 1.0f);
    ApplyRope(b.data(), 64, pk, f.data(), 1.0f);
    double s = 0;
    for (int i = 0; i < 64; ++i) s += a[i] * b[i];
    return s;
  };
  EXPECT_NEAR(score(10, 3), score(107, 100), 1e-3);
}

TEST(RopeTest, AttentionFactorFromConfig) {
  ModelConfig c;
  c.qk_rope_head_dim = 64;
  c.yarn = YarnScaling{40.0, 4096, 32.0, 1.0, 1.0, 1.0};
  EXPECT_DOUBLE_EQ(RopeParamsFor(c).attention_factor, 1.0);  // V3: mscale == mscale_all_dim
  c.yarn->mscale_all_dim = 0.0;
  EXPECT_NEAR(RopeParamsFor(c).attention_factor, 0.1 * std::log(40.0) + 1.0, 1e-12);
}

}  // namespace
}  // namespace mla::cpu
