#include "runtime/metrics.h"

#include <cmath>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mla {
namespace {

using ::testing::HasSubstr;

TEST(MetricsTest, CounterRendersHelpTypeAndValue) {
  Registry registry;
  Counter* counter = registry.AddCounter("mla_tokens_total", "Tokens.").value();
  counter->Add(3);
  counter->Increment();
  counter->Add(0.5);
  EXPECT_EQ(registry.RenderText(),
            "# HELP mla_tokens_total Tokens.\n"
            "# TYPE mla_tokens_total counter\n"
            "mla_tokens_total 4.5\n");
}

TEST(MetricsTest, CounterIgnoresNegativeAndNanDeltas) {
  Registry registry;
  Counter* counter = registry.AddCounter("c_total", "C.").value();
  counter->Add(2);
  counter->Add(-1);
  counter->Add(std::nan(""));
  EXPECT_EQ(counter->Value(), 2);
}

TEST(MetricsTest, GaugeSetsAddsAndRendersConstantLabelsInOrder) {
  Registry registry;
  Gauge* gauge = registry.AddGauge("mla_blocks", "Blocks.", {{"zone", "b"}, {"rank", "0"}}).value();
  gauge->Set(10);
  gauge->Add(-2.25);
  EXPECT_EQ(gauge->Value(), 7.75);
  EXPECT_EQ(registry.RenderText(),
            "# HELP mla_blocks Blocks.\n"
            "# TYPE mla_blocks gauge\n"
            "mla_blocks{zone=\"b\",rank=\"0\"} 7.75\n");
}

TEST(MetricsTest, HistogramRendersCumulativeBucketsInfSumAndCount) {
  Registry registry;
  Histogram* histogram =
      registry.AddHistogram("lat_seconds", "Latency.", {0.25, 1, 2.5}, {{"path", "decode"}}).value();
  // Upper bounds are inclusive: 0.25 lands in le="0.25", 1 in le="1". Dyadic
  // values keep the sum exact.
  for (double v : {0.125, 0.25, 0.5, 1.0, 2.0, 100.0}) histogram->Observe(v);
  histogram->Observe(std::nan(""));  // dropped
  EXPECT_EQ(registry.RenderText(),
            "# HELP lat_seconds Latency.\n"
            "# TYPE lat_seconds histogram\n"
            "lat_seconds_bucket{path=\"decode\",le=\"0.25\"} 2\n"
            "lat_seconds_bucket{path=\"decode\",le=\"1\"} 4\n"
            "lat_seconds_bucket{path=\"decode\",le=\"2.5\"} 5\n"
            "lat_seconds_bucket{path=\"decode\",le=\"+Inf\"} 6\n"
            "lat_seconds_sum{path=\"decode\"} 103.875\n"
            "lat_seconds_count{path=\"decode\"} 6\n");
  const Histogram::Snapshot snapshot = histogram->Read();
  EXPECT_EQ(snapshot.cumulative_counts, (std::vector<uint64_t>{2, 4, 5, 6}));
  EXPECT_EQ(snapshot.count, 6u);
}

TEST(MetricsTest, EmptyHistogramRendersZerosAndObservesDurations) {
  Registry registry;
  Histogram* histogram = registry.AddHistogram("h_seconds", "", {0.001}).value();
  EXPECT_EQ(registry.RenderText(),
            "# TYPE h_seconds histogram\n"
            "h_seconds_bucket{le=\"0.001\"} 0\n"
            "h_seconds_bucket{le=\"+Inf\"} 0\n"
            "h_seconds_sum 0\n"
            "h_seconds_count 0\n");
  histogram->Observe(absl::Microseconds(500));
  EXPECT_EQ(histogram->Read().cumulative_counts, (std::vector<uint64_t>{1, 1}));
  EXPECT_DOUBLE_EQ(histogram->Read().sum, 0.0005);
}

TEST(MetricsTest, LabelValuesAndHelpAreEscaped) {
  Registry registry;
  registry.AddCounter("esc_total", "Back\\slash and\nnewline \"kept\".", {{"v", "a\"b\\c\nd"}})
      .value()
      ->Increment();
  EXPECT_EQ(registry.RenderText(),
            "# HELP esc_total Back\\\\slash and\\nnewline \"kept\".\n"
            "# TYPE esc_total counter\n"
            "esc_total{v=\"a\\\"b\\\\c\\nd\"} 1\n");
}

TEST(MetricsTest, CounterFamilyHasOneSeriesPerDeclaredValueUnderOneHeader) {
  Registry registry;
  CounterFamily family = registry
                             .AddCounterFamily("finished_total", "Finished.", "reason",
                                               {"length", "stop"}, {{"model", "v3"}})
                             .value();
  family.Get("stop").Add(2);
  family.Get("length").Increment();
  EXPECT_EQ(family.Find("error"), nullptr);
  EXPECT_EQ(family.label_name(), "reason");
  EXPECT_EQ(registry.RenderText(),
            "# HELP finished_total Finished.\n"
            "# TYPE finished_total counter\n"
            "finished_total{model=\"v3\",reason=\"length\"} 1\n"
            "finished_total{model=\"v3\",reason=\"stop\"} 2\n");
  EXPECT_DEATH(family.Get("error"), "reason=\"error\" was not declared; declared: length, stop");
}

TEST(MetricsTest, SameNameWithOtherLabelsJoinsTheFamily) {
  Registry registry;
  registry.AddGauge("g", "G.", {{"rank", "0"}}).value()->Set(1);
  registry.AddCounter("c_total", "C.").value();
  registry.AddGauge("g", "G.", {{"rank", "1"}}).value()->Set(2);
  EXPECT_EQ(registry.RenderText(),
            "# HELP g G.\n"
            "# TYPE g gauge\n"
            "g{rank=\"0\"} 1\n"
            "g{rank=\"1\"} 2\n"
            "# HELP c_total C.\n"
            "# TYPE c_total counter\n"
            "c_total 0\n");
}

TEST(MetricsTest, DuplicatesAndClashesAreRefused) {
  Registry registry;
  ASSERT_TRUE(registry.AddGauge("g", "G.", {{"a", "1"}, {"b", "2"}}).ok());
  // Same label set in another order is the same series.
  absl::Status status = registry.AddGauge("g", "G.", {{"b", "2"}, {"a", "1"}}).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(status.message(), HasSubstr("g{b=\"2\",a=\"1\"} is already registered"));

  status = registry.AddCounter("g", "G.").status();
  EXPECT_EQ(status.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(status.message(), HasSubstr("clashes with gauge g"));

  status = registry.AddGauge("g", "Other help.", {{"a", "2"}}).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("differs from the earlier \"G.\""));

  ASSERT_TRUE(registry.AddHistogram("lat", "L.", {1}).ok());
  status = registry.AddCounter("lat_count", "C.").status();
  EXPECT_EQ(status.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(status.message(), HasSubstr("which exposes lat_count"));
  status = registry.AddHistogram("lat", "L.", {2}, {{"x", "y"}}).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("buckets differ"));
}

TEST(MetricsTest, BadNamesLabelsAndBucketsAreRefusedWithTheReason) {
  Registry registry;
  for (const char* bad : {"", "1abc", "a-b", "a b", "é", "x{}"}) {
    const absl::Status status = registry.AddCounter(bad, "Bad.").status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(status.message(), HasSubstr("expected [a-zA-Z_:][a-zA-Z0-9_:]*")) << bad;
  }
  EXPECT_TRUE(registry.AddCounter("ns:sub_total9", "Colons are allowed.").ok());

  for (const char* bad : {"", "__reserved", "a:b", "9x", "a-b"}) {
    const absl::Status status = registry.AddGauge("g", "G.", {{bad, "v"}}).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(status.message(), HasSubstr("label name")) << bad;
  }
  EXPECT_THAT(registry.AddGauge("g", "G.", {{"a", "1"}, {"a", "2"}}).status().message(),
              HasSubstr("label \"a\" given twice"));
  EXPECT_THAT(registry.AddHistogram("h", "H.", {1}, {{"le", "1"}}).status().message(),
              HasSubstr("\"le\" is reserved"));

  EXPECT_THAT(registry.AddHistogram("h", "H.", {1, 1}).status().message(),
              HasSubstr("strictly increasing, but bound 1 (1) follows 1"));
  EXPECT_THAT(registry.AddHistogram("h", "H.", {2, 1}).status().message(),
              HasSubstr("strictly increasing"));
  EXPECT_THAT(registry.AddHistogram("h", "H.", {1, std::numeric_limits<double>::infinity()})
                  .status()
                  .message(),
              HasSubstr("bucket bound 1 is +Inf; bounds must be finite"));
  EXPECT_THAT(registry.AddHistogram("h", "H.", {std::nan("")}).status().message(),
              HasSubstr("bucket bound 0 is NaN"));
  EXPECT_THAT(registry.AddCounterFamily("f_total", "F.", "reason", {}).status().message(),
              HasSubstr("no values declared for label reason"));
  // Nothing half-registered is rendered.
  EXPECT_EQ(registry.RenderText(),
            "# HELP ns:sub_total9 Colons are allowed.\n"
            "# TYPE ns:sub_total9 counter\n"
            "ns:sub_total9 0\n");
}

TEST(MetricsTest, ValuesFormatAsPrometheusParsesThem) {
  EXPECT_EQ(FormatMetricValue(0), "0");
  EXPECT_EQ(FormatMetricValue(-0.0), "0");
  EXPECT_EQ(FormatMetricValue(1e6), "1000000");
  EXPECT_EQ(FormatMetricValue(-3), "-3");
  EXPECT_EQ(FormatMetricValue(0.005), "0.005");
  EXPECT_EQ(FormatMetricValue(0.1 + 0.2), "0.30000000000000004");  // round-trips exactly
  EXPECT_EQ(FormatMetricValue(1e300), "1e+300");
  EXPECT_EQ(FormatMetricValue(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(FormatMetricValue(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(FormatMetricValue(std::nan("")), "NaN");
}

TEST(MetricsTest, ConcurrentUpdatesFromFourThreadsSumExactly) {
  Registry registry;
  Histogram* histogram = registry.AddHistogram("h", "H.", {0.5, 1}).value();
  Counter* counter = registry.AddCounter("c_total", "C.").value();
  Gauge* gauge = registry.AddGauge("g", "G.").value();
  constexpr int kThreads = 4;
  constexpr int kPerThread = 50000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        // Dyadic values: every partial sum is exact, so the total is order-independent.
        histogram->Observe(t % 2 == 0 ? 0.25 : 2.0);
        counter->Increment();
        gauge->Add(1);
      }
    });
  }
  // Scrape while the writers run: +Inf always equals _count.
  for (int i = 0; i < 20; ++i) {
    const Histogram::Snapshot snapshot = histogram->Read();
    EXPECT_EQ(snapshot.cumulative_counts.back(), snapshot.count);
    (void)registry.RenderText();
  }
  for (auto& thread : threads) thread.join();
  const Histogram::Snapshot snapshot = histogram->Read();
  EXPECT_EQ(snapshot.cumulative_counts,
            (std::vector<uint64_t>{2 * kPerThread, 2 * kPerThread, 4 * kPerThread}));
  EXPECT_EQ(snapshot.sum, 2 * kPerThread * 0.25 + 2 * kPerThread * 2.0);
  EXPECT_EQ(counter->Value(), kThreads * kPerThread);
  EXPECT_EQ(gauge->Value(), kThreads * kPerThread);
}

TEST(ServingMetricsTest, ExportsEveryServingMetricWithHelpAndType) {
  ServingMetrics metrics;
  const std::string text = metrics.registry.RenderText();
  for (const char* histogram :
       {"mla_time_to_first_token_seconds", "mla_inter_token_latency_seconds",
        "mla_step_duration_seconds", "mla_request_queue_seconds", "mla_request_total_seconds"}) {
    EXPECT_THAT(text, HasSubstr(std::string("# TYPE ") + histogram + " histogram\n"));
    EXPECT_THAT(text, HasSubstr(std::string(histogram) + "_bucket{le=\"0.001\"} 0\n"));
    EXPECT_THAT(text, HasSubstr(std::string(histogram) + "_bucket{le=\"60\"} 0\n"));
  }
  for (const char* gauge : {"mla_requests_running", "mla_requests_waiting", "mla_cache_blocks_used",
                            "mla_cache_blocks_total", "mla_cache_usage_ratio"}) {
    EXPECT_THAT(text, HasSubstr(std::string("# TYPE ") + gauge + " gauge\n" + gauge + " 0\n"));
  }
  for (const char* counter :
       {"mla_prompt_tokens_total", "mla_cached_prompt_tokens_total",
        "mla_prefill_tokens_computed_total", "mla_generation_tokens_total", "mla_preemptions_total",
        "mla_prefix_cache_queries_total", "mla_prefix_cache_hits_total"}) {
    EXPECT_THAT(text, HasSubstr(std::string("# TYPE ") + counter + " counter\n" + counter + " 0\n"));
  }
  for (const char* reason : {"length", "stop", "cancelled", "error"}) {
    EXPECT_THAT(text, HasSubstr(std::string("mla_requests_finished_total{reason=\"") + reason +
                                "\"} 0\n"));
  }
  for (const char* code : {"invalid_argument", "resource_exhausted", "unavailable"}) {
    EXPECT_THAT(text,
                HasSubstr(std::string("mla_requests_rejected_total{code=\"") + code + "\"} 0\n"));
  }
  // Every family has help text.
  size_t types = 0, helps = 0;
  for (size_t at = 0; (at = text.find("# TYPE ", at)) != std::string::npos; ++at) ++types;
  for (size_t at = 0; (at = text.find("# HELP ", at)) != std::string::npos; ++at) ++helps;
  EXPECT_EQ(types, 19u);
  EXPECT_EQ(helps, types);
}

TEST(ServingMetricsTest, HelpersUpdateTheRightSeries) {
  ServingMetrics metrics;
  metrics.SetCacheBlocks(30, 120);
  EXPECT_EQ(metrics.cache_usage_ratio.Value(), 0.25);
  metrics.SetCacheBlocks(0, 0);
  EXPECT_EQ(metrics.cache_usage_ratio.Value(), 0.0);
  metrics.SetCacheBlocks(3, 4);

  ASSERT_NE(metrics.RejectedFor(absl::StatusCode::kResourceExhausted), nullptr);
  metrics.RejectedFor(absl::StatusCode::kResourceExhausted)->Increment();
  EXPECT_EQ(metrics.RejectedFor(absl::StatusCode::kInternal), nullptr);
  metrics.requests_finished_total.Get("stop").Add(2);
  metrics.time_to_first_token_seconds.Observe(absl::Milliseconds(15));

  const std::string text = metrics.registry.RenderText();
  EXPECT_THAT(text, HasSubstr("mla_cache_blocks_used 3\n"));
  EXPECT_THAT(text, HasSubstr("mla_cache_blocks_total 4\n"));
  EXPECT_THAT(text, HasSubstr("mla_cache_usage_ratio 0.75\n"));
  EXPECT_THAT(text, HasSubstr("mla_requests_rejected_total{code=\"resource_exhausted\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("mla_requests_finished_total{reason=\"stop\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("mla_time_to_first_token_seconds_bucket{le=\"0.01\"} 0\n"
                              "mla_time_to_first_token_seconds_bucket{le=\"0.02\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("mla_time_to_first_token_seconds_sum 0.015\n"));
}

TEST(ServingMetricsTest, LatencyBucketsSpanOneMillisecondToOneMinute) {
  const std::vector<double>& buckets = ServingMetrics::LatencyBucketsSeconds();
  ASSERT_FALSE(buckets.empty());
  EXPECT_EQ(buckets.front(), 0.001);
  EXPECT_EQ(buckets.back(), 60.0);
  EXPECT_TRUE(std::is_sorted(buckets.begin(), buckets.end()));
}

}  // namespace
}  // namespace mla
