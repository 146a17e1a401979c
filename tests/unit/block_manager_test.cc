#include "runtime/block_manager.h"

#include <memory>

#include "gtest/gtest.h"

namespace mla {
namespace {

constexpr int64_t kBs = 4;  // small blocks keep the cases readable

std::unique_ptr<Sequence> Seq(std::vector<int32_t> prompt, int64_t id = 0) {
  Request::Params p;
  p.prompt_ids = std::move(prompt);
  p.max_new_tokens = 8;
  return std::make_unique<Sequence>(std::make_shared<Request>(p), id);
}

std::vector<int32_t> Range(int32_t from, int32_t n) {
  std::vector<int32_t> v;
  for (int32_t i = 0; i < n; ++i) v.push_back(from + i);
  return v;
}

// Runs a sequence's whole prompt through "the cache": allocate, compute, commit.
void Compute(BlockManager& bm, Sequence& s) {
  ASSERT_TRUE(bm.Allocate(s, s.num_tokens()));
  s.num_computed = s.num_tokens();
  bm.CommitFullBlocks(s);
}

TEST(BlockManagerTest, AllocatesAndReleases) {
  BlockManager bm(5, kBs);
  auto s = Seq(Range(10, 9));  // 9 tokens: 3 blocks
  ASSERT_TRUE(bm.Allocate(*s, 9));
  EXPECT_EQ(s->block_table.size(), 3u);
  EXPECT_EQ(bm.num_used(), 3);
  EXPECT_FALSE(bm.Allocate(*s, 4 * kBs * 2));  // 8 blocks: more than exist
  EXPECT_EQ(s->block_table.size(), 3u);         // unchanged
  bm.Release(*s);
  EXPECT_EQ(bm.num_used(), 0);
  EXPECT_EQ(bm.num_free(), 5);
}

TEST(BlockManagerTest, SharedPrefixIsReusedAndRefCounted) {
  BlockManager bm(8, kBs);
  auto a = Seq(Range(100, 10));  // blocks [100..103] [104..107] + 2 tokens
  Compute(bm, *a);
  EXPECT_EQ(a->block_hashes.size(), 2u);

  std::vector<int32_t> prompt = Range(100, 8);
  prompt.push_back(7);  // same 2 full blocks, then different
  auto b = Seq(prompt, 1);
  EXPECT_EQ(bm.AttachCachedPrefix(*b), 8);
  EXPECT_EQ(b->num_computed, 8);
  EXPECT_EQ(b->block_table[0], a->block_table[0]);
  EXPECT_EQ(b->block_table[1], a->block_table[1]);
  EXPECT_EQ(bm.prefix_hits(), 2);
  EXPECT_EQ(bm.num_used(), 3);  // shared blocks count once
  // a leaves: the shared blocks stay in use by b.
  bm.Release(*a);
  EXPECT_EQ(bm.num_used(), 2);
  bm.Release(*b);
  EXPECT_EQ(bm.num_used(), 0);
}

TEST(BlockManagerTest, AlwaysLeavesOneTokenToCompute) {
  BlockManager bm(8, kBs);
  auto a = Seq(Range(1, 8));
  Compute(bm, *a);
  bm.Release(*a);
  auto b = Seq(Range(1, 8), 1);  // the identical prompt: 2 full blocks
  EXPECT_EQ(bm.AttachCachedPrefix(*b), 4);  // only the first: the last token must run
}

TEST(BlockManagerTest, PrefixDependsOnEverythingBefore) {
  BlockManager bm(8, kBs);
  auto a = Seq({1, 2, 3, 4, 5, 6, 7, 8, 9});
  Compute(bm, *a);
  // Same second block, different first: no match at all.
  auto b = Seq({9, 9, 9, 9, 5, 6, 7, 8, 9}, 1);
  EXPECT_EQ(bm.AttachCachedPrefix(*b), 0);
}

TEST(BlockManagerTest, FreedCachedBlocksAreEvictedLeastRecentFirst) {
  BlockManager bm(4, kBs);
  auto a = Seq(Range(0, 9));  // 3 blocks, 2 full and cached
  Compute(bm, *a);
  bm.Release(*a);
  EXPECT_EQ(bm.num_free(), 4);  // cached blocks are still allocatable
  auto big = Seq(Range(50, 13), 1);  // needs all 4 blocks: evicts the cached ones
  ASSERT_TRUE(bm.Allocate(*big, 13));
  bm.Release(*big);
  auto again = Seq(Range(0, 9), 2);
  EXPECT_EQ(bm.AttachCachedPrefix(*again), 0);  // evicted
}

TEST(BlockManagerTest, DisabledPrefixCachingNeverMatches) {
  BlockManager bm(8, kBs, /*prefix_caching=*/false);
  auto a = Seq(Range(0, 9));
  Compute(bm, *a);
  bm.Release(*a);
  auto b = Seq(Range(0, 9), 1);
  EXPECT_EQ(bm.AttachCachedPrefix(*b), 0);
}

}  // namespace
}  // namespace mla
