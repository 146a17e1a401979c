// mla-launch flags: defaults, validation messages (pinned), and the exact
// coordinator/worker command lines built from them.
#include "launcher/launch_options.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace mla {
namespace {

absl::StatusOr<LaunchOptions> Parse(std::vector<std::string> args, int64_t cores = 8) {
  args.insert(args.begin(), "mla-launch");
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  return ParseLaunchOptions(static_cast<int>(args.size()), argv.data(), cores);
}

std::string Error(std::vector<std::string> args) {
  absl::StatusOr<LaunchOptions> o = Parse(std::move(args));
  EXPECT_FALSE(o.ok());
  if (o.ok()) return "";
  EXPECT_EQ(o.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(o.status().message());
}

TEST(LaunchOptionsTest, Defaults) {
  absl::StatusOr<LaunchOptions> o = Parse({"--model", "/m"}, /*cores=*/8);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->model_dir, "/m");
  EXPECT_EQ(o->tp, 1);
  EXPECT_EQ(o->backend, "cpu");
  EXPECT_EQ(o->host, "127.0.0.1");
  EXPECT_EQ(o->port, 50051);
  EXPECT_EQ(o->nnodes, 1);
  EXPECT_EQ(o->node_rank, 0);
  EXPECT_EQ(o->coordinator, "127.0.0.1:50051");
  EXPECT_EQ(o->restarts, 0);
  EXPECT_FALSE(o->num_blocks.has_value());
  EXPECT_FALSE(o->kv_cache_dtype.has_value());
  EXPECT_EQ(o->threads, 8);
  EXPECT_EQ(o->step_timeout_ms, 5000);
  EXPECT_EQ(o->grace_ms, 3000);
  EXPECT_EQ(o->bin_dir, "");
  EXPECT_EQ(o->local_world_size(), 1);
}

TEST(LaunchOptionsTest, ThreadsDefaultSplitsCoresOverLocalRanks) {
  EXPECT_EQ(Parse({"--model", "/m", "--tp", "4"}, 8)->threads, 2);
  EXPECT_EQ(Parse({"--model", "/m", "--tp", "4"}, 2)->threads, 1);  // at least one
  EXPECT_EQ(Parse({"--model", "/m", "--tp", "3"}, 8)->threads, 2);  // rounded down
  EXPECT_EQ(Parse({"--model", "/m", "--tp", "4", "--nnodes", "2"}, 8)->threads, 4);
  EXPECT_EQ(Parse({"--model", "/m", "--tp", "4", "--threads", "3"}, 8)->threads, 3);
}

TEST(LaunchOptionsTest, ErrorMessages) {
  EXPECT_EQ(Error({}), "--model DIR is required (the model directory)");
#ifdef MLA_LAUNCH_WITH_CUDA
  EXPECT_TRUE(Parse({"--model", "/m", "--backend", "cuda"}, 8).ok());
#else
  EXPECT_EQ(Error({"--model", "/m", "--backend", "cuda"}),
            "--backend cuda: this build has no CUDA backend (expected cpu)");
#endif
  EXPECT_EQ(Error({"--model", "/m", "--backend", "tpu"}), "--backend 'tpu' (expected cpu or cuda)");
  EXPECT_EQ(Error({"--model", "/m", "--tp", "0"}), "--tp '0' (expected an integer >= 1)");
  EXPECT_EQ(Error({"--model", "/m", "--tp", "two"}), "--tp 'two' (expected an integer >= 1)");
  EXPECT_EQ(Error({"--model", "/m", "--nnodes", "0"}), "--nnodes '0' (expected an integer >= 1)");
  EXPECT_EQ(Error({"--model", "/m", "--tp", "2", "--nnodes", "2", "--node-rank", "2", "--coordinator", "h:1"}),
            "--node-rank 2 (expected 0 <= node-rank < --nnodes 2)");
  EXPECT_EQ(Error({"--model", "/m", "--node-rank", "-1"}), "--node-rank '-1' (expected an integer >= 0)");
  EXPECT_EQ(Error({"--model", "/m", "--tp", "3", "--nnodes", "2"}),
            "--tp 3 does not divide by --nnodes 2 (each node runs tp / nnodes workers)");
  EXPECT_EQ(Error({"--model", "/m", "--tp", "2", "--nnodes", "2", "--node-rank", "1"}),
            "--coordinator HOST:PORT is required when --node-rank > 0 (got 1; node 0 runs the coordinator)");
  EXPECT_EQ(Error({"--model", "/m", "--port", "0"}), "--port '0' (expected an integer >= 1)");
  EXPECT_EQ(Error({"--model", "/m", "--port", "70000"}), "--port '70000' (expected 1..65535)");
  EXPECT_EQ(Error({"--model", "/m", "--host", ""}), "--host is empty (expected an address such as 127.0.0.1)");
  EXPECT_EQ(Error({"--model", "/m", "--coordinator", "nohost"}),
            "--coordinator 'nohost' (expected HOST:PORT, port 1..65535)");
  EXPECT_EQ(Error({"--model", "/m", "--coordinator", ":50051"}),
            "--coordinator ':50051' (expected HOST:PORT, port 1..65535)");
  EXPECT_EQ(Error({"--model", "/m", "--coordinator", "h:99999"}),
            "--coordinator 'h:99999' (expected HOST:PORT, port 1..65535)");
  EXPECT_EQ(Error({"--model", "/m", "--coordinator", "h:1", "--port", "2"}),
            "--coordinator 'h:1' names port 1 but --port is 2 (they must agree)");
  EXPECT_EQ(Error({"--model", "/m", "--restart", "-1"}), "--restart '-1' (expected an integer >= 0)");
  EXPECT_EQ(Error({"--model", "/m", "--num-blocks", "0"}), "--num-blocks '0' (expected an integer >= 1)");
  EXPECT_EQ(Error({"--model", "/m", "--kv-cache-dtype", "fp16"}), "--kv-cache-dtype 'fp16' (expected fp32 or bf16)");
  EXPECT_EQ(Error({"--model", "/m", "--threads", "0"}), "--threads '0' (expected an integer >= 1)");
  EXPECT_EQ(Error({"--model", "/m", "--step-timeout-ms", "0"}), "--step-timeout-ms '0' (expected an integer >= 1)");
  EXPECT_EQ(Error({"--model", "/m", "--grace-ms", "-5"}), "--grace-ms '-5' (expected an integer >= 0)");
  EXPECT_EQ(Error({"--model", "/m", "--bogus", "1"}), "unknown flag --bogus (see --help)");
  EXPECT_EQ(Error({"--model", "/m", "extra"}), "unexpected argument 'extra' (expected --flag)");
  EXPECT_EQ(Error({"--model"}), "--model needs a value");
  EXPECT_EQ(Error({"--model", "/m", "--exec-child", "1"}), "unknown flag --exec-child (see --help)");
}

TEST(LaunchOptionsTest, CoordinatorArgv) {
  absl::StatusOr<LaunchOptions> o =
      Parse({"--model", "/models/v3", "--tp", "2", "--host", "10.0.0.5", "--port", "6000", "--step-timeout-ms", "750",
             "--num-blocks", "64"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(CoordinatorArgs(*o), (std::vector<std::string>{"--model", "/models/v3", "--tp", "2", "--host", "10.0.0.5",
                                                           "--port", "6000", "--backend", "cpu", "--step-timeout-ms",
                                                           "750"}));
}

TEST(LaunchOptionsTest, WorkerArgvAndEnv) {
  absl::StatusOr<LaunchOptions> o = Parse({"--model", "/models/v3", "--tp", "2", "--port", "6000", "--threads", "3"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(WorkerArgs(*o, 1),
            (std::vector<std::string>{"--model", "/models/v3", "--coordinator", "127.0.0.1:6000", "--node-rank", "0",
                                      "--local-rank", "1", "--local-world-size", "2", "--host", "127.0.0.1",
                                      "--backend", "cpu", "--threads", "3"}));
  EXPECT_EQ(WorkerEnv(*o), (std::vector<std::string>{"OPENBLAS_NUM_THREADS=3", "OMP_NUM_THREADS=3"}));
  EXPECT_EQ(WorkerName(*o, 1), "worker rank 1");
}

TEST(LaunchOptionsTest, WorkerArgvOptionalFlags) {
  absl::StatusOr<LaunchOptions> o =
      Parse({"--model", "/m", "--threads", "1", "--num-blocks", "128", "--kv-cache-dtype", "bf16"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(WorkerArgs(*o, 0),
            (std::vector<std::string>{"--model", "/m", "--coordinator", "127.0.0.1:50051", "--node-rank", "0",
                                      "--local-rank", "0", "--local-world-size", "1", "--host", "127.0.0.1",
                                      "--backend", "cpu", "--threads", "1", "--num-blocks", "128", "--kv-cache-dtype",
                                      "bf16"}));
}

// --decode-kernel is checked here (a bad spec fails before any child starts)
// and handed to every worker as given; the CPU backend has no kernel choice.
TEST(LaunchOptionsTest, DecodeKernel) {
  EXPECT_EQ(Error({"--model", "/m", "--decode-kernel", "mma=wgmma"}),
            "--decode-kernel 'mma=wgmma': mma=wgmma (expected mma=sync|warpgroup)");
  EXPECT_EQ(Error({"--model", "/m", "--decode-kernel", "pdl"}),
            "--decode-kernel with --backend cpu (expected --backend cuda: the CPU model has one decode kernel)");
  absl::StatusOr<LaunchOptions> o = Parse({"--model", "/m", "--threads", "1", "--decode-kernel", "default"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(WorkerArgs(*o, 0).back(), "default");
#ifdef MLA_LAUNCH_WITH_CUDA
  o = Parse({"--model", "/m", "--backend", "cuda", "--threads", "1", "--decode-kernel", "mma=warpgroup,copy=bulk"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(WorkerArgs(*o, 0),
            (std::vector<std::string>{"--model", "/m", "--coordinator", "127.0.0.1:50051", "--node-rank", "0",
                                      "--local-rank", "0", "--local-world-size", "1", "--host", "127.0.0.1",
                                      "--backend", "cuda", "--threads", "1", "--decode-kernel",
                                      "mma=warpgroup,copy=bulk"}));
#endif
}

// --moe-grouping likewise: checked here, to every worker as given; the CPU
// backend groups on the host only.
TEST(LaunchOptionsTest, MoeGrouping) {
  EXPECT_EQ(Error({"--model", "/m", "--moe-grouping", "gpu"}), "--moe-grouping 'gpu' (expected host or device)");
  EXPECT_EQ(Error({"--model", "/m", "--moe-grouping", "device"}),
            "--moe-grouping device with --backend cpu (expected --backend cuda: the CPU model groups on the host)");
  absl::StatusOr<LaunchOptions> o = Parse({"--model", "/m", "--threads", "1", "--moe-grouping", "host"});
  ASSERT_TRUE(o.ok()) << o.status();
  const std::vector<std::string> args = WorkerArgs(*o, 0);
  ASSERT_GE(args.size(), 2u);
  EXPECT_EQ(args[args.size() - 2], "--moe-grouping");
  EXPECT_EQ(args.back(), "host");
#ifdef MLA_LAUNCH_WITH_CUDA
  o = Parse({"--model", "/m", "--backend", "cuda", "--threads", "1", "--moe-grouping", "device"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(WorkerArgs(*o, 0).back(), "device");
  o = Parse({"--model", "/m", "--backend", "cuda", "--threads", "1", "--decode-graphs"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(WorkerArgs(*o, 0).back(), "--decode-graphs");
#endif
  EXPECT_EQ(Error({"--model", "/m", "--decode-graphs"}),
            "--decode-graphs with --backend cpu (expected --backend cuda: CUDA graphs are the GPU's)");
}

TEST(LaunchOptionsTest, SecondNodeDialsTheCoordinator) {
  absl::StatusOr<LaunchOptions> o = Parse({"--model", "/m", "--tp", "4", "--nnodes", "2", "--node-rank", "1",
                                           "--coordinator", "node0.cluster:7000", "--host", "10.0.0.6",
                                           "--threads", "2"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_FALSE(o->runs_coordinator());
  EXPECT_EQ(o->port, 7000);
  EXPECT_EQ(o->local_world_size(), 2);
  EXPECT_EQ(WorkerArgs(*o, 1),
            (std::vector<std::string>{"--model", "/m", "--coordinator", "node0.cluster:7000", "--node-rank", "1",
                                      "--local-rank", "1", "--local-world-size", "2", "--host", "10.0.0.6",
                                      "--backend", "cpu", "--threads", "2"}));
  EXPECT_EQ(WorkerName(*o, 1), "worker node-rank 1 local-rank 1");
  EXPECT_EQ(ServingLine(*o),
            "mla-launch: node 1/2 serving /m at node0.cluster:7000 (tp 4, 2 local workers, backend cpu)");
}

TEST(LaunchOptionsTest, OneCommandLineForEveryNode) {
  // Node 0 accepts --coordinator too (its port must match --port), so a recipe can
  // pass the same flags to every node and vary only --node-rank.
  absl::StatusOr<LaunchOptions> o = Parse({"--model", "/m", "--tp", "2", "--nnodes", "2", "--node-rank", "0",
                                           "--host", "0.0.0.0", "--port", "7000", "--coordinator", "node0:7000"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_TRUE(o->runs_coordinator());
  EXPECT_EQ(o->coordinator, "node0:7000");
  EXPECT_EQ(CoordinatorArgs(*o)[5], "0.0.0.0");  // binds --host
  EXPECT_EQ(CoordinatorArgs(*o)[7], "7000");
  // Without --port, node 0 takes the coordinator's port.
  EXPECT_EQ(Parse({"--model", "/m", "--coordinator", "node0:7001"})->port, 7001);
}

TEST(LaunchOptionsTest, ServingLineOnNodeZero) {
  absl::StatusOr<LaunchOptions> o = Parse({"--model", "/models/v3", "--tp", "2", "--port", "6000"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(ServingLine(*o),
            "mla-launch: node 0/1 serving /models/v3 at 127.0.0.1:6000 (tp 2, 2 local workers, backend cpu)");
}

TEST(LaunchOptionsTest, Ipv6HostIsBracketed) {
  absl::StatusOr<LaunchOptions> o = Parse({"--model", "/m", "--host", "::1"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->coordinator, "[::1]:50051");
  auto hp = ParseHostPort("coordinator", "[::1]:7000");
  ASSERT_TRUE(hp.ok()) << hp.status();
  EXPECT_EQ(hp->first, "[::1]");
  EXPECT_EQ(hp->second, 7000);
}

TEST(LaunchOptionsTest, ModelDirMustExist) {
  EXPECT_TRUE(CheckModelDir(MLA_TEST_DATA_DIR).ok());
  absl::Status s = CheckModelDir("/nonexistent/model");
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.message(), "--model '/nonexistent/model' is not a directory");
}

}  // namespace
}  // namespace mla
