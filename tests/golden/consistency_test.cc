// Invariants of our own forward pass on the fixture model: decode by cache vs
// full recompute, chunked vs one-shot prefill, absorbed vs naive, and batch
// invariance (a sequence's logits do not depend on its batch).
#include "golden_fixture.h"

namespace mla::golden {
namespace {

constexpr double kCacheTolerance = 1e-5;  // relative L2; float32 throughout

class ConsistencyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = LoadModel("v3_bf16");
    ASSERT_NE(model_, nullptr);
    vocab_ = model_->config().vocab_size;
    cases_ = LoadGolden("v3_bf16");
  }
  std::vector<float> LastRow(const std::vector<float>& all) {
    return std::vector<float>(all.end() - vocab_, all.end());
  }
  std::unique_ptr<Model> model_;
  int64_t vocab_ = 0;
  std::vector<GoldenCase> cases_;
};

TEST_F(ConsistencyTest, DecodeByCacheMatchesFullRecompute) {
  for (const GoldenCase& c : cases_) {
    SCOPED_TRACE(c.name);
    GenerationResult r = GenerateGreedy(*model_, c.prompt_ids, 8);
    std::vector<int32_t> seq = c.prompt_ids;
    for (size_t i = 1; i < r.generated_ids.size(); ++i) {
      seq.push_back(r.generated_ids[i - 1]);
      std::vector<float> full = LastRow(PrefillAllLogits(*model_, seq));
      EXPECT_LT(RelL2(r.logits[i], full), kCacheTolerance) << "step " << i;
    }
  }
}

TEST_F(ConsistencyTest, ChunkedPrefillMatchesOneShot) {
  const GoldenCase& c = cases_.back();  // the long prompt: chunks cross cache blocks
  GenerationResult one = GenerateGreedy(*model_, c.prompt_ids, 4);
  for (int64_t chunk : {1, 7, 64, 100}) {
    SCOPED_TRACE(chunk);
    GenerationResult chunked = GenerateGreedy(*model_, c.prompt_ids, 4, CacheDType::kF32, chunk);
    EXPECT_EQ(chunked.generated_ids, one.generated_ids);
    for (size_t i = 0; i < one.logits.size(); ++i) {
      EXPECT_LT(RelL2(chunked.logits[i], one.logits[i]), kCacheTolerance) << "step " << i;
    }
  }
}

TEST_F(ConsistencyTest, AbsorbedFormMatchesNaiveForm) {
  ModelOptions absorbed, naive;
  absorbed.attention_path = AttentionPath::kAbsorbed;
  naive.attention_path = AttentionPath::kNaive;
  std::unique_ptr<Model> a = LoadModel("v3_bf16", absorbed), n = LoadModel("v3_bf16", naive);
  for (const GoldenCase& c : cases_) {
    SCOPED_TRACE(c.name);
    EXPECT_LT(RelL2(PrefillAllLogits(*a, c.prompt_ids), PrefillAllLogits(*n, c.prompt_ids)), kCacheTolerance);
    GenerationResult ga = GenerateGreedy(*a, c.prompt_ids, 4), gn = GenerateGreedy(*n, c.prompt_ids, 4);
    EXPECT_EQ(ga.generated_ids, gn.generated_ids);
    for (size_t i = 0; i < ga.logits.size(); ++i) EXPECT_LT(RelL2(ga.logits[i], gn.logits[i]), kCacheTolerance);
  }
}

TEST_F(ConsistencyTest, SequenceAloneEqualsSequenceInRaggedBatch) {
  // Generation of every golden prompt alone, then all of them together with a
  // few extra prompts, chunked differently: bitwise identical logits.
  std::vector<GenerationRequest> batch;
  std::vector<GenerationResult> alone;
  for (const GoldenCase& c : cases_) {
    alone.push_back(GenerateGreedy(*model_, c.prompt_ids, 6));
    GenerationRequest r;
    r.prompt_ids = c.prompt_ids;
    r.max_new_tokens = 6;
    r.record_logits = true;
    batch.push_back(r);
  }
  for (int extra = 0; extra < 3; ++extra) {
    GenerationRequest r;
    for (int i = 0; i < 5 + 40 * extra; ++i) r.prompt_ids.push_back((i * 37 + extra * 11) % 250 + 2);
    r.max_new_tokens = 3 + extra * 4;
    r.prefill_chunk = 16;
    batch.insert(batch.begin() + extra, r);
  }
  PagedLatentCache cache = model_->MakeCache(64, CacheDType::kF32);
  cache.Poison();
  BlockAllocator allocator(64);
  absl::StatusOr<std::vector<GenerationResult>> together = Generate(*model_, cache, allocator, batch);
  ASSERT_TRUE(together.ok()) << together.status();
  for (size_t i = 0; i < cases_.size(); ++i) {
    const GenerationResult& t = (*together)[i + 3];
    EXPECT_EQ(t.generated_ids, alone[i].generated_ids) << cases_[i].name;
    for (size_t s = 0; s < t.logits.size(); ++s) {
      EXPECT_EQ(t.logits[s], alone[i].logits[s]) << cases_[i].name << " step " << s;
    }
  }
  EXPECT_EQ(allocator.num_free(), 64);
}

TEST_F(ConsistencyTest, ForwardRefusesBadInputAndKeepsWorking) {
  PagedLatentCache cache = model_->MakeCache(2, CacheDType::kF32);
  std::vector<int32_t> table = {0, 1}, bad_ids = {5, static_cast<int32_t>(vocab_)}, ok = {5, 6};
  std::vector<int32_t> bad_table = {0, 7};
  struct Bad {
    SequenceStep step;
    const char* message;
  };
  std::vector<Bad> cases = {
      {{bad_ids, 0, table, false}, "token id 256 (expected 0 <= id < 256)"},
      {{ok, 127, table, false}, "block table of 2 blocks (expected >= 3 for 129 tokens)"},
      {{ok, 63, bad_table, false}, "block id 7 (expected 0 <= id < 2)"},
      {{std::span<const int32_t>(), 0, table, false}, "no new tokens"},
      {{ok, -1, table, false}, "positions [-1, 1)"},
  };
  for (const Bad& b : cases) {
    absl::StatusOr<std::vector<float>> r = model_->Forward(std::span<const SequenceStep>(&b.step, 1), cache);
    ASSERT_FALSE(r.ok()) << b.message;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(std::string(r.status().message()).find(b.message), std::string::npos) << r.status();
  }
  SequenceStep good{ok, 0, table, false};
  EXPECT_TRUE(model_->Forward(std::span<const SequenceStep>(&good, 1), cache).ok());
}

}  // namespace
}  // namespace mla::golden
