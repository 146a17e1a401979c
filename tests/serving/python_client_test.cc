// The Python client example (launcher/mla_client.py, Debian's python3-grpcio
// and the build's stubs) against a served group: the same tokens as the C++
// API, and RPC errors reported by code.
#include <sys/wait.h>

#include "nlohmann/json.hpp"
#include "serving_fixture.h"

namespace mla::testing {
namespace {

struct Output {
  int code;
  std::string out, err;
};

Output RunPython(const std::string& args, const std::string& dir) {
  const std::string out = dir + "/py.out", err = dir + "/py.err";
  const std::string cmd = "PYTHONPATH=" + std::string(MLA_PYTHON_STUBS) + " timeout 60 /usr/bin/python3 " +
                          std::string(MLA_PYTHON_CLIENT) + " " + args + " >" + out + " 2>" + err;
  int status = std::system(cmd.c_str());
  auto read = [](const std::string& p) {
    std::ifstream in(p);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  };
  return Output{WIFEXITED(status) ? WEXITSTATUS(status) : -1, read(out), read(err)};
}

TEST_F(ServingTest, PythonClientGeneratesTheSameTokens) {
  Serve(2);
  const std::string dir = std::filesystem::temp_directory_path() / ("mla_py_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string server = absl::StrCat("--server 127.0.0.1:", port_);

  GenerateOutcome cpp = client_->Generate(Greedy({3, 1, 4, 1, 5, 9, 2, 6}, 12, 0));
  ASSERT_TRUE(cpp.status.ok());
  Output py = RunPython(server + " generate --prompt-ids 3,1,4,1,5,9,2,6 --max-new-tokens 12 --ignore-eos", dir);
  ASSERT_EQ(py.code, 0) << py.err;
  std::vector<std::string> lines;
  std::stringstream ss(py.out);
  for (std::string line; std::getline(ss, line);) lines.push_back(line);
  ASSERT_EQ(lines.size(), 13u) << py.out;  // 12 streamed ids, then the JSON line
  for (size_t i = 0; i < 12; ++i) EXPECT_EQ(std::stoi(lines[i]), cpp.ids()[i]);
  nlohmann::json final = nlohmann::json::parse(lines.back());
  EXPECT_EQ(final["generated_ids"].get<std::vector<int32_t>>(), cpp.ids());
  EXPECT_EQ(final["finish_reason"], "length");

  Output health = RunPython(server + " health --service mla.serving.v1.Inference", dir);
  EXPECT_EQ(health.code, 0);
  EXPECT_EQ(health.out, "SERVING\n");

  Output bad = RunPython(server + " generate --prompt-ids 1,2 --max-new-tokens 4 --temperature -1", dir);
  EXPECT_EQ(bad.code, 1);
  EXPECT_NE(bad.err.find("rpc error: INVALID_ARGUMENT: sampling.temperature -1"), std::string::npos) << bad.err;
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace mla::testing

int main(int argc, char** argv) {
  mla::MaybeRunExecChild(argc, argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
