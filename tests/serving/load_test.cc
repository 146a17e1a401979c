// A bounded load test against --tp 2 on loopback: 64 concurrent streams, 320
// requests. Every request completes, no cache block leaks, and resident memory
// after the run stays within 10% of its value after warm-up. Prints requests/s,
// tokens/s and latency percentiles (a report, not a timed assertion).
#include <atomic>
#include <thread>

#include "serving_fixture.h"

namespace mla::testing {
namespace {

constexpr int kStreams = 64;
constexpr int kRequests = 320;

// Resident set size in KiB of one process.
int64_t RssKiB(int64_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6));
  }
  return 0;
}

// Children of a process (the launcher's coordinator and workers).
std::vector<int64_t> Children(int64_t pid) {
  std::vector<int64_t> out;
  for (const auto& task : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task")) {
    std::ifstream in(task.path() / "children");
    for (int64_t c; in >> c;) out.push_back(c);
  }
  return out;
}

int64_t GroupRssKiB(const std::vector<int64_t>& pids) {
  int64_t total = 0;
  for (int64_t p : pids) total += RssKiB(p);
  return total;
}

double Percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(q * static_cast<double>(v.size() - 1))];
}

struct RunStats {
  int ok = 0;
  int64_t tokens = 0;
  double seconds = 0;
  std::vector<double> ttft_ms, total_ms;
};

RunStats RunLoad(Client& client, int requests, uint32_t salt) {
  std::atomic<int> next{0};
  std::mutex mu;
  RunStats stats;
  const absl::Time t0 = absl::Now();
  std::vector<std::thread> threads;
  for (int s = 0; s < kStreams; ++s) {
    threads.emplace_back([&, s] {
      for (int i; (i = next.fetch_add(1)) < requests;) {
        serving::v1::GenerateRequest r = Greedy(RandomPrompt(20 + (i * 7) % 80, salt + i), 16 + i % 33, 0);
        if (i % 4 == 1) r.mutable_sampling()->set_temperature(0.7f);
        const absl::Time start = absl::Now();
        GenerateOutcome o = client.Generate(r, absl::Seconds(120));
        const double total = absl::ToDoubleMilliseconds(absl::Now() - start);
        std::lock_guard<std::mutex> lock(mu);
        if (!o.status.ok() || static_cast<int>(o.tokens.size()) != r.max_new_tokens()) {
          ADD_FAILURE() << "request " << i << " (stream " << s << "): " << o.status.error_message();
          continue;
        }
        ++stats.ok;
        stats.tokens += static_cast<int64_t>(o.tokens.size());
        stats.ttft_ms.push_back(static_cast<double>(o.final.time_to_first_token_us()) / 1000.0);
        stats.total_ms.push_back(total);
      }
    });
  }
  for (auto& t : threads) t.join();
  stats.seconds = absl::ToDoubleSeconds(absl::Now() - t0);
  return stats;
}

TEST_F(ServingTest, SixtyFourStreamsAllCompleteWithoutLeaks) {
  Serve(2, {"--max-num-seqs", "64"});
  const std::vector<int64_t> pids = Children(launch_->process().pid());
  ASSERT_EQ(pids.size(), 3u);  // coordinator + 2 workers

  RunStats warm = RunLoad(*client_, kStreams, 1000);
  ASSERT_EQ(warm.ok, kStreams);
  ASSERT_TRUE(WaitIdle());
  const int64_t rss_warm = GroupRssKiB(pids);

  RunStats run = RunLoad(*client_, kRequests, 5000);
  EXPECT_EQ(run.ok, kRequests);
  EXPECT_TRUE(WaitIdle()) << "cache blocks still in use after every request ended";
  const int64_t rss_after = GroupRssKiB(pids);

  printf("load: %d requests over %d streams in %.1f s: %.1f requests/s, %.0f tokens/s\n", run.ok, kStreams,
         run.seconds, run.ok / run.seconds, static_cast<double>(run.tokens) / run.seconds);
  printf("time to first token ms: p50 %.1f  p90 %.1f  p99 %.1f\n", Percentile(run.ttft_ms, 0.5),
         Percentile(run.ttft_ms, 0.9), Percentile(run.ttft_ms, 0.99));
  printf("request latency ms:     p50 %.1f  p90 %.1f  p99 %.1f\n", Percentile(run.total_ms, 0.5),
         Percentile(run.total_ms, 0.9), Percentile(run.total_ms, 0.99));
  printf("resident memory (coordinator + 2 workers): %.1f MiB after warm-up, %.1f MiB after the run\n",
         rss_warm / 1024.0, rss_after / 1024.0);
  EXPECT_LE(rss_after, rss_warm * 11 / 10);
  EXPECT_EQ(Metric("mla_requests_running"), 0);
}

}  // namespace
}  // namespace mla::testing

int main(int argc, char** argv) {
  mla::MaybeRunExecChild(argc, argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
