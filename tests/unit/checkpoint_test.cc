// Checkpoint: single-file and indexed directories, index validation, and
// ReadFloat32's conversions, FP8 block dequantisation and slicing. Expected values
// are exact (tolerance 0): every product below is representable in float32.
#include "runtime/checkpoint.h"

#include <sys/stat.h>

#include <cmath>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cpu/float_convert.h"
#include "tests/unit/safetensors_writer.h"

namespace mla {
namespace {

using test::TensorSpec;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

void ExpectError(const absl::Status& s, absl::StatusCode code,
                 const std::vector<std::string>& parts) {
  EXPECT_EQ(s.code(), code) << s;
  for (const std::string& p : parts) EXPECT_THAT(std::string(s.message()), HasSubstr(p));
}

constexpr int64_t kRows = 200, kCols = 300;  // above 128, not multiples of it
// Per-block scales of the [200, 300] FP8 weight: [ceil(200/128), ceil(300/128)] = [2, 3].
const std::vector<float> kScales = {0.5f, 2.0f, 3.0f, 0.25f, 4.0f, 1.5f};
const char* kFp8Name = "model.layers.0.mlp.down_proj.weight";
const char* kScaleName = "model.layers.0.mlp.down_proj.weight_scale_inv";

// FP8 bytes covering normals, subnormals and both signs, never NaN, with a few
// hand-placed codes whose decoded values are written out in the tests.
std::vector<uint8_t> Fp8Weight() {
  std::vector<uint8_t> w(kRows * kCols);
  for (int64_t r = 0; r < kRows; ++r) {
    for (int64_t c = 0; c < kCols; ++c) {
      uint8_t b = static_cast<uint8_t>((r * 31 + c * 7 + 3) % 256);
      w[r * kCols + c] = (b & 0x7f) == 0x7f ? 0x00 : b;
    }
  }
  w[0 * kCols + 0] = 0x38;      // 1.0, block (0, 0)
  w[127 * kCols + 127] = 0x40;  // 2.0, last element of block (0, 0)
  w[128 * kCols + 128] = 0xb8;  // -1.0, first element of block (1, 1)
  w[0 * kCols + 256] = 0x01;    // 2^-9, block (0, 2)
  w[199 * kCols + 299] = 0x7e;  // 448, last element, partial block (1, 2)
  return w;
}

// The reference: decode each byte, multiply by its block's scale.
float Fp8Expected(const std::vector<uint8_t>& w, int64_t r, int64_t c) {
  return cpu::Fp8E4M3ToFloat(w[r * kCols + c]) * kScales[(r / 128) * 3 + c / 128];
}

// i * scale - 8: exact in BF16 for the small n and power-of-two scales used here.
std::vector<float> Iota(size_t n, float scale) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<float>(i) * scale - 8.0f;
  return v;
}

class CheckpointTest : public ::testing::Test {
 protected:
  std::unique_ptr<Checkpoint> OpenOk() {
    auto ckpt = Checkpoint::Open(dir_.path());
    EXPECT_TRUE(ckpt.ok()) << ckpt.status();
    return ckpt.ok() ? std::move(*ckpt) : nullptr;
  }
  void WriteFp8(bool with_scale = true, std::vector<int64_t> scale_shape = {2, 3}) {
    std::vector<TensorSpec> tensors = {{kFp8Name, "F8_E4M3", {kRows, kCols}, Fp8Weight()}};
    if (with_scale) tensors.push_back({kScaleName, "F32", scale_shape, test::F32Bytes(kScales)});
    test::WriteSafetensors(dir_.File("model.safetensors"), tensors);
  }

  test::ScopedTempDir dir_;
};

// ---- opening ----

TEST_F(CheckpointTest, SingleFile) {
  test::WriteSafetensors(
      dir_.File("model.safetensors"),
      {{"b", "F32", {2}, test::F32Bytes({1, 2})}, {"a", "BF16", {1}, test::Bf16Bytes({3})}});
  auto ckpt = OpenOk();
  ASSERT_NE(ckpt, nullptr);
  EXPECT_EQ(ckpt->dir(), dir_.path());
  EXPECT_TRUE(ckpt->Has("a"));
  EXPECT_FALSE(ckpt->Has("c"));
  EXPECT_THAT(ckpt->TensorNames(), ElementsAre("a", "b"));
  auto view = ckpt->Get("b");
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_EQ((*view)->shape, (std::vector<int64_t>{2}));
}

TEST_F(CheckpointTest, NeitherFileIsNotFound) {
  ExpectError(Checkpoint::Open(dir_.path()).status(), absl::StatusCode::kNotFound,
              {dir_.path(), "model.safetensors nor model.safetensors.index.json"});
  ExpectError(Checkpoint::Open(dir_.File("absent")).status(), absl::StatusCode::kNotFound,
              {dir_.File("absent"), "does not exist"});
}

TEST_F(CheckpointTest, IndexOverTwoFiles) {
  // The FP8 weight and its scale live in different shards, as in real releases.
  test::WriteSafetensors(dir_.File("model-00001-of-00002.safetensors"),
                         {{"x", "F32", {2}, test::F32Bytes({1, 2})},
                          {kFp8Name, "F8_E4M3", {kRows, kCols}, Fp8Weight()}});
  test::WriteSafetensors(dir_.File("model-00002-of-00002.safetensors"),
                         {{"y", "BF16", {3}, test::Bf16Bytes({4, 5, 6})},
                          {kScaleName, "F32", {2, 3}, test::F32Bytes(kScales)}});
  test::WriteIndex(dir_.File("model.safetensors.index.json"),
                   {{"x", "model-00001-of-00002.safetensors"},
                    {kFp8Name, "model-00001-of-00002.safetensors"},
                    {"y", "model-00002-of-00002.safetensors"},
                    {kScaleName, "model-00002-of-00002.safetensors"}});
  auto ckpt = OpenOk();
  ASSERT_NE(ckpt, nullptr);
  EXPECT_THAT(ckpt->TensorNames(), ElementsAre(kFp8Name, kScaleName, "x", "y"));
  auto x = ckpt->ReadFloat32("x", {2});
  ASSERT_TRUE(x.ok()) << x.status();
  EXPECT_THAT(*x, ElementsAre(1.0f, 2.0f));
  auto y = ckpt->ReadFloat32("y", {3});
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_THAT(*y, ElementsAre(4.0f, 5.0f, 6.0f));
  auto w = ckpt->ReadFloat32(kFp8Name, {kRows, kCols});
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ((*w)[199 * kCols + 299], 448.0f * 1.5f);
}

TEST_F(CheckpointTest, IndexNamesMissingFile) {
  test::WriteSafetensors(dir_.File("a.safetensors"), {{"x", "F32", {1}, test::F32Bytes({1})}});
  test::WriteIndex(dir_.File("model.safetensors.index.json"),
                   {{"x", "a.safetensors"}, {"y", "gone.safetensors"}});
  ExpectError(Checkpoint::Open(dir_.path()).status(), absl::StatusCode::kNotFound,
              {dir_.File("model.safetensors.index.json"), dir_.File("gone.safetensors"),
               "tensor 'y'", "does not exist"});
}

TEST_F(CheckpointTest, IndexNamesDirectory) {
  ASSERT_EQ(::mkdir(dir_.File("sub").c_str(), 0700), 0);
  test::WriteIndex(dir_.File("model.safetensors.index.json"), {{"y", "sub"}});
  ExpectError(Checkpoint::Open(dir_.path()).status(), absl::StatusCode::kInvalidArgument,
              {dir_.File("model.safetensors.index.json"), dir_.File("sub"), "tensor 'y'",
               "not a regular file"});
}

TEST_F(CheckpointTest, IndexPlacesTensorInWrongFile) {
  test::WriteSafetensors(dir_.File("a.safetensors"), {{"x", "F32", {1}, test::F32Bytes({1})}});
  test::WriteSafetensors(dir_.File("b.safetensors"), {{"y", "F32", {1}, test::F32Bytes({2})}});
  test::WriteIndex(dir_.File("model.safetensors.index.json"),
                   {{"x", "a.safetensors"}, {"y", "a.safetensors"}});
  ExpectError(Checkpoint::Open(dir_.path()).status(), absl::StatusCode::kInvalidArgument,
              {dir_.File("model.safetensors.index.json"), "tensor 'y'", dir_.File("a.safetensors"),
               "does not hold it"});
}

TEST_F(CheckpointTest, MalformedIndex) {
  const std::string index = dir_.File("model.safetensors.index.json");
  for (auto [text, expected] : {std::pair{"{\"weight_map\": ", "not valid JSON"},
                                {"[]", "\"weight_map\" object"},
                                {"{\"metadata\": {}}", "\"weight_map\" object"},
                                {"{\"weight_map\": [1]}", "must be an object, got array"},
                                {"{\"weight_map\": {\"x\": 3}}", "tensor 'x' must be a file name"},
                                {"{\"weight_map\": {\"x\": \"../a.safetensors\"}}",
                                 "'../a.safetensors', expected a file name inside"}}) {
    test::WriteFile(index, text);
    ExpectError(Checkpoint::Open(dir_.path()).status(), absl::StatusCode::kInvalidArgument,
                {index, expected});
  }
}

TEST_F(CheckpointTest, ShardErrorsNameTheShard) {
  test::WriteRawSafetensors(dir_.File("a.safetensors"), "{bad");
  test::WriteIndex(dir_.File("model.safetensors.index.json"), {{"x", "a.safetensors"}});
  ExpectError(Checkpoint::Open(dir_.path()).status(), absl::StatusCode::kInvalidArgument,
              {dir_.File("a.safetensors"), "not valid JSON"});
}

// ---- lookups and shapes ----

TEST_F(CheckpointTest, MissingTensor) {
  test::WriteSafetensors(dir_.File("model.safetensors"), {{"x", "F32", {1}, test::F32Bytes({1})}});
  auto ckpt = OpenOk();
  ASSERT_NE(ckpt, nullptr);
  const std::string expected = absl::StrCat("checkpoint ", dir_.path(), ": missing tensor 'nope'");
  EXPECT_EQ(ckpt->Get("nope").status(), absl::NotFoundError(expected));
  EXPECT_EQ(ckpt->ReadFloat32("nope", {1}).status(), absl::NotFoundError(expected));
}

TEST_F(CheckpointTest, ShapeMismatchNamesBothShapes) {
  test::WriteSafetensors(
      dir_.File("model.safetensors"),
      {{"w", "BF16", {320, 256}, test::Bf16Bytes(std::vector<float>(320 * 256))}});
  auto ckpt = OpenOk();
  ASSERT_NE(ckpt, nullptr);
  ExpectError(
      ckpt->ReadFloat32("w", {256, 320}).status(), absl::StatusCode::kInvalidArgument,
      {"tensor 'w'", dir_.File("model.safetensors"), "shape [320, 256], expected [256, 320]"});
  ExpectError(ckpt->ReadFloat32("w", {320 * 256}).status(), absl::StatusCode::kInvalidArgument,
              {"tensor 'w'", "shape [320, 256], expected [81920]"});
  ExpectError(ckpt->ReadFloat32("w", {1, 320, 256}).status(), absl::StatusCode::kInvalidArgument,
              {"tensor 'w'", "1-D or 2-D", "[1, 320, 256]"});
}

// ---- conversions ----

TEST_F(CheckpointTest, ConvertsF32Bf16F16) {
  const std::vector<float> values = {1.5f, -2.0f, 0.0078125f, 3.0f, -65280.0f, 0.0f};
  test::WriteSafetensors(
      dir_.File("model.safetensors"),
      {{"f32", "F32", {2, 3}, test::F32Bytes({1.5f, -2.0f, 1e-30f, 3.1415927f, 1e30f, -0.0f})},
       {"bf16", "BF16", {2, 3}, test::Bf16Bytes(values)},
       // 1, -2, 2^-24 (smallest subnormal), 65504 (max), 1/3 rounded, 2^-14 (smallest normal)
       {"f16", "F16", {6}, test::U16Bytes({0x3c00, 0xc000, 0x0001, 0x7bff, 0x3555, 0x0400})}});
  auto ckpt = OpenOk();
  ASSERT_NE(ckpt, nullptr);
  auto f32 = ckpt->ReadFloat32("f32", {2, 3});
  ASSERT_TRUE(f32.ok()) << f32.status();
  EXPECT_THAT(*f32, ElementsAre(1.5f, -2.0f, 1e-30f, 3.1415927f, 1e30f, -0.0f));
  auto bf16 = ckpt->ReadFloat32("bf16", {2, 3});
  ASSERT_TRUE(bf16.ok()) << bf16.status();
  EXPECT_EQ(*bf16, values);
  auto f16 = ckpt->ReadFloat32("f16", {6});
  ASSERT_TRUE(f16.ok()) << f16.status();
  EXPECT_THAT(*f16, ElementsAre(1.0f, -2.0f, std::ldexp(1.0f, -24), 65504.0f, 0.333251953125f,
                                std::ldexp(1.0f, -14)));
}

// ---- FP8 ----

TEST_F(CheckpointTest, Fp8DequantisesWithPartialEdgeBlocks) {
  WriteFp8();
  auto ckpt = OpenOk();
  ASSERT_NE(ckpt, nullptr);
  auto w = ckpt->ReadFloat32(kFp8Name, {kRows, kCols});
  ASSERT_TRUE(w.ok()) << w.status();
  ASSERT_EQ(w->size(), static_cast<size_t>(kRows * kCols));
  // Hand-placed codes times their block's scale.
  EXPECT_EQ((*w)[0], 1.0f * 0.5f);
  EXPECT_EQ((*w)[127 * kCols + 127], 2.0f * 0.5f);
  EXPECT_EQ((*w)[128 * kCols + 128], -1.0f * 4.0f);
  EXPECT_EQ((*w)[0 * kCols + 256], std::ldexp(1.0f, -9) * 3.0f);
  EXPECT_EQ((*w)[199 * kCols + 299], 448.0f * 1.5f);
  const std::vector<uint8_t> bytes = Fp8Weight();
  for (int64_t r = 0; r < kRows; ++r) {
    for (int64_t c = 0; c < kCols; ++c) {
      ASSERT_EQ((*w)[r * kCols + c], Fp8Expected(bytes, r, c)) << "at [" << r << ", " << c << "]";
    }
  }
}

TEST_F(CheckpointTest, Fp8AcceptsBf16ScalesAndOtherBlockSizes) {
  // [5, 7] weight in 4x4 blocks: scales [2, 2].
  std::vector<uint8_t> w(35, 0x38);  // all 1.0
  test::WriteSafetensors(dir_.File("model.safetensors"),
                         {{"w", "F8_E4M3", {5, 7}, w},
                          {"w_scale_inv", "BF16", {2, 2}, test::Bf16Bytes({1, 2, 4, 8})}});
  auto ckpt = OpenOk();
  ASSERT_NE(ckpt, nullptr);
  auto out = ckpt->ReadFloat32("w", {5, 7}, nullptr, /*fp8_block=*/4);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ((*out)[0 * 7 + 3], 1.0f);
  EXPECT_EQ((*out)[0 * 7 + 4], 2.0f);
  EXPECT_EQ((*out)[4 * 7 + 0], 4.0f);
  EXPECT_EQ((*out)[4 * 7 + 6], 8.0f);
  ExpectError(ckpt->ReadFloat32("w", {5, 7}, nullptr, 0).status(),
              absl::StatusCode::kInvalidArgument, {"tensor 'w'", "fp8_block 0, expected > 0"});
  // With the default 128 blocks the same scale tensor has the wrong shape.
  ExpectError(ckpt->ReadFloat32("w", {5, 7}).status(), absl::StatusCode::kInvalidArgument,
              {"'w_scale_inv'", "[2, 2], expected [1, 1]", "tensor 'w'"});
}

TEST_F(CheckpointTest, Fp8MissingScale) {
  WriteFp8(/*with_scale=*/false);
  auto ckpt = OpenOk();
  ASSERT_NE(ckpt, nullptr);
  ExpectError(ckpt->ReadFloat32(kFp8Name, {kRows, kCols}).status(), absl::StatusCode::kNotFound,
              {absl::StrCat("'", kFp8Name, "'"), absl::StrCat("'", kScaleName, "'"), "missing"});
}

TEST_F(CheckpointTest, Fp8WrongScaleShape) {
  WriteFp8(/*with_scale=*/true, /*scale_shape=*/{3, 2});
  auto ckpt = OpenOk();
  ASSERT_NE(ckpt, nullptr);
  ExpectError(ckpt->ReadFloat32(kFp8Name, {kRows, kCols}).status(),
              absl::StatusCode::kInvalidArgument,
              {absl::StrCat("'", kFp8Name, "'"), absl::StrCat("'", kScaleName, "'"),
               "shape [3, 2], expected [2, 3]", "[200, 300]"});
}

TEST_F(CheckpointTest, Fp8NanIsAnError) {
  std::vector<uint8_t> w(12, 0x38);
  w[1 * 4 + 2] = 0xff;  // NaN (negative sign)
  test::WriteSafetensors(
      dir_.File("model.safetensors"),
      {{"w", "F8_E4M3", {3, 4}, w}, {"w_scale_inv", "F32", {1, 1}, test::F32Bytes({1})}});
  auto ckpt = OpenOk();
  ASSERT_NE(ckpt, nullptr);
  ExpectError(ckpt->ReadFloat32("w", {3, 4}).status(), absl::StatusCode::kInvalidArgument,
              {"tensor 'w'", "NaN", "0xff", "[1, 2]"});
}

TEST_F(CheckpointTest, Fp8NonFiniteScaleIsAnError) {
  test::WriteSafetensors(dir_.File("model.safetensors"),
                         {{"w", "F8_E4M3", {2, 2}, {0x38, 0x38, 0x38, 0x38}},
                          {"w_scale_inv", "F32", {1, 1}, test::F32Bytes({INFINITY})}});
  auto ckpt = OpenOk();
  ASSERT_NE(ckpt, nullptr);
  ExpectError(ckpt->ReadFloat32("w", {2, 2}).status(), absl::StatusCode::kInvalidArgument,
              {"'w_scale_inv'", "inf", "expected finite"});
}

// ---- slices ----

TEST_F(CheckpointTest, Fp8SliceUsesFullTensorBlockCoordinates) {
  WriteFp8();
  auto ckpt = OpenOk();
  ASSERT_NE(ckpt, nullptr);
  const Slice slice{100, 180, 120, 260};  // crosses row block 0|1 and column blocks 0|1|2
  auto part = ckpt->ReadFloat32(kFp8Name, {kRows, kCols}, &slice);
  ASSERT_TRUE(part.ok()) << part.status();
  ASSERT_EQ(part->size(), 80u * 140u);
  const std::vector<uint8_t> bytes = Fp8Weight();
  for (int64_t r = slice.row_begin; r < slice.row_end; ++r) {
    for (int64_t c = slice.col_begin; c < slice.col_end; ++c) {
      ASSERT_EQ((*part)[(r - 100) * 140 + (c - 120)], Fp8Expected(bytes, r, c))
          << "at [" << r << ", " << c << "]";
    }
  }
  EXPECT_EQ((*part)[(128 - 100) * 140 + (128 - 120)], -1.0f * 4.0f);
}

TEST_F(CheckpointTest, Bf16SliceAndOneDimensionalSlice) {
  const std::vector<float> values = Iota(6 * 5, 0.5f);  // [6, 5]
  test::WriteSafetensors(dir_.File("model.safetensors"),
                         {{"w", "BF16", {6, 5}, test::Bf16Bytes(values)},
                          {"v", "BF16", {10}, test::Bf16Bytes(Iota(10, 1.0f))}});
  auto ckpt = OpenOk();
  ASSERT_NE(ckpt, nullptr);
  const Slice slice{2, 5, 1, 3};
  auto part = ckpt->ReadFloat32("w", {6, 5}, &slice);
  ASSERT_TRUE(part.ok()) << part.status();
  EXPECT_EQ(*part, (std::vector<float>{values[11], values[12], values[16], values[17], values[21],
                                       values[22]}));
  const Slice rows{3, 7, 0, 0};  // columns ignored for 1-D tensors
  auto v = ckpt->ReadFloat32("v", {10}, &rows);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_THAT(*v, ElementsAre(-5.0f, -4.0f, -3.0f, -2.0f));
  const Slice empty{4, 4, 0, 5};
  auto none = ckpt->ReadFloat32("w", {6, 5}, &empty);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_TRUE(none->empty());
}

TEST_F(CheckpointTest, SliceOutOfRange) {
  test::WriteSafetensors(dir_.File("model.safetensors"),
                         {{"w", "F32", {4, 3}, test::F32Bytes(std::vector<float>(12))}});
  auto ckpt = OpenOk();
  ASSERT_NE(ckpt, nullptr);
  for (const Slice& bad : {Slice{0, 5, 0, 3}, Slice{-1, 2, 0, 3}, Slice{3, 2, 0, 3},
                           Slice{0, 4, 2, 4}, Slice{0, 4, 2, 1}}) {
    ExpectError(ckpt->ReadFloat32("w", {4, 3}, &bad).status(), absl::StatusCode::kInvalidArgument,
                {"tensor 'w'",
                 absl::StrCat("slice rows [", bad.row_begin, ", ", bad.row_end, ") x cols [",
                              bad.col_begin, ", ", bad.col_end, ")"),
                 "outside shape [4, 3]"});
  }
}

}  // namespace
}  // namespace mla
