// Two launchers as two nodes on loopback (node 0 runs the coordinator) serve
// the same tokens as one launcher with the same world size.
#include "serving_harness.h"
#include "tests/golden/golden_fixture.h"

namespace mla::testing {
namespace {

std::vector<std::vector<int32_t>> ServeAll(Client& client, const std::vector<golden::GoldenCase>& cases) {
  std::vector<std::vector<int32_t>> out;
  for (const auto& c : cases) {
    GenerateOutcome g = client.Generate(Greedy(c.prompt_ids, 16, 0));
    EXPECT_TRUE(g.status.ok()) << g.status.error_message();
    out.push_back(g.ids());
  }
  return out;
}

TEST(MultiNodeTest, TwoNodesServeLikeOne) {
  const auto cases = golden::LoadGolden("v3_bf16");
  std::vector<std::vector<int32_t>> single, split;
  {
    const int port = FreePort();
    auto launch = Launch::Start({"--model", FixtureDir("v3_bf16"), "--tp", "4", "--port", std::to_string(port),
                                 "--threads", "1"});
    ASSERT_NE(launch, nullptr);
    Client client(absl::StrCat("127.0.0.1:", port));
    ASSERT_TRUE(client.WaitServing(absl::Seconds(60)));
    single = ServeAll(client, cases);
  }
  {
    const int port = FreePort();
    const std::string coordinator = absl::StrCat("127.0.0.1:", port);
    auto node0 = Launch::Start({"--model", FixtureDir("v3_bf16"), "--tp", "4", "--port", std::to_string(port),
                                "--nnodes", "2", "--node-rank", "0", "--threads", "1"});
    auto node1 = Launch::Start({"--model", FixtureDir("v3_bf16"), "--tp", "4", "--nnodes", "2", "--node-rank", "1",
                                "--coordinator", coordinator, "--threads", "1"});
    ASSERT_NE(node0, nullptr);
    ASSERT_NE(node1, nullptr);
    Client client(coordinator);
    ASSERT_TRUE(client.WaitServing(absl::Seconds(60)));
    serving::v1::ModelInfo info;
    ASSERT_TRUE(client.Info(&info).ok());
    EXPECT_EQ(info.ranks_size(), 4);
    split = ServeAll(client, cases);
    // Node 0 going down takes node 1's workers with it.
    ASSERT_TRUE(node0->process().Signal(SIGTERM).ok());
    EXPECT_TRUE(node0->process().Wait(absl::Seconds(15)).has_value());
    EXPECT_TRUE(node1->process().Wait(absl::Seconds(15)).has_value());
  }
  EXPECT_EQ(single, split);
  for (size_t i = 0; i < cases.size(); ++i) EXPECT_EQ(single[i], cases[i].generated_ids) << cases[i].name;
}

}  // namespace
}  // namespace mla::testing

int main(int argc, char** argv) {
  mla::MaybeRunExecChild(argc, argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
