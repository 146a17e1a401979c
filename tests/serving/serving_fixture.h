// A served group (mla-launch on loopback) per test, with its client and
// Prometheus endpoint.
#pragma once

#include <filesystem>
#include <random>

#include "tests/distributed/serving_harness.h"

namespace mla::testing {

class ServingTest : public ::testing::Test {
 protected:
  // Launches `--tp tp` on the default fixture with `extra` flags; waits until serving.
  void Serve(int tp, std::vector<std::string> extra = {}, const std::string& api_key = "",
             const std::string& tls_ca_pem = "") {
    port_ = FreePort();
    metrics_port_ = FreePort();
    std::vector<std::string> args = {"--model", FixtureDir("v3_bf16"), "--tp", std::to_string(tp), "--port",
                                     std::to_string(port_), "--threads", "1", "--metrics-port",
                                     std::to_string(metrics_port_)};
    args.insert(args.end(), extra.begin(), extra.end());
    launch_ = Launch::Start(args, stderr_path());
    ASSERT_NE(launch_, nullptr);
    client_ = std::make_unique<Client>(absl::StrCat(tls_ca_pem.empty() ? "127.0.0.1:" : "localhost:", port_), api_key,
                                       tls_ca_pem);
    ASSERT_TRUE(client_->WaitServing(absl::Seconds(60))) << ReadStderr();
  }
  void TearDown() override {
    launch_.reset();
    std::filesystem::remove(stderr_path());
  }
  std::string stderr_path() const {
    return (std::filesystem::temp_directory_path() /
            ("mla_serving_" + std::to_string(::getpid()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name() + ".err"))
        .string();
  }
  std::string ReadStderr() const {
    std::ifstream in(stderr_path());
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }
  double Metric(const std::string& series) { return MetricValue(HttpGet(metrics_port_, "/metrics"), series); }
  int64_t BlocksInUse() {
    serving::v1::ModelInfo info;
    EXPECT_TRUE(client_->Info(&info).ok());
    return info.cache_blocks_in_use();
  }
  // Polls until no cache block is referenced (requests gone), up to `timeout`.
  bool WaitIdle(absl::Duration timeout = absl::Seconds(10)) {
    const absl::Time end = absl::Now() + timeout;
    while (absl::Now() < end) {
      if (BlocksInUse() == 0) return true;
      absl::SleepFor(absl::Milliseconds(50));
    }
    return false;
  }

  int port_ = 0;
  int metrics_port_ = 0;
  std::unique_ptr<Launch> launch_;
  std::unique_ptr<Client> client_;
};

// Random prompt ids in [2, 250) (vocab 256), seeded.
inline std::vector<int32_t> RandomPrompt(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> d(2, 249);
  std::vector<int32_t> p;
  for (int i = 0; i < n; ++i) p.push_back(d(rng));
  return p;
}

}  // namespace mla::testing
