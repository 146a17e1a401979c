// The golden tolerance is meaningful: a deliberately wrong softmax scale or
// RoPE pairing moves the logits far beyond it.
#include "golden_fixture.h"

namespace mla::golden {
namespace {

constexpr double kPrefillTolerance = 1e-4;
constexpr double kFarBeyond = 100 * kPrefillTolerance;

double LongPromptError(const ModelOptions& options) {
  std::unique_ptr<Model> model = LoadModel("v3_bf16", options);
  const GoldenCase c = LoadGolden("v3_bf16").back();  // 210 tokens: YaRN frequencies matter
  std::vector<float> all = PrefillAllLogits(*model, c.prompt_ids);
  const int64_t vocab = model->config().vocab_size;
  return RelL2(&all[all.size() - vocab], c.logits[0].data(), vocab);
}

TEST(SensitivityTest, CorrectConventionsAreWithinTolerance) {
  EXPECT_LT(LongPromptError(ModelOptions{}), kPrefillTolerance);
}

TEST(SensitivityTest, SoftmaxScaleWithoutYarnMscaleIsFarOff) {
  ModelOptions o;
  o.softmax_scale_multiplier = 1.0f / 1.36888794f / 1.36888794f;  // drop mscale(40, 1)^2
  EXPECT_GT(LongPromptError(o), kFarBeyond);
}

TEST(SensitivityTest, RopeHalvesPairingIsFarOff) {
  ModelOptions o;
  o.rope_pairing = cpu::RopePairing::kHalves;
  EXPECT_GT(LongPromptError(o), kFarBeyond);
}

}  // namespace
}  // namespace mla::golden
