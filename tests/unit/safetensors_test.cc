// SafetensorsFile: round trips of every dtype, and one test per rejected layout,
// each pinning the code and that the message names the file, the tensor and the
// expected value. Runs under AddressSanitizer: a read outside the mapping fails.
#include "runtime/safetensors.h"

#include <fstream>
#include <iterator>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/safetensors_writer.h"

namespace mla {
namespace {

using test::TensorSpec;
using ::testing::HasSubstr;

void ExpectError(const absl::Status& s, absl::StatusCode code,
                 const std::vector<std::string>& parts) {
  EXPECT_EQ(s.code(), code) << s;
  for (const std::string& p : parts) EXPECT_THAT(std::string(s.message()), HasSubstr(p));
}

std::vector<uint8_t> Pattern(size_t n) {  // distinct-ish bytes, never all equal
  std::vector<uint8_t> b(n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(i * 37 + 11);
  return b;
}

class SafetensorsTest : public ::testing::Test {
 protected:
  absl::Status OpenRaw(std::string_view header, std::string_view data = {}) {
    test::WriteRawSafetensors(path_, header, data);
    return SafetensorsFile::Open(path_).status();
  }

  test::ScopedTempDir dir_;
  const std::string path_ = dir_.File("model.safetensors");
};

// ---- dtypes ----

TEST(DTypeTest, ParsesSupportedNamesAndSizes) {
  for (auto [name, dtype, size] : {std::tuple{"F32", DType::kF32, 4},
                                   {"F16", DType::kF16, 2},
                                   {"BF16", DType::kBF16, 2},
                                   {"F8_E4M3", DType::kF8E4M3, 1}}) {
    absl::StatusOr<DType> parsed = ParseDType(name);
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, dtype);
    EXPECT_EQ(DTypeSize(dtype), static_cast<size_t>(size));
    EXPECT_EQ(DTypeName(dtype), name);
  }
}

TEST(DTypeTest, RejectsOthersListingSupported) {
  for (const char* name : {"F64", "I8", "bf16", ""}) {
    ExpectError(ParseDType(name).status(), absl::StatusCode::kInvalidArgument,
                {absl::StrCat("\"", name, "\""), "F32, F16, BF16, F8_E4M3"});
  }
}

// ---- well-formed files ----

class RoundTripTest : public SafetensorsTest,
                      public ::testing::WithParamInterface<std::pair<const char*, size_t>> {};

TEST_P(RoundTripTest, BytesShapeAndDtypeSurvive) {
  const auto [dtype_name, size] = GetParam();
  const std::vector<uint8_t> bytes = Pattern(2 * 3 * size);
  test::WriteSafetensors(
      path_, {{"a.weight", dtype_name, {2, 3}, bytes}, {"b", dtype_name, {3}, Pattern(3 * size)}});
  auto file = SafetensorsFile::Open(path_);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->path(), path_);
  const TensorView* t = (*file)->Find("a.weight");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->name, "a.weight");
  EXPECT_EQ(DTypeName(t->dtype), dtype_name);
  EXPECT_EQ(t->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(t->numel(), 6);
  ASSERT_EQ(t->nbytes, bytes.size());
  EXPECT_EQ(std::vector<uint8_t>(t->data, t->data + t->nbytes), bytes);
  EXPECT_EQ((*file)->Find("b")->nbytes, 3 * size);
}

INSTANTIATE_TEST_SUITE_P(AllDtypes, RoundTripTest,
                         ::testing::Values(std::pair{"F32", size_t{4}}, std::pair{"F16", size_t{2}},
                                           std::pair{"BF16", size_t{2}},
                                           std::pair{"F8_E4M3", size_t{1}}));

TEST_F(SafetensorsTest, TensorsSortedFindAbsentAndMetadata) {
  test::WriteSafetensors(path_, {{"z", "F32", {1}, Pattern(4)}, {"a", "F32", {1}, Pattern(4)}},
                         {{"format", "pt"}});
  auto file = SafetensorsFile::Open(path_);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ((*file)->tensors().size(), 2u);
  EXPECT_EQ((*file)->tensors()[0].name, "a");
  EXPECT_EQ((*file)->tensors()[1].name, "z");
  EXPECT_EQ((*file)->Find("m"), nullptr);
  EXPECT_EQ((*file)->Find(""), nullptr);
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
}

TEST_F(SafetensorsTest, ZeroByteAndScalarTensorsAllowed) {
  test::WriteSafetensors(path_, {{"empty", "BF16", {0, 4}, {}},
                                 {"scalar", "F32", {}, Pattern(4)},
                                 {"empty_at_end", "F8_E4M3", {7, 0}, {}}});
  auto file = SafetensorsFile::Open(path_);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->Find("empty")->nbytes, 0u);
  EXPECT_EQ((*file)->Find("empty")->numel(), 0);
  EXPECT_EQ((*file)->Find("scalar")->numel(), 1);
  EXPECT_EQ((*file)->Find("empty_at_end")->numel(), 0);
}

TEST_F(SafetensorsTest, EmptyDataRegionAllowed) {
  ASSERT_TRUE(OpenRaw("{}").ok());
  ASSERT_TRUE(OpenRaw(R"({"__metadata__": {"format": "pt"}})").ok());
  EXPECT_TRUE(OpenRaw(R"({"e": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}})").ok());
}

TEST_F(SafetensorsTest, AdjacentRangesAndEmptyTensorInsideAnotherAreNotOverlaps) {
  EXPECT_TRUE(OpenRaw(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                          "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
                          "e": {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]}})",
                      std::string(16, 'x'))
                  .ok());
}

// ---- file-level failures ----

TEST_F(SafetensorsTest, MissingFileIsNotFound) {
  ExpectError(SafetensorsFile::Open(dir_.File("absent.safetensors")).status(),
              absl::StatusCode::kNotFound, {dir_.File("absent.safetensors")});
}

TEST_F(SafetensorsTest, DirectoryIsNotARegularFile) {
  ExpectError(SafetensorsFile::Open(dir_.path()).status(), absl::StatusCode::kInvalidArgument,
              {dir_.path(), "not a regular file"});
}

TEST_F(SafetensorsTest, FileShorterThanLengthPrefix) {
  for (size_t n : {0, 1, 7}) {
    test::WriteFile(path_, std::string(n, '\0'));
    ExpectError(SafetensorsFile::Open(path_).status(), absl::StatusCode::kInvalidArgument,
                {path_, absl::StrCat("file is ", n, " bytes"), "8-byte"});
  }
}

TEST_F(SafetensorsTest, HugeHeaderLength) {
  test::WriteRawSafetensors(path_, uint64_t{1} << 63, "{}", "");
  ExpectError(SafetensorsFile::Open(path_).status(), absl::StatusCode::kInvalidArgument,
              {path_, "header length 9223372036854775808", "limit of 100000000 bytes"});
}

TEST_F(SafetensorsTest, HeaderLengthBeyondFile) {
  test::WriteRawSafetensors(path_, 100, "{}", "abcd");
  ExpectError(SafetensorsFile::Open(path_).status(), absl::StatusCode::kInvalidArgument,
              {path_, "header length 100", "(6 bytes follow"});
}

TEST_F(SafetensorsTest, GarbageJson) {
  ExpectError(OpenRaw("{not json"), absl::StatusCode::kInvalidArgument, {path_, "not valid JSON"});
  ExpectError(OpenRaw(""), absl::StatusCode::kInvalidArgument, {path_, "not valid JSON"});
  ExpectError(OpenRaw("{\"a\": \"\xff\xfe\"}"), absl::StatusCode::kInvalidArgument,
              {path_, "not valid JSON"});
}

TEST_F(SafetensorsTest, HeaderNotAnObject) {
  ExpectError(OpenRaw("[1, 2]"), absl::StatusCode::kInvalidArgument,
              {path_, "must be a JSON object", "array"});
}

TEST_F(SafetensorsTest, MetadataNotStrings) {
  ExpectError(OpenRaw(R"({"__metadata__": {"format": 1}})"), absl::StatusCode::kInvalidArgument,
              {path_, "__metadata__", "'format'", "must be a string"});
  ExpectError(OpenRaw(R"({"__metadata__": [1]})"), absl::StatusCode::kInvalidArgument,
              {path_, "__metadata__", "must be an object"});
}

// Nesting deeper than any stack could recurse over must fail cleanly, not crash.
TEST_F(SafetensorsTest, DeeplyNestedShape) {
  const std::string deep = std::string(200000, '[') + std::string(200000, ']');
  ExpectError(OpenRaw(R"({"w": {"dtype": "F32", "data_offsets": [0, 0], "shape": )" + deep + "}}"),
              absl::StatusCode::kInvalidArgument, {path_, "tensor 'w'", "got array"});
}

// ---- entry-level failures ----

TEST_F(SafetensorsTest, EntryNotAnObject) {
  ExpectError(OpenRaw(R"({"w": 5})"), absl::StatusCode::kInvalidArgument,
              {path_, "tensor 'w'", "must be an object", "number 5"});
}

TEST_F(SafetensorsTest, MissingKeys) {
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    std::string entry = R"({"dtype": "F32", "shape": [1], "data_offsets": [0, 4]})";
    const std::string quoted = absl::StrCat("\"", key, "\"");
    entry.replace(entry.find(quoted), quoted.size(), "\"other\"");
    ExpectError(OpenRaw(absl::StrCat(R"({"w": )", entry, "}"), "abcd"),
                absl::StatusCode::kInvalidArgument,
                {path_, "tensor 'w'", absl::StrCat("missing key ", quoted)});
  }
}

TEST_F(SafetensorsTest, WrongJsonTypes) {
  ExpectError(OpenRaw(R"({"w": {"dtype": 4, "shape": [1], "data_offsets": [0, 4]}})", "abcd"),
              absl::StatusCode::kInvalidArgument,
              {path_, "tensor 'w'", "\"dtype\" must be a string"});
  ExpectError(OpenRaw(R"({"w": {"dtype": "F32", "shape": "1", "data_offsets": [0, 4]}})", "abcd"),
              absl::StatusCode::kInvalidArgument,
              {path_, "tensor 'w'", "\"shape\" must be an array of integers", "string \"1\""});
  ExpectError(OpenRaw(R"({"w": {"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]}})", "abcd"),
              absl::StatusCode::kInvalidArgument,
              {path_, "tensor 'w'", "\"shape\" must hold integers", "number 1.0"});
  ExpectError(OpenRaw(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0]}})", "abcd"),
              absl::StatusCode::kInvalidArgument,
              {path_, "tensor 'w'", "[begin, end]", "an array of 1 elements"});
  ExpectError(OpenRaw(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, "4"]}})", "abcd"),
              absl::StatusCode::kInvalidArgument,
              {path_, "tensor 'w'", "non-negative integers", "string \"4\""});
  ExpectError(OpenRaw(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 4]}})", "abcd"),
              absl::StatusCode::kInvalidArgument,
              {path_, "tensor 'w'", "non-negative integers", "number -4"});
}

TEST_F(SafetensorsTest, UnknownDtype) {
  for (const char* dtype : {"F64", "I8"}) {
    ExpectError(OpenRaw(absl::StrCat(R"({"w": {"dtype": ")", dtype,
                                     R"(", "shape": [1], "data_offsets": [0, 1]}})"),
                        "abcdefgh"),
                absl::StatusCode::kInvalidArgument,
                {path_, "tensor 'w'", absl::StrCat("\"", dtype, "\""), "F32, F16, BF16, F8_E4M3"});
  }
}

TEST_F(SafetensorsTest, NegativeDimension) {
  ExpectError(OpenRaw(R"({"w": {"dtype": "F32", "shape": [2, -2], "data_offsets": [0, 0]}})"),
              absl::StatusCode::kInvalidArgument,
              {path_, "tensor 'w'", "negative dimension -2", "expected dimensions >= 0"});
}

TEST_F(SafetensorsTest, ShapeProductOverflow) {
  ExpectError(OpenRaw(R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296],
                              "data_offsets": [0, 0]}})"),
              absl::StatusCode::kInvalidArgument,
              {path_, "tensor 'w'", "[4294967296, 4294967296]", "more elements than fit"});
  // Elements fit in int64 but bytes do not.
  ExpectError(OpenRaw(R"({"w": {"dtype": "F32", "shape": [4611686018427387904],
                              "data_offsets": [0, 0]}})"),
              absl::StatusCode::kInvalidArgument, {path_, "tensor 'w'", "more bytes than fit"});
  ExpectError(OpenRaw(R"({"w": {"dtype": "F32", "shape": [18446744073709551615],
                              "data_offsets": [0, 0]}})"),
              absl::StatusCode::kInvalidArgument,
              {path_, "tensor 'w'", "dimension 18446744073709551615 exceeds"});
}

TEST_F(SafetensorsTest, ByteSizeMismatch) {
  ExpectError(OpenRaw(R"({"w": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 10]}})",
                      std::string(12, 'x')),
              absl::StatusCode::kInvalidArgument,
              {path_, "tensor 'w'", "data_offsets [0, 10] hold 10 bytes, expected 12",
               "shape [2, 3] x BF16"});
}

TEST_F(SafetensorsTest, BeginAfterEnd) {
  ExpectError(OpenRaw(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}})",
                      std::string(8, 'x')),
              absl::StatusCode::kInvalidArgument,
              {path_, "tensor 'w'", "data_offsets [8, 4]", "expected begin <= end"});
}

TEST_F(SafetensorsTest, OffsetsBeyondDataRegion) {
  ExpectError(OpenRaw(R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}})",
                      std::string(16, 'x')),
              absl::StatusCode::kInvalidArgument,
              {path_, "tensor 'w'", "data_offsets [8, 24]", "data region of 16 bytes"});
  // An end so large that begin + size would wrap.
  ExpectError(OpenRaw(R"({"w": {"dtype": "F32", "shape": [0],
                              "data_offsets": [18446744073709551615, 18446744073709551615]}})"),
              absl::StatusCode::kInvalidArgument, {path_, "tensor 'w'", "data region of 0 bytes"});
}

TEST_F(SafetensorsTest, OverlappingOffsets) {
  ExpectError(OpenRaw(R"({"b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
                          "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                          "c": {"dtype": "F32", "shape": [2], "data_offsets": [24, 32]}})",
                      std::string(32, 'x')),
              absl::StatusCode::kInvalidArgument,
              {path_, "'a' data_offsets [0, 16]", "'b' data_offsets [8, 24]", "overlap",
               "expected disjoint"});
  ExpectError(OpenRaw(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                          "b": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}})",
                      std::string(8, 'x')),
              absl::StatusCode::kInvalidArgument, {path_, "'a'", "'b'", "overlap"});
}

// Every prefix of a valid file and every single-byte corruption of its header
// either opens or fails with a status; AddressSanitizer catches any stray read.
TEST_F(SafetensorsTest, TruncationsAndCorruptionsNeverCrash) {
  test::WriteSafetensors(path_,
                         {{"a", "F32", {2, 2}, Pattern(16)}, {"b", "BF16", {3}, Pattern(6)}});
  std::string bytes;
  {
    auto file = SafetensorsFile::Open(path_);
    ASSERT_TRUE(file.ok()) << file.status();
  }
  std::ifstream in(path_, std::ios::binary);
  bytes.assign(std::istreambuf_iterator<char>(in), {});
  const std::string corrupt_path = dir_.File("corrupt.safetensors");
  for (size_t n = 0; n < bytes.size(); ++n) {
    test::WriteFile(corrupt_path, bytes.substr(0, n));
    EXPECT_FALSE(SafetensorsFile::Open(corrupt_path).ok()) << "prefix of " << n << " bytes";
  }
  for (size_t i = 0; i < bytes.size(); ++i) {
    for (char replacement : {'\0', '9', '"', ']', '\xff'}) {
      std::string mutated = bytes;
      mutated[i] = replacement;
      test::WriteFile(corrupt_path, mutated);
      auto file = SafetensorsFile::Open(corrupt_path);
      if (file.ok()) {
        for (const TensorView& t : (*file)->tensors()) {
          ASSERT_EQ(t.nbytes, static_cast<size_t>(t.numel()) * DTypeSize(t.dtype));
        }
      }
    }
  }
}

}  // namespace
}  // namespace mla
