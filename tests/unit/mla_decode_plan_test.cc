// The split-KV decode's work partition (kernels/cuda/mla_decode_plan.h): every
// (sequence, head, cached position) is covered by exactly one work item, items
// start at tile boundaries, split ranges are merged from exactly their own
// partial slots (and each split item names its merge), the slot count stays
// within MlaDecodeMaxPartials, and the plan fills about one wave of the given
// SMs.
#include "kernels/cuda/mla_decode_plan.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

namespace mla::cuda {
namespace {

// heads_per_block 0: the default (MlaDecodeHeadsPerBlock), else the caller's.
void CheckPlan(const std::vector<int32_t>& lens, int heads, int sms, int heads_per_block = 0) {
  SCOPED_TRACE(::testing::Message() << lens.size() << " sequences, " << heads << " heads, " << sms << " SMs, "
                                    << heads_per_block << " heads per block");
  const MlaDecodePlan plan =
      heads_per_block == 0 ? PlanMlaDecode(lens, heads, sms) : PlanMlaDecode(lens, heads, sms, heads_per_block);
  ASSERT_EQ(plan.heads_per_block, heads_per_block == 0 ? MlaDecodeHeadsPerBlock(heads) : heads_per_block);
  const int hpb = plan.heads_per_block;
  const int groups = (heads + hpb - 1) / hpb;
  // covered[s][group]: positions seen, in order; partial slot use counts.
  std::vector<std::vector<std::vector<int32_t>>> ranges(lens.size(), std::vector<std::vector<int32_t>>(groups));
  std::vector<int> slot_uses(static_cast<size_t>(plan.num_partials), 0);
  std::vector<std::vector<int>> items_of(lens.size(), std::vector<int>(groups, 0));
  for (const MlaDecodeWorkItem& it : plan.items) {
    ASSERT_GE(it.seq, 0);
    ASSERT_LT(it.seq, static_cast<int32_t>(lens.size()));
    ASSERT_EQ(it.head_begin % hpb, 0);
    ASSERT_LT(it.head_begin, heads);
    EXPECT_EQ(it.kv_begin % kMlaDecodeTileTokens, 0);
    EXPECT_LE(it.kv_end, lens[it.seq]);
    EXPECT_TRUE(it.kv_begin < it.kv_end || lens[it.seq] == 0) << "empty item of a non-empty sequence";
    ranges[it.seq][it.head_begin / hpb].push_back(it.kv_begin);
    ranges[it.seq][it.head_begin / hpb].push_back(it.kv_end);
    ++items_of[it.seq][it.head_begin / hpb];
    if (it.partial >= 0) {
      ASSERT_LT(it.partial, plan.num_partials);
      ++slot_uses[it.partial];
      // Its merge item: that of its (sequence, group), over its slot.
      ASSERT_GE(it.merge, 0);
      ASSERT_LT(it.merge, static_cast<int32_t>(plan.merges.size()));
      const MlaDecodeMergeItem& m = plan.merges[it.merge];
      EXPECT_EQ(m.seq, it.seq);
      EXPECT_EQ(m.head_begin, it.head_begin);
      EXPECT_GE(it.partial, m.first_partial);
      EXPECT_LT(it.partial, m.first_partial + m.num_partials);
    } else {
      EXPECT_EQ(it.merge, -1) << "an unsplit item names a merge";
    }
  }
  for (size_t s = 0; s < lens.size(); ++s) {
    for (int g = 0; g < groups; ++g) {
      // Ranges, sorted, tile [0, len) without gap or overlap.
      std::vector<std::pair<int32_t, int32_t>> r;
      for (size_t i = 0; i < ranges[s][g].size(); i += 2) r.emplace_back(ranges[s][g][i], ranges[s][g][i + 1]);
      std::sort(r.begin(), r.end());
      ASSERT_FALSE(r.empty()) << "sequence " << s << " group " << g << " has no item";
      int32_t next = 0;
      for (const auto& [b, e] : r) {
        EXPECT_EQ(b, next) << "sequence " << s << " group " << g;
        next = e;
      }
      EXPECT_EQ(next, lens[s]) << "sequence " << s << " group " << g;
    }
  }
  for (size_t i = 0; i < slot_uses.size(); ++i) EXPECT_EQ(slot_uses[i], 1) << "partial slot " << i;
  EXPECT_LE(plan.num_partials, MlaDecodeMaxPartials(sms));
  // Merges: one per split (sequence, group), over exactly the slots its items wrote.
  std::vector<int> merged(static_cast<size_t>(plan.num_partials), 0);
  std::vector<std::vector<int>> merges_of(lens.size(), std::vector<int>(groups, 0));
  for (const MlaDecodeMergeItem& m : plan.merges) {
    ASSERT_GE(m.num_partials, 2);
    ++merges_of[m.seq][m.head_begin / hpb];
    EXPECT_EQ(m.num_partials, items_of[m.seq][m.head_begin / hpb]);
    for (int32_t i = m.first_partial; i < m.first_partial + m.num_partials; ++i) {
      ASSERT_LT(i, plan.num_partials);
      ++merged[i];
    }
    for (const MlaDecodeWorkItem& it : plan.items) {
      if (it.seq == m.seq && it.head_begin == m.head_begin) {
        EXPECT_GE(it.partial, m.first_partial);
        EXPECT_LT(it.partial, m.first_partial + m.num_partials);
      }
    }
  }
  for (size_t i = 0; i < merged.size(); ++i) EXPECT_EQ(merged[i], 1) << "partial slot " << i;
  for (size_t s = 0; s < lens.size(); ++s) {
    for (int g = 0; g < groups; ++g) {
      EXPECT_EQ(merges_of[s][g], items_of[s][g] > 1 ? 1 : 0) << "sequence " << s << " group " << g;
    }
  }
  // One wave: items beyond the SMs only where a (sequence, group) needs its own.
  EXPECT_LE(plan.items.size(), static_cast<size_t>(sms) + lens.size() * groups);
}

TEST(MlaDecodePlanTest, CoversEveryPositionOnce) {
  CheckPlan({1}, 128, 132);
  CheckPlan({4096}, 16, 132);
  CheckPlan({0, 1, 63, 64, 65, 129, 3001}, 128, 132);
  CheckPlan({0}, 16, 132);
  CheckPlan({}, 16, 132);
  CheckPlan({8192, 1, 1, 1}, 20, 7);
  CheckPlan({100, 200, 300}, 8, 1);
  CheckPlan({5000, 64}, 64, 1 << 20);
  std::mt19937 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<int32_t> lens(1 + rng() % 70);
    for (int32_t& n : lens) n = static_cast<int32_t>(rng() % 3 == 0 ? rng() % 65 : rng() % 9000);
    const int heads = std::vector<int>{1, 8, 16, 17, 32, 64, 128}[rng() % 7];
    CheckPlan(lens, heads, static_cast<int>(1 + rng() % 200));
    CheckPlan(lens, heads, static_cast<int>(1 + rng() % 200), std::vector<int>{16, 32, 64}[rng() % 3]);
  }
}

TEST(MlaDecodePlanTest, FillsTheSmsForSmallBatches) {
  // One 4096-token sequence, 16 heads: 64 tiles over 132 SMs -> one tile each.
  MlaDecodePlan plan = PlanMlaDecode(std::vector<int32_t>{4096}, 16, 132);
  EXPECT_EQ(plan.items.size(), 64u);
  EXPECT_EQ(plan.merges.size(), 1u);
  // 64 x 4096 at 16 heads: 4096 tiles, 32 per item, two items per sequence.
  plan = PlanMlaDecode(std::vector<int32_t>(64, 4096), 16, 132);
  EXPECT_EQ(plan.items.size(), 128u);
  // 128 heads: four groups of 32, adjacent in launch order for the same range.
  plan = PlanMlaDecode(std::vector<int32_t>{4096}, 128, 132);
  ASSERT_GE(plan.items.size(), 4u);
  for (int g = 0; g < 4; ++g) {
    EXPECT_EQ(plan.items[g].head_begin, 32 * g);
    EXPECT_EQ(plan.items[g].kv_begin, plan.items[0].kv_begin);
  }
  // 128 x 4096 at 16 heads: splitting each sequence in two (256 items of 32
  // tiles) takes two waves, no sooner than 128 whole sequences in one: no split.
  plan = PlanMlaDecode(std::vector<int32_t>(128, 4096), 16, 132);
  EXPECT_EQ(plan.items.size(), 128u);
  EXPECT_TRUE(plan.merges.empty());
  // ... but one long sequence among short ones is still split over the idle SMs.
  std::vector<int32_t> lens(100, 64);
  lens.push_back(64 * 64);
  plan = PlanMlaDecode(lens, 16, 132);
  EXPECT_GT(plan.items.size(), 101u);
  EXPECT_EQ(plan.merges.size(), 1u);
  // Enough work per SM already: no split, no partials.
  plan = PlanMlaDecode(std::vector<int32_t>(256, 1000), 16, 132);
  EXPECT_EQ(plan.num_partials, 0);
  EXPECT_TRUE(plan.merges.empty());
}

TEST(MlaDecodePlanTest, ShapesForTheTensorCores) {
  EXPECT_TRUE(MlaDecodeUsesTensorCores(512, 64));   // DeepSeek-V3
  EXPECT_TRUE(MlaDecodeUsesTensorCores(160, 16));   // the golden fixtures
  EXPECT_FALSE(MlaDecodeUsesTensorCores(36, 6));    // latent % 16 != 0
  EXPECT_FALSE(MlaDecodeUsesTensorCores(1024, 64)); // more output columns than 8 warps x 64
  EXPECT_FALSE(MlaDecodeUsesTensorCores(512, 192)); // shared memory
  EXPECT_EQ(MlaDecodeHeadsPerBlock(8), 16);
  EXPECT_EQ(MlaDecodeHeadsPerBlock(16), 16);
  EXPECT_EQ(MlaDecodeHeadsPerBlock(17), 32);
  EXPECT_EQ(MlaDecodeHeadsPerBlock(128), 32);
  // The step's default: 64 (wgmma) for DeepSeek-V3's latent at 64 heads or
  // more with two 64-head tiles per SM; else by head count.
  EXPECT_EQ(MlaDecodeDefaultHeadsPerBlock(std::vector<int32_t>(16, 4096), 128, 512, 64, 132), 64);
  EXPECT_EQ(MlaDecodeDefaultHeadsPerBlock(std::vector<int32_t>(64, 8192), 128, 512, 64, 132), 64);
  EXPECT_EQ(MlaDecodeDefaultHeadsPerBlock(std::vector<int32_t>{4096}, 128, 512, 64, 132), 32);  // 128 tiles
  // The cut-off: 2 groups x 132 tiles = 2 per SM; 2 x 131 is under it.
  EXPECT_EQ(MlaDecodeDefaultHeadsPerBlock(std::vector<int32_t>{132 * 64}, 128, 512, 64, 132), 64);
  EXPECT_EQ(MlaDecodeDefaultHeadsPerBlock(std::vector<int32_t>{131 * 64}, 128, 512, 64, 132), 32);
  EXPECT_EQ(MlaDecodeDefaultHeadsPerBlock(std::vector<int32_t>(64, 4096), 16, 512, 64, 132), 16);
  EXPECT_EQ(MlaDecodeDefaultHeadsPerBlock(std::vector<int32_t>(64, 4096), 128, 160, 16, 132), 32);  // not its shape
  EXPECT_EQ(MlaDecodeDefaultHeadsPerBlock(std::vector<int32_t>{}, 128, 512, 64, 132), 32);
  // The wgmma kernel's shape: DeepSeek-V3's latent only.
  EXPECT_TRUE(MlaDecodeUsesWgmma(512, 64));
  EXPECT_FALSE(MlaDecodeUsesWgmma(160, 16));
  EXPECT_FALSE(MlaDecodeUsesWgmma(512, 32));
  // A caller's choice of 16, 32 or 64 holds; anything else is the default.
  EXPECT_EQ(PlanMlaDecode(std::vector<int32_t>{100}, 128, 132, 16).heads_per_block, 16);
  EXPECT_EQ(PlanMlaDecode(std::vector<int32_t>{100}, 128, 132, 16).items.size(), 8u * 2u);
  EXPECT_EQ(PlanMlaDecode(std::vector<int32_t>{100}, 8, 132, 32).heads_per_block, 32);
  EXPECT_EQ(PlanMlaDecode(std::vector<int32_t>{100}, 128, 132, 64).heads_per_block, 64);
  EXPECT_EQ(PlanMlaDecode(std::vector<int32_t>{100}, 128, 132, 64).items.size(), 2u * 2u);
  EXPECT_EQ(PlanMlaDecode(std::vector<int32_t>{100}, 128, 132, 24).heads_per_block, 32);
}

}  // namespace
}  // namespace mla::cuda
