#include "runtime/scheduler.h"

#include "gtest/gtest.h"

namespace mla {
namespace {

constexpr int64_t kBs = 64;

std::unique_ptr<Sequence> Seq(int64_t prompt_len, int64_t id, int32_t first_token = 2) {
  Request::Params p;
  for (int64_t i = 0; i < prompt_len; ++i) p.prompt_ids.push_back(static_cast<int32_t>(first_token + i));
  p.max_new_tokens = 100;
  return std::make_unique<Sequence>(std::make_shared<Request>(p), id);
}

// Applies a step's outcome as the engine does: computed tokens advance, the
// sampled ones get a token.
void Apply(BlockManager& bm, const SchedulerOutput& out) {
  for (const auto& s : out.batch) {
    s.seq->num_computed += s.num_tokens;
    bm.CommitFullBlocks(*s.seq);
    if (s.sample) s.seq->AppendToken(7);
  }
}

TEST(SchedulerTest, ChunkedPrefillUnderTokenBudget) {
  BlockManager bm(16, kBs);
  Scheduler sched({/*max_num_batched_tokens=*/100, /*max_num_seqs=*/8}, bm);
  sched.Add(Seq(250, 0));
  SchedulerOutput o1 = sched.Schedule();
  ASSERT_EQ(o1.batch.size(), 1u);
  EXPECT_EQ(o1.batch[0].num_tokens, 100);
  EXPECT_FALSE(o1.batch[0].sample);
  Apply(bm, o1);
  SchedulerOutput o2 = sched.Schedule();
  EXPECT_EQ(o2.batch[0].num_tokens, 100);
  Apply(bm, o2);
  SchedulerOutput o3 = sched.Schedule();
  EXPECT_EQ(o3.batch[0].num_tokens, 50);
  EXPECT_TRUE(o3.batch[0].sample);
  Apply(bm, o3);
  SchedulerOutput o4 = sched.Schedule();  // decode
  EXPECT_EQ(o4.batch[0].num_tokens, 1);
  EXPECT_TRUE(o4.batch[0].sample);
}

TEST(SchedulerTest, DecodesAndNewPrefillShareAStep) {
  BlockManager bm(16, kBs);
  Scheduler sched({100, 8}, bm);
  sched.Add(Seq(10, 0));
  Apply(bm, sched.Schedule());
  sched.Add(Seq(150, 1));
  SchedulerOutput o = sched.Schedule();
  ASSERT_EQ(o.batch.size(), 2u);
  EXPECT_EQ(o.batch[0].num_tokens, 1);   // the running decode first
  EXPECT_EQ(o.batch[1].num_tokens, 99);  // the rest of the budget
}

TEST(SchedulerTest, MaxNumSeqsBoundsRunning) {
  BlockManager bm(16, kBs);
  Scheduler sched({1000, 2}, bm);
  for (int i = 0; i < 3; ++i) sched.Add(Seq(5, i));
  SchedulerOutput o = sched.Schedule();
  EXPECT_EQ(o.batch.size(), 2u);
  EXPECT_EQ(sched.num_waiting(), 1);
}

TEST(SchedulerTest, PreemptsNewestWhenBlocksRunOut) {
  // 4 blocks; two sequences of 120 tokens hold 2 each; growing past 128 needs a 5th.
  BlockManager bm(4, kBs);
  Scheduler sched({1000, 8}, bm);
  sched.Add(Seq(127, 0));
  sched.Add(Seq(120, 1, 500));
  Apply(bm, sched.Schedule());  // both prefilled; seq 0 holds 127 + 1 sampled = 128
  SchedulerOutput o = sched.Schedule();
  // seq 0 decodes at position 127 (fits), seq 1 at 120 (fits): no preemption yet.
  EXPECT_TRUE(o.preempted.empty());
  Apply(bm, o);
  // seq 0 now needs position 128: a 5th block. The newest (seq 1) is preempted.
  SchedulerOutput p = sched.Schedule();
  ASSERT_EQ(p.preempted.size(), 1u);
  EXPECT_EQ(p.preempted[0]->id(), 1);
  EXPECT_EQ(p.preempted[0]->num_computed, 0);  // recompute from scratch
  ASSERT_EQ(p.batch.size(), 1u);
  EXPECT_EQ(p.batch[0].seq->id(), 0);
  EXPECT_EQ(sched.num_waiting(), 1);
  Apply(bm, p);
  // When seq 0 leaves, seq 1 comes back and recomputes prompt + its generated
  // tokens (122), less its first block, which is still in the prefix cache.
  sched.Remove(p.batch[0].seq);
  SchedulerOutput q = sched.Schedule();
  ASSERT_EQ(q.batch.size(), 1u);
  EXPECT_EQ(q.batch[0].seq->id(), 1);
  EXPECT_EQ(q.batch[0].seq->num_computed, 64);
  EXPECT_EQ(q.batch[0].num_tokens, 122 - 64);
  EXPECT_TRUE(q.batch[0].sample);
}

TEST(SchedulerTest, PrefixHitSkipsPrefill) {
  BlockManager bm(16, kBs);
  Scheduler sched({1000, 8}, bm);
  sched.Add(Seq(200, 0));
  Apply(bm, sched.Schedule());
  sched.Add(Seq(200, 1));  // the same prompt
  SchedulerOutput o = sched.Schedule();
  ASSERT_EQ(o.batch.size(), 2u);
  EXPECT_EQ(o.batch[1].seq->cached_prompt_tokens, 192);  // 3 full blocks
  EXPECT_EQ(o.batch[1].num_tokens, 8);
}

TEST(SchedulerTest, RemoveFreesBlocks) {
  BlockManager bm(16, kBs);
  Scheduler sched({1000, 8}, bm);
  sched.Add(Seq(100, 0));
  SchedulerOutput o = sched.Schedule();
  EXPECT_GT(bm.num_used(), 0);
  sched.Remove(o.batch[0].seq);
  EXPECT_EQ(bm.num_used(), 0);
  EXPECT_EQ(sched.num_running(), 0);
}

}  // namespace
}  // namespace mla
