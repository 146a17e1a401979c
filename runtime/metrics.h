// Serving metrics in the Prometheus text exposition format 0.0.4, scraped from
// `--metrics-port` at /metrics (see runtime/http_server.h).
//
// A Registry owns every metric; the engine keeps plain pointers (or the
// references in ServingMetrics) and updates them on the hot path. Updates are
// lock-free atomics and never allocate; only registration and RenderText()
// take the registry's mutex.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace mla {

// The Content-Type of RenderText()'s output.
inline constexpr char kPrometheusContentType[] = "text/plain; version=0.0.4; charset=utf-8";

// Constant labels of one metric, rendered in this order: {{"name", "value"}, ...}.
// Names match [a-zA-Z_][a-zA-Z0-9_]* and do not start with "__"; values are any
// UTF-8 and are escaped on output.
using MetricLabels = std::vector<std::pair<std::string, std::string>>;

// A monotonic count (tokens, requests, blocks). Counts up to 2^53 are exact.
class Counter {
 public:
  Counter() = default;
  Counter(const Counter&) = delete;
  Counter& operator=(const Counter&) = delete;

  // `delta` must be >= 0; a negative or NaN delta is a caller bug, logged and
  // dropped so that the counter stays monotonic.
  void Add(double delta);
  void Increment() { Add(1.0); }
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

// A value that goes up and down (running requests, used blocks).
class Gauge {
 public:
  Gauge() = default;
  Gauge(const Gauge&) = delete;
  Gauge& operator=(const Gauge&) = delete;

  void Set(double value) { value_.store(value, std::memory_order_relaxed); }
  void Add(double delta) { value_.fetch_add(delta, std::memory_order_relaxed); }
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

// Counts observations into buckets with fixed upper bounds (inclusive, "le").
// The +Inf bucket is implicit. _count is the sum of the buckets, so a scrape
// always sees le="+Inf" == _count; _sum may lag an Observe() in flight.
class Histogram {
 public:
  // `upper_bounds` strictly increasing and finite; Registry::AddHistogram checks.
  explicit Histogram(std::vector<double> upper_bounds);
  Histogram(const Histogram&) = delete;
  Histogram& operator=(const Histogram&) = delete;

  // NaN observations are dropped (they would poison _sum forever).
  void Observe(double value);
  void Observe(absl::Duration duration) { Observe(absl::ToDoubleSeconds(duration)); }

  struct Snapshot {
    std::vector<uint64_t> cumulative_counts;  // [upper_bounds + 1]; the last is +Inf
    double sum = 0.0;
    uint64_t count = 0;
  };
  Snapshot Read() const;
  const std::vector<double>& upper_bounds() const { return upper_bounds_; }

 private:
  const std::vector<double> upper_bounds_;
  std::vector<std::atomic<uint64_t>> bucket_counts_;  // [upper_bounds + 1], not cumulative
  std::atomic<double> sum_{0.0};
};

// One counter per value of one label (e.g. reason="stop"), all values declared
// up front: every series is exported from the start (as 0), and the hot path
// neither locks nor allocates. Cheap to copy; the counters belong to the Registry.
class CounterFamily {
 public:
  CounterFamily() = default;

  // The counter for `label_value`, or nullptr when it was not declared.
  Counter* Find(std::string_view label_value) const;
  // As Find(); an undeclared value is a bug and CHECK-fails.
  Counter& Get(std::string_view label_value) const;

  const std::string& label_name() const { return label_name_; }
  const std::vector<std::string>& label_values() const { return label_values_; }

 private:
  friend class Registry;
  std::string label_name_;
  std::vector<std::string> label_values_;
  std::vector<Counter*> counters_;  // [label_values]
};

// Thread-safe owner of metrics. A name may be registered several times with
// different label sets (a family); each registration must repeat the same type
// and help text (and, for histograms, the same buckets). Errors:
// InvalidArgument for a bad name, label or bucket list (the message names it);
// AlreadyExists for a name+labels pair already registered, or a name that
// another type (or a histogram's _bucket/_sum/_count series) already uses.
class Registry {
 public:
  Registry();
  ~Registry();
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  absl::StatusOr<Counter*> AddCounter(const std::string& name, const std::string& help,
                                      const MetricLabels& labels = {});
  absl::StatusOr<Gauge*> AddGauge(const std::string& name, const std::string& help,
                                  const MetricLabels& labels = {});
  absl::StatusOr<Histogram*> AddHistogram(const std::string& name, const std::string& help,
                                          std::vector<double> upper_bounds,
                                          const MetricLabels& labels = {});
  // Registers name{const_labels..., label_name="v"} for every v in label_values.
  absl::StatusOr<CounterFamily> AddCounterFamily(const std::string& name, const std::string& help,
                                                 const std::string& label_name,
                                                 const std::vector<std::string>& label_values,
                                                 const MetricLabels& const_labels = {});

  // Every metric in registration order (families grouped under their first
  // registration), Prometheus text format 0.0.4, ending in a newline.
  std::string RenderText() const;

 private:
  struct Family;
  enum class Type { kCounter, kGauge, kHistogram };
  static const char* TypeName(Type type);
  // Validates and finds or creates the family; returns it for the new series.
  absl::StatusOr<Family*> PrepareSeries(const std::string& name, const std::string& help, Type type,
                                        const MetricLabels& labels,
                                        const std::vector<double>* upper_bounds)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<Family>> families_ ABSL_GUARDED_BY(mu_);
};

// True when `name` matches [a-zA-Z_:][a-zA-Z0-9_:]*.
bool IsValidMetricName(std::string_view name);
// True when `name` matches [a-zA-Z_][a-zA-Z0-9_]* and does not start with "__".
bool IsValidLabelName(std::string_view name);
// A sample value as Prometheus parses it: integers without a fraction
// ("42"), others in the shortest round-trip form ("0.005"), "+Inf", "-Inf", "NaN".
std::string FormatMetricValue(double value);

// The metrics the serving engine updates, in one registry. Units are in the
// names. The references point into `registry`, so the struct neither copies nor moves.
struct ServingMetrics {
  // Histogram upper bounds for every latency below: 1 ms to 60 s, dense
  // between 20 and 300 ms where decode steps and inter-token gaps live.
  static const std::vector<double>& LatencyBucketsSeconds();

  ServingMetrics();
  ServingMetrics(const ServingMetrics&) = delete;
  ServingMetrics& operator=(const ServingMetrics&) = delete;

  // Sets mla_cache_blocks_used, mla_cache_blocks_total and mla_cache_usage_ratio
  // together (ratio 0 when total is 0).
  void SetCacheBlocks(int64_t used, int64_t total);
  // The rejection counter for `code`; nullptr for codes other than
  // InvalidArgument, ResourceExhausted and Unavailable.
  Counter* RejectedFor(absl::StatusCode code) const;

  Registry registry;  // first: the references below point into it

  // Latencies, seconds.
  Histogram& time_to_first_token_seconds;  // arrival -> first token handed out
  Histogram& inter_token_latency_seconds;  // gap between consecutive tokens of one request
  Histogram& step_duration_seconds;        // one engine step: schedule, run, postprocess
  Histogram& request_queue_seconds;        // arrival -> first scheduled
  Histogram& request_total_seconds;        // arrival -> finished

  // Engine state, sampled once per step.
  Gauge& requests_running;
  Gauge& requests_waiting;
  Gauge& cache_blocks_used;
  Gauge& cache_blocks_total;
  Gauge& cache_usage_ratio;  // used / total, 0..1

  // Tokens and events.
  Counter& prompt_tokens_total;             // all prompt tokens of admitted requests
  Counter& cached_prompt_tokens_total;      // of which served from the prefix cache
  Counter& prefill_tokens_computed_total;   // prompt tokens actually run (incl. recompute after preemption)
  Counter& generation_tokens_total;
  Counter& preemptions_total;
  Counter& prefix_cache_queries_total;      // blocks looked up
  Counter& prefix_cache_hits_total;         // blocks found
  CounterFamily requests_finished_total;    // reason = length | stop | cancelled | error
  CounterFamily requests_rejected_total;    // code = invalid_argument | resource_exhausted | unavailable
};

}  // namespace mla
