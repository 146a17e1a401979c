// mla-generate as a user runs it: real process, bounded by `timeout`.
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>

#include "absl/strings/str_join.h"
#include "golden_fixture.h"

namespace mla::golden {
namespace {

struct ProcessRun {
  int code;
  std::string out, err;
};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("mla_cli_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  ProcessRun Generate(const std::string& args) {
    std::string out = (dir_ / "out").string(), err = (dir_ / "err").string();
    std::string cmd = "timeout 60 " + std::string(MLA_GENERATE_BIN) + " " + args + " >" + out + " 2>" + err;
    int status = std::system(cmd.c_str());
    return ProcessRun{WIFEXITED(status) ? WEXITSTATUS(status) : -1, ReadFile(out), ReadFile(err)};
  }
  std::filesystem::path dir_;
};

TEST_F(CliTest, GreedyRunWritesLogitsMatchingTransformers) {
  const GoldenCase c = LoadGolden("v3_bf16")[0];
  std::string logits_path = (dir_ / "logits.json").string();
  ProcessRun r = Generate("--model " + FixtureDir("v3_bf16") + " --prompt-ids " + absl::StrJoin(c.prompt_ids, ",") +
                   " --max-new-tokens 16 --threads 2 --logits-out " + logits_path);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, absl::StrJoin(c.generated_ids, ",") + "\n");
  nlohmann::json j = nlohmann::json::parse(ReadFile(logits_path));
  EXPECT_EQ(j.at("prompt_ids").get<std::vector<int32_t>>(), c.prompt_ids);
  EXPECT_EQ(j.at("generated_ids").get<std::vector<int32_t>>(), c.generated_ids);
  auto logits = j.at("logits").get<std::vector<std::vector<float>>>();
  ASSERT_EQ(logits.size(), 16u);
  for (size_t i = 0; i < logits.size(); ++i) EXPECT_LT(RelL2(logits[i], c.logits[i]), 1e-4) << "row " << i;
}

TEST_F(CliTest, DefaultModelAndSamplingFlags) {
  ProcessRun a = Generate("--prompt-ids 3,4,5 --max-new-tokens 5 --temperature 0.8 --top-k 20 --top-p 0.9 --seed 7");
  ProcessRun b = Generate("--prompt-ids 3,4,5 --max-new-tokens 5 --temperature 0.8 --top-k 20 --top-p 0.9 --seed 7 "
                   "--kv-cache-dtype bf16");
  ASSERT_EQ(a.code, 0) << a.err;
  ASSERT_EQ(b.code, 0) << b.err;
  EXPECT_EQ(std::count(a.out.begin(), a.out.end(), ','), 4);
}

TEST_F(CliTest, BadFlagsAndModelsExitTwoWithOneLine) {
  const std::string model = "--model " + FixtureDir("v3_bf16");
  struct Bad {
    std::string args, message;
  };
  std::vector<Bad> cases = {
      {model + " --prompt-ids 1,2 --frobnicate 3", "unknown flag --frobnicate"},
      {model, "--prompt-ids is required"},
      {model + " --prompt-ids 1,x", "'x' is not an integer"},
      {model + " --prompt-ids 1,2 --max-new-tokens 0", "--max-new-tokens '0' (expected an integer >= 1)"},
      {model + " --prompt-ids 1,2 --top-p 1.5", "top_p 1.5 (expected 0 < top_p <= 1)"},
      {model + " --prompt-ids 1,2 --temperature -1", "temperature -1"},
      {model + " --prompt-ids 1,2 --kv-cache-dtype fp8", "kv cache dtype 'fp8'"},
      {model + " --prompt-ids 1,99999", "prompt token id 99999 (expected 0 <= id < vocab_size = 256)"},
      {model + " --prompt-ids 1,2 --max-new-tokens", "--max-new-tokens needs a value"},
      {model + " --prompt-ids 1,2 --decode-kernel mma=warpgroup",
       "--decode-kernel with --backend cpu (expected --backend cuda: the CPU model has one decode kernel)"},
      {model + " --prompt-ids 1,2 --backend cuda --decode-kernel copy=tma",
       "--decode-kernel 'copy=tma': copy=tma (expected copy=cp-async|bulk)"},
      {model + " --prompt-ids 1,2 --moe-grouping device",
       "--moe-grouping device with --backend cpu (expected --backend cuda: the CPU model groups on the host)"},
      {model + " --prompt-ids 1,2 --backend cuda --moe-grouping both", "--moe-grouping 'both' (expected host or device)"},
      {model + " --prompt-ids 1,2 --decode-graphs",
       "--decode-graphs with --backend cpu (expected --backend cuda: CUDA graphs are the GPU's)"},
      {"--model /nonexistent --prompt-ids 1", "/nonexistent/config.json"},
      {"--model " + std::string(MLA_TEST_DATA_DIR) + "/configs/deepseek-v3 --prompt-ids 1",
       "neither model.safetensors nor model.safetensors.index.json"},
  };
  for (const Bad& b : cases) {
    ProcessRun r = Generate(b.args);
    EXPECT_EQ(r.code, 2) << b.args << "\n" << r.err;
    EXPECT_EQ(r.err.rfind("mla-generate: error: ", 0), 0u) << r.err;
    EXPECT_NE(r.err.find(b.message), std::string::npos) << "wanted '" << b.message << "' in: " << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_TRUE(r.out.empty()) << r.out;
  }
}

TEST_F(CliTest, DescribeRealConfigWithoutWeights) {
  ProcessRun r = Generate("--model " + std::string(MLA_TEST_DATA_DIR) + "/configs/deepseek-v3 --describe");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("671.0 billion"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("kv_cache_bytes_per_token: 70272"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace mla::golden
