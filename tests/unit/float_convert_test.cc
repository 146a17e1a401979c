// Scalar storage conversions: FP8 E4M3 ("e4m3fn") decoding, BF16 round-to-nearest-
// even encoding, IEEE binary16 decoding. Expected values are exact.
#include "kernels/cpu/float_convert.h"

#include <cmath>
#include <cstdint>
#include <cstring>

#include "gtest/gtest.h"

namespace mla::cpu {
namespace {

float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

TEST(Fp8E4M3Test, KnownValues) {
  EXPECT_EQ(Fp8E4M3ToFloat(0x38), 1.0f);
  EXPECT_EQ(Fp8E4M3ToFloat(0xb8), -1.0f);
  EXPECT_EQ(Fp8E4M3ToFloat(0x7e), 448.0f);  // largest finite
  EXPECT_EQ(Fp8E4M3ToFloat(0xfe), -448.0f);
  EXPECT_EQ(Fp8E4M3ToFloat(0x01), std::ldexp(1.0f, -9));      // smallest subnormal
  EXPECT_EQ(Fp8E4M3ToFloat(0x07), 7 * std::ldexp(1.0f, -9));  // largest subnormal
  EXPECT_EQ(Fp8E4M3ToFloat(0x08), std::ldexp(1.0f, -6));      // smallest normal
  EXPECT_EQ(Fp8E4M3ToFloat(0x3c), 1.5f);
  EXPECT_EQ(Fp8E4M3ToFloat(0x40), 2.0f);
  EXPECT_EQ(Fp8E4M3ToFloat(0x77), 240.0f);  // exponent 14, mantissa 7: 1.875 * 2^7
  EXPECT_EQ(Fp8E4M3ToFloat(0x78), 256.0f);  // exponent 15 is finite in e4m3fn
  EXPECT_EQ(Fp8E4M3ToFloat(0x00), 0.0f);
  EXPECT_TRUE(std::signbit(Fp8E4M3ToFloat(0x80)));
  EXPECT_EQ(Fp8E4M3ToFloat(0x80), 0.0f);
}

TEST(Fp8E4M3Test, OnlyAllOnesIsNan) {
  EXPECT_TRUE(std::isnan(Fp8E4M3ToFloat(0x7f)));
  EXPECT_TRUE(std::isnan(Fp8E4M3ToFloat(0xff)));
  for (int b = 0; b < 256; ++b) {
    if ((b & 0x7f) == 0x7f) continue;
    EXPECT_TRUE(std::isfinite(Fp8E4M3ToFloat(static_cast<uint8_t>(b)))) << "byte " << b;
  }
}

// Positive codes increase strictly with their bit pattern; negatives mirror them.
TEST(Fp8E4M3Test, MonotonicAndSymmetric) {
  for (int b = 1; b < 0x7f; ++b) {
    EXPECT_LT(Fp8E4M3ToFloat(static_cast<uint8_t>(b - 1)), Fp8E4M3ToFloat(static_cast<uint8_t>(b)))
        << "byte " << b;
    EXPECT_EQ(Fp8E4M3ToFloat(static_cast<uint8_t>(b | 0x80)),
              -Fp8E4M3ToFloat(static_cast<uint8_t>(b)));
  }
}

TEST(Bf16Test, DecodesKnownValues) {
  EXPECT_EQ(Bf16ToFloat(0x3f80), 1.0f);
  EXPECT_EQ(Bf16ToFloat(0xc000), -2.0f);
  EXPECT_EQ(Bf16ToFloat(0x3fc0), 1.5f);
  EXPECT_EQ(Bf16ToFloat(0x7f80), INFINITY);
  EXPECT_TRUE(std::isnan(Bf16ToFloat(0x7fc0)));
}

TEST(Bf16Test, RoundsToNearestEven) {
  // Exactly representable values are unchanged.
  EXPECT_EQ(FloatToBf16(1.0f), 0x3f80);
  EXPECT_EQ(FloatToBf16(-2.0f), 0xc000);
  // Below, at and above the halfway point between 0x3f80 and 0x3f81.
  EXPECT_EQ(FloatToBf16(FromBits(0x3f807fff)), 0x3f80);
  EXPECT_EQ(FloatToBf16(FromBits(0x3f808000)), 0x3f80);  // tie: down to even 0x3f80
  EXPECT_EQ(FloatToBf16(FromBits(0x3f808001)), 0x3f81);
  EXPECT_EQ(FloatToBf16(FromBits(0x3f818000)), 0x3f82);  // tie: up to even 0x3f82
  EXPECT_EQ(FloatToBf16(FromBits(0xbf818000)), 0xbf82);  // sign does not matter
  // Carry into the exponent, and overflow to infinity as torch does.
  EXPECT_EQ(FloatToBf16(FromBits(0x3fffffff)), 0x4000);
  EXPECT_EQ(FloatToBf16(FromBits(0x7f7fffff)), 0x7f80);
  EXPECT_EQ(FloatToBf16(INFINITY), 0x7f80);
  EXPECT_EQ(FloatToBf16(-INFINITY), 0xff80);
}

TEST(Bf16Test, NanStaysNan) {
  EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(NAN))));
  // A NaN whose payload lives only in the low 16 bits must not become infinity.
  EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(FromBits(0x7f800001)))));
}

TEST(Bf16Test, EveryNonNanPatternRoundTrips) {
  for (uint32_t b = 0; b < 0x10000; ++b) {
    const float f = Bf16ToFloat(static_cast<uint16_t>(b));
    if (std::isnan(f)) continue;
    ASSERT_EQ(FloatToBf16(f), b) << "bits " << b;
  }
}

TEST(HalfTest, KnownValues) {
  EXPECT_EQ(HalfToFloat(0x3c00), 1.0f);
  EXPECT_EQ(HalfToFloat(0xc000), -2.0f);
  EXPECT_EQ(HalfToFloat(0x3555), 0.333251953125f);
  EXPECT_EQ(HalfToFloat(0x7bff), 65504.0f);               // largest finite
  EXPECT_EQ(HalfToFloat(0x0400), std::ldexp(1.0f, -14));  // smallest normal
  EXPECT_EQ(HalfToFloat(0x7c00), INFINITY);
  EXPECT_EQ(HalfToFloat(0xfc00), -INFINITY);
  EXPECT_TRUE(std::isnan(HalfToFloat(0x7e00)));
  EXPECT_TRUE(std::isnan(HalfToFloat(0x7c01)));
  EXPECT_TRUE(std::signbit(HalfToFloat(0x8000)));
  EXPECT_EQ(HalfToFloat(0x8000), 0.0f);
}

TEST(HalfTest, Subnormals) {
  EXPECT_EQ(HalfToFloat(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(HalfToFloat(0x8001), -std::ldexp(1.0f, -24));
  EXPECT_EQ(HalfToFloat(0x0200), std::ldexp(1.0f, -15));
  EXPECT_EQ(HalfToFloat(0x03ff), 1023 * std::ldexp(1.0f, -24));  // largest subnormal
}

}  // namespace
}  // namespace mla::cpu
