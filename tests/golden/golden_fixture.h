// The committed golden fixtures: tiny random checkpoints made by transformers
// (scripts/make_fixtures.py) and the logits transformers computed for them.
#pragma once

#include <cmath>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "runtime/generator.h"
#include "runtime/model.h"

namespace mla::golden {

inline std::string FixtureDir(const std::string& name) {
  return std::string(MLA_TEST_DATA_DIR) + "/fixtures/" + name;
}

struct GoldenCase {
  std::string name;
  std::vector<int32_t> prompt_ids;
  std::vector<std::vector<float>> position_logits;  // every prompt position; short prompts only
  std::vector<int32_t> generated_ids;               // 16 greedy tokens
  std::vector<std::vector<float>> logits;           // row i chose generated_ids[i]
  std::vector<float> margins;                       // top-1 minus top-2 of each row
};

inline std::vector<GoldenCase> LoadGolden(const std::string& fixture) {
  std::ifstream in(FixtureDir(fixture) + "/golden.json");
  std::stringstream s;
  s << in.rdbuf();
  nlohmann::json j = nlohmann::json::parse(s.str());
  std::vector<GoldenCase> cases;
  for (const auto& c : j.at("cases")) {
    GoldenCase g;
    g.name = c.at("name").get<std::string>();
    g.prompt_ids = c.at("prompt_ids").get<std::vector<int32_t>>();
    if (c.contains("position_logits")) g.position_logits = c.at("position_logits").get<std::vector<std::vector<float>>>();
    g.generated_ids = c.at("generated_ids").get<std::vector<int32_t>>();
    g.logits = c.at("logits").get<std::vector<std::vector<float>>>();
    g.margins = c.at("margins").get<std::vector<float>>();
    cases.push_back(std::move(g));
  }
  return cases;
}

// ||a - b|| / ||b||
inline double RelL2(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}
inline double RelL2(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  return RelL2(a.data(), b.data(), std::min(a.size(), b.size()));
}

inline std::unique_ptr<Model> LoadModel(const std::string& fixture, const ModelOptions& options = {}) {
  absl::StatusOr<std::unique_ptr<Model>> m = Model::Load(FixtureDir(fixture), options);
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? std::move(*m) : nullptr;
}

// Logits of every position of `tokens`, computed in one prefill step.
inline std::vector<float> PrefillAllLogits(Model& model, const std::vector<int32_t>& tokens,
                                           CacheDType dtype = CacheDType::kF32) {
  const int64_t blocks = static_cast<int64_t>(tokens.size()) / kDefaultBlockSize + 1;
  PagedLatentCache cache = model.MakeCache(blocks, dtype);
  cache.Poison();
  std::vector<int32_t> table;
  for (int64_t b = 0; b < blocks; ++b) table.push_back(static_cast<int32_t>(blocks - 1 - b));
  SequenceStep step{tokens, 0, table, true};
  absl::StatusOr<std::vector<float>> logits = model.Forward(std::span<const SequenceStep>(&step, 1), cache);
  EXPECT_TRUE(logits.ok()) << logits.status();
  return logits.ok() ? *logits : std::vector<float>();
}

// Greedy generation with the logits of each step recorded.
inline GenerationResult GenerateGreedy(Model& model, const std::vector<int32_t>& prompt, int64_t n,
                                       CacheDType dtype = CacheDType::kF32, int64_t prefill_chunk = 0) {
  const int64_t blocks = (static_cast<int64_t>(prompt.size()) + n) / kDefaultBlockSize + 1;
  PagedLatentCache cache = model.MakeCache(blocks, dtype);
  cache.Poison();
  BlockAllocator allocator(blocks);
  GenerationRequest req;
  req.prompt_ids = prompt;
  req.max_new_tokens = n;
  req.record_logits = true;
  req.prefill_chunk = prefill_chunk;
  absl::StatusOr<std::vector<GenerationResult>> r =
      Generate(model, cache, allocator, std::span<const GenerationRequest>(&req, 1));
  EXPECT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(allocator.num_free(), blocks);
  return r.ok() ? (*r)[0] : GenerationResult();
}

}  // namespace mla::golden
