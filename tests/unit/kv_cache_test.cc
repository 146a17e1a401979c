#include "runtime/kv_cache.h"

#include <cmath>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cpu/float_convert.h"

namespace mla {
namespace {

using ::testing::HasSubstr;

TEST(BlockTableTest, SequenceCrossesBlocks) {
  BlockAllocator alloc(4);
  BlockTable table(64);
  ASSERT_TRUE(table.Reserve(64, alloc).ok());
  EXPECT_EQ(table.blocks().size(), 1u);
  ASSERT_TRUE(table.Reserve(65, alloc).ok());
  EXPECT_EQ(table.blocks().size(), 2u);
  EXPECT_EQ(table.capacity(), 128);
  EXPECT_EQ(alloc.num_free(), 2);
  table.Release(alloc);
  EXPECT_EQ(alloc.num_free(), 4);
  EXPECT_TRUE(table.blocks().empty());
}

TEST(BlockTableTest, ExhaustionRollsBack) {
  BlockAllocator alloc(3);
  BlockTable a(64), b(64);
  ASSERT_TRUE(a.Reserve(100, alloc).ok());  // 2 blocks
  absl::Status s = b.Reserve(130, alloc);   // needs 3, 1 free
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(s.message()), HasSubstr("all 3 blocks in use"));
  EXPECT_TRUE(b.blocks().empty());
  EXPECT_EQ(alloc.num_free(), 1);
}

TEST(PagedLatentCacheTest, NonContiguousBlocksRoundTrip) {
  const int64_t dim = 10;
  PagedLatentCache cache(2, 5, 4, dim, CacheDType::kF32);
  cache.Poison();
  // Positions 0-3 in block 3, 4-7 in block 0, 8-9 in block 4.
  std::vector<int32_t> table = {3, 0, 4};
  for (int64_t layer = 0; layer < 2; ++layer) {
    for (int64_t pos = 0; pos < 10; ++pos) {
      std::vector<float> v(dim);
      for (int i = 0; i < dim; ++i) v[i] = static_cast<float>(layer * 1000 + pos * 10 + i);
      cpu::WriteLatent(cache.Layer(layer), table.data(), pos, v.data());
    }
  }
  std::vector<float> all(10 * dim);
  cpu::GatherLatents(cache.Layer(1), table.data(), 10, all.data());
  for (int64_t pos = 0; pos < 10; ++pos) {
    for (int i = 0; i < dim; ++i) EXPECT_EQ(all[pos * dim + i], 1000 + pos * 10 + i);
  }
  // Where the rows physically are: position 5 is row 1 of block 0 of layer 0.
  const float* base = static_cast<const float*>(cache.Layer(0).base);
  EXPECT_EQ(base[(0 * 4 + 1) * dim + 2], 52.0f);
  // Block 1 and 2 were never written: still NaN.
  EXPECT_TRUE(std::isnan(base[(1 * 4) * dim]));
  EXPECT_TRUE(std::isnan(base[(2 * 4 + 3) * dim + 9]));
}

TEST(PagedLatentCacheTest, Bf16StoresRoundedValues) {
  PagedLatentCache cache(1, 1, 64, 3, CacheDType::kBF16);
  EXPECT_EQ(cache.bytes(), 64 * 3 * 2);
  std::vector<int32_t> table = {0};
  float v[3] = {1.0f, 1.00390625f, -3.14159f}, out[3];
  cpu::WriteLatent(cache.Layer(0), table.data(), 7, v);
  cpu::ReadLatent(cache.Layer(0), table.data(), 7, out);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(out[i], cpu::Bf16ToFloat(cpu::FloatToBf16(v[i])));
  EXPECT_EQ(out[1], 1.0f);  // the tie rounds to even
}

TEST(PagedLatentCacheTest, ParseDType) {
  EXPECT_EQ(*ParseCacheDType("fp32"), CacheDType::kF32);
  EXPECT_EQ(*ParseCacheDType("bf16"), CacheDType::kBF16);
  absl::StatusOr<CacheDType> bad = ParseCacheDType("fp8");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("expected \"fp32\" or \"bf16\""));
}

}  // namespace
}  // namespace mla
