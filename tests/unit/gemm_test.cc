#include "kernels/cpu/gemm.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace mla::cpu {
namespace {

std::vector<float> Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d;
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

TEST(GemmTest, MatchesReference) {
  const int64_t m = 13, k = 37, n = 29;
  std::vector<float> x = Random(m * k, 1), w = Random(n * k, 2), out(m * n);
  Linear(x.data(), k, m, k, w.data(), n, out.data(), n);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double ref = 0;
      for (int64_t t = 0; t < k; ++t) ref += double(x[i * k + t]) * w[j * k + t];
      EXPECT_NEAR(out[i * n + j], ref, 1e-4 * (1 + std::abs(ref)));
    }
  }
}

TEST(GemmTest, StridedInputAndOutput) {
  const int64_t m = 3, k = 5, n = 4, ldx = 9, ldo = 7;
  std::vector<float> x = Random(m * ldx, 3), w = Random(n * k, 4), out(m * ldo, -7.0f);
  Linear(x.data(), ldx, m, k, w.data(), n, out.data(), ldo);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < ldo; ++j) {
      if (j >= n) {
        EXPECT_EQ(out[i * ldo + j], -7.0f);  // untouched
        continue;
      }
      double ref = 0;
      for (int64_t t = 0; t < k; ++t) ref += double(x[i * ldx + t]) * w[j * k + t];
      EXPECT_NEAR(out[i * ldo + j], ref, 1e-4);
    }
  }
}

TEST(GemmTest, RowResultIndependentOfBatch) {
  // Bitwise: a row alone, and at every position of batches of many sizes.
  const int64_t k = 192, n = 320;
  std::vector<float> w = Random(n * k, 5), row = Random(k, 6), alone(n);
  Linear(row.data(), k, 1, k, w.data(), n, alone.data(), n);
  for (int64_t m : {2, 7, 8, 9, 17, 33}) {
    std::vector<float> x = Random(m * k, static_cast<uint32_t>(m)), out(m * n);
    for (int64_t pos : {int64_t{0}, m / 2, m - 1}) {
      std::vector<float> xx = x;
      std::copy(row.begin(), row.end(), xx.begin() + pos * k);
      Linear(xx.data(), k, m, k, w.data(), n, out.data(), n);
      for (int64_t j = 0; j < n; ++j) ASSERT_EQ(out[pos * n + j], alone[j]) << "m " << m << " pos " << pos;
    }
  }
}

}  // namespace
}  // namespace mla::cpu
