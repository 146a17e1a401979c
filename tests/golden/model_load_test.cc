// Model::Load on checkpoints that do not match their config: a clear error
// naming the tensor, its file and both shapes; never a crash.
#include <filesystem>

#include "golden_fixture.h"

namespace mla::golden {
namespace {

namespace fs = std::filesystem;

class ModelLoadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("mla_model_load_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    fs::copy_file(FixtureDir("v3_bf16") + "/model.safetensors", dir_ / "model.safetensors");
    std::ifstream in(FixtureDir("v3_bf16") + "/config.json");
    config_ = nlohmann::json::parse(in);
  }
  void TearDown() override { fs::remove_all(dir_); }
  absl::Status Load() {
    std::ofstream(dir_ / "config.json") << config_.dump();
    return Model::Load(dir_.string()).status();
  }
  fs::path dir_;
  nlohmann::json config_;
};

TEST_F(ModelLoadTest, LoadsTheUnchangedCopy) { EXPECT_TRUE(Load().ok()); }

TEST_F(ModelLoadTest, ShapeNotMatchingConfigNamesTensorAndShapes) {
  config_["kv_lora_rank"] = 128;
  absl::Status s = Load();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("model.layers.0.self_attn.kv_a_proj_with_mqa.weight"), std::string::npos) << s;
  EXPECT_NE(s.message().find("model.safetensors"), std::string::npos) << s;
  EXPECT_NE(s.message().find("[176, 128]"), std::string::npos) << s;
  EXPECT_NE(s.message().find("expected [144, 128]"), std::string::npos) << s;
}

TEST_F(ModelLoadTest, MissingLayerNamesTheTensor) {
  config_["num_hidden_layers"] = 5;  // the checkpoint has layers 0-2 (+ the MTP layer 3)
  absl::Status s = Load();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(s.message().find("missing tensor 'model.layers.4."), std::string::npos) << s;
}

TEST_F(ModelLoadTest, DenseConfigOverMoeCheckpoint) {
  config_["first_k_dense_replace"] = 3;
  absl::Status s = Load();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(s.message().find("missing tensor 'model.layers.1.mlp.gate_proj.weight'"), std::string::npos) << s;
}

TEST_F(ModelLoadTest, FewerLayersThanStoredIsServedAsTruncatedModel) {
  // Layers past num_hidden_layers, like the multi-token-prediction layer, are never read.
  config_["num_hidden_layers"] = 2;
  EXPECT_TRUE(Load().ok());
}

}  // namespace
}  // namespace mla::golden
