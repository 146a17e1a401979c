#include "runtime/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "glog/logging.h"

namespace mla {
namespace {

bool IsAsciiAlpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool IsAsciiDigit(char c) { return c >= '0' && c <= '9'; }

// `text` with backslash and newline escaped, and `"` too when `quote` (label values).
void AppendEscaped(std::string_view text, bool quote, std::string* out) {
  for (char c : text) {
    if (c == '\\') {
      out->append("\\\\");
    } else if (c == '\n') {
      out->append("\\n");
    } else if (c == '"' && quote) {
      out->append("\\\"");
    } else {
      out->push_back(c);
    }
  }
}

// `k="v",k2="v2"` without braces; empty for no labels.
std::string RenderLabels(const MetricLabels& labels) {
  std::string out;
  for (const auto& [name, value] : labels) {
    if (!out.empty()) out.push_back(',');
    out.append(name).append("=\"");
    AppendEscaped(value, /*quote=*/true, &out);
    out.push_back('"');
  }
  return out;
}

// One sample line: name{labels[,extra]} value
void AppendSample(std::string_view name, const std::string& labels, std::string_view extra_label,
                  double value, std::string* out) {
  out->append(name);
  if (!labels.empty() || !extra_label.empty()) {
    out->push_back('{');
    out->append(labels);
    if (!labels.empty() && !extra_label.empty()) out->push_back(',');
    out->append(extra_label);
    out->push_back('}');
  }
  out->push_back(' ');
  out->append(FormatMetricValue(value));
  out->push_back('\n');
}

MetricLabels Sorted(MetricLabels labels) {
  std::sort(labels.begin(), labels.end());
  return labels;
}

}  // namespace

bool IsValidMetricName(std::string_view name) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool ok = IsAsciiAlpha(c) || c == '_' || c == ':' || (i > 0 && IsAsciiDigit(c));
    if (!ok) return false;
  }
  return true;
}

bool IsValidLabelName(std::string_view name) {
  if (name.empty() || name.substr(0, 2) == "__") return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    if (!(IsAsciiAlpha(c) || c == '_' || (i > 0 && IsAsciiDigit(c)))) return false;
  }
  return true;
}

std::string FormatMetricValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  char buf[32];
  std::to_chars_result result;
  // Below 2^53 an integral double is an exact integer: print it without an exponent.
  if (value == std::trunc(value) && std::fabs(value) < 9007199254740992.0) {
    result = std::to_chars(buf, buf + sizeof(buf), static_cast<int64_t>(value));
  } else {
    result = std::to_chars(buf, buf + sizeof(buf), value);  // shortest round trip
  }
  return std::string(buf, result.ptr);
}

// ---- Metrics ---------------------------------------------------------------

void Counter::Add(double delta) {
  if (!(delta >= 0.0)) {
    LOG_FIRST_N(ERROR, 10) << "counter Add(" << delta << ") dropped: counters only go up";
    return;
  }
  value_.fetch_add(delta, std::memory_order_relaxed);
}

Histogram::Histogram(std::vector<double> upper_bounds)
    : upper_bounds_(std::move(upper_bounds)), bucket_counts_(upper_bounds_.size() + 1) {}

void Histogram::Observe(double value) {
  if (std::isnan(value)) return;
  // First bound >= value: buckets are inclusive upper bounds; past the end is +Inf.
  const size_t bucket =
      std::lower_bound(upper_bounds_.begin(), upper_bounds_.end(), value) - upper_bounds_.begin();
  bucket_counts_[bucket].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(value, std::memory_order_relaxed);
}

Histogram::Snapshot Histogram::Read() const {
  Snapshot snapshot;
  snapshot.cumulative_counts.reserve(bucket_counts_.size());
  for (const auto& count : bucket_counts_) {
    snapshot.count += count.load(std::memory_order_relaxed);
    snapshot.cumulative_counts.push_back(snapshot.count);
  }
  snapshot.sum = sum_.load(std::memory_order_relaxed);
  return snapshot;
}

Counter* CounterFamily::Find(std::string_view label_value) const {
  for (size_t i = 0; i < label_values_.size(); ++i) {
    if (label_values_[i] == label_value) return counters_[i];
  }
  return nullptr;
}

Counter& CounterFamily::Get(std::string_view label_value) const {
  Counter* counter = Find(label_value);
  CHECK(counter != nullptr) << "label " << label_name_ << "=\"" << label_value
                            << "\" was not declared; declared: " << absl::StrJoin(label_values_, ", ");
  return *counter;
}

// ---- Registry --------------------------------------------------------------

struct Registry::Family {
  struct Series {
    MetricLabels sorted_labels;  // identity of the series
    std::string rendered_labels;
    std::unique_ptr<Counter> counter;
    std::unique_ptr<Gauge> gauge;
    std::unique_ptr<Histogram> histogram;
  };
  std::string name;
  std::string help;
  Type type;
  std::vector<double> upper_bounds;  // histograms only
  std::vector<Series> series;
};

const char* Registry::TypeName(Type type) {
  switch (type) {
    case Type::kCounter: return "counter";
    case Type::kGauge: return "gauge";
    case Type::kHistogram: return "histogram";
  }
  return "untyped";
}

Registry::Registry() = default;
Registry::~Registry() = default;

absl::StatusOr<Registry::Family*> Registry::PrepareSeries(const std::string& name,
                                                          const std::string& help, Type type,
                                                          const MetricLabels& labels,
                                                          const std::vector<double>* upper_bounds) {
  if (!IsValidMetricName(name)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metric name \"", name, "\" is invalid: expected [a-zA-Z_:][a-zA-Z0-9_:]*"));
  }
  for (size_t i = 0; i < labels.size(); ++i) {
    const std::string& label = labels[i].first;
    if (!IsValidLabelName(label)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "metric ", name, ": label name \"", label,
          "\" is invalid: expected [a-zA-Z_][a-zA-Z0-9_]* not starting with \"__\""));
    }
    if (type == Type::kHistogram && label == "le") {
      return absl::InvalidArgumentError(
          absl::StrCat("histogram ", name, ": label name \"le\" is reserved for buckets"));
    }
    for (size_t j = 0; j < i; ++j) {
      if (labels[j].first == label) {
        return absl::InvalidArgumentError(
            absl::StrCat("metric ", name, ": label \"", label, "\" given twice"));
      }
    }
  }
  if (upper_bounds != nullptr) {
    for (size_t i = 0; i < upper_bounds->size(); ++i) {
      const double bound = (*upper_bounds)[i];
      if (!std::isfinite(bound)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "histogram ", name, ": bucket bound ", i, " is ", FormatMetricValue(bound),
            "; bounds must be finite (the +Inf bucket is implicit)"));
      }
      if (i > 0 && !(bound > (*upper_bounds)[i - 1])) {
        return absl::InvalidArgumentError(absl::StrCat(
            "histogram ", name, ": bucket bounds must be strictly increasing, but bound ", i,
            " (", FormatMetricValue(bound), ") follows ", FormatMetricValue((*upper_bounds)[i - 1])));
      }
    }
  }

  // The series names this metric would expose, and those every existing family exposes.
  auto exposed = [](const std::string& family_name, Type family_type) {
    std::vector<std::string> names = {family_name};
    if (family_type == Type::kHistogram) {
      for (const char* suffix : {"_bucket", "_sum", "_count"}) names.push_back(family_name + suffix);
    }
    return names;
  };
  const std::vector<std::string> wanted = exposed(name, type);
  Family* family = nullptr;
  for (const auto& existing : families_) {
    if (existing->name == name && existing->type == type) {
      family = existing.get();
      continue;
    }
    for (const std::string& taken : exposed(existing->name, existing->type)) {
      if (std::find(wanted.begin(), wanted.end(), taken) != wanted.end()) {
        return absl::AlreadyExistsError(absl::StrCat("metric ", name, " (", TypeName(type),
                                                     ") clashes with ", TypeName(existing->type),
                                                     " ", existing->name, " which exposes ", taken));
      }
    }
  }

  const MetricLabels sorted = Sorted(labels);
  if (family != nullptr) {
    if (family->help != help) {
      return absl::InvalidArgumentError(absl::StrCat("metric ", name, ": help \"", help,
                                                     "\" differs from the earlier \"", family->help,
                                                     "\""));
    }
    if (upper_bounds != nullptr && *upper_bounds != family->upper_bounds) {
      return absl::InvalidArgumentError(
          absl::StrCat("histogram ", name, ": buckets differ from an earlier registration"));
    }
    for (const auto& series : family->series) {
      if (series.sorted_labels == sorted) {
        return absl::AlreadyExistsError(absl::StrCat("metric ", name, "{", RenderLabels(labels),
                                                     "} is already registered"));
      }
    }
  } else {
    auto created = std::make_unique<Family>();
    created->name = name;
    created->help = help;
    created->type = type;
    if (upper_bounds != nullptr) created->upper_bounds = *upper_bounds;
    family = created.get();
    families_.push_back(std::move(created));
  }
  Family::Series series;
  series.sorted_labels = sorted;
  series.rendered_labels = RenderLabels(labels);
  family->series.push_back(std::move(series));
  return family;
}

absl::StatusOr<Counter*> Registry::AddCounter(const std::string& name, const std::string& help,
                                              const MetricLabels& labels) {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<Family*> family = PrepareSeries(name, help, Type::kCounter, labels, nullptr);
  if (!family.ok()) return family.status();
  auto& series = (*family)->series.back();
  series.counter = std::make_unique<Counter>();
  return series.counter.get();
}

absl::StatusOr<Gauge*> Registry::AddGauge(const std::string& name, const std::string& help,
                                          const MetricLabels& labels) {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<Family*> family = PrepareSeries(name, help, Type::kGauge, labels, nullptr);
  if (!family.ok()) return family.status();
  auto& series = (*family)->series.back();
  series.gauge = std::make_unique<Gauge>();
  return series.gauge.get();
}

absl::StatusOr<Histogram*> Registry::AddHistogram(const std::string& name, const std::string& help,
                                                  std::vector<double> upper_bounds,
                                                  const MetricLabels& labels) {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<Family*> family =
      PrepareSeries(name, help, Type::kHistogram, labels, &upper_bounds);
  if (!family.ok()) return family.status();
  auto& series = (*family)->series.back();
  series.histogram = std::make_unique<Histogram>(std::move(upper_bounds));
  return series.histogram.get();
}

absl::StatusOr<CounterFamily> Registry::AddCounterFamily(
    const std::string& name, const std::string& help, const std::string& label_name,
    const std::vector<std::string>& label_values, const MetricLabels& const_labels) {
  if (label_values.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("counter family ", name, ": no values declared for label ", label_name));
  }
  CounterFamily result;
  result.label_name_ = label_name;
  result.label_values_ = label_values;
  // Registered one by one: a later failure leaves the earlier series registered,
  // which only a bug in fixed names can cause.
  for (const std::string& value : label_values) {
    MetricLabels labels = const_labels;
    labels.emplace_back(label_name, value);
    absl::StatusOr<Counter*> counter = AddCounter(name, help, labels);
    if (!counter.ok()) return counter.status();
    result.counters_.push_back(*counter);
  }
  return result;
}

std::string Registry::RenderText() const {
  absl::MutexLock lock(&mu_);
  std::string out;
  for (const auto& family : families_) {
    if (!family->help.empty()) {
      out.append("# HELP ").append(family->name).push_back(' ');
      AppendEscaped(family->help, /*quote=*/false, &out);
      out.push_back('\n');
    }
    out.append("# TYPE ").append(family->name).push_back(' ');
    out.append(TypeName(family->type)).push_back('\n');
    for (const auto& series : family->series) {
      switch (family->type) {
        case Type::kCounter:
          AppendSample(family->name, series.rendered_labels, "", series.counter->Value(), &out);
          break;
        case Type::kGauge:
          AppendSample(family->name, series.rendered_labels, "", series.gauge->Value(), &out);
          break;
        case Type::kHistogram: {
          const Histogram::Snapshot snapshot = series.histogram->Read();
          const std::string bucket_name = family->name + "_bucket";
          for (size_t i = 0; i < snapshot.cumulative_counts.size(); ++i) {
            const std::string le =
                i < family->upper_bounds.size() ? FormatMetricValue(family->upper_bounds[i]) : "+Inf";
            AppendSample(bucket_name, series.rendered_labels, absl::StrCat("le=\"", le, "\""),
                         static_cast<double>(snapshot.cumulative_counts[i]), &out);
          }
          AppendSample(family->name + "_sum", series.rendered_labels, "", snapshot.sum, &out);
          AppendSample(family->name + "_count", series.rendered_labels, "",
                       static_cast<double>(snapshot.count), &out);
          break;
        }
      }
    }
  }
  return out;
}

// ---- ServingMetrics --------------------------------------------------------

namespace {

template <typename T>
T& MustRegister(absl::StatusOr<T*> metric) {
  CHECK(metric.ok()) << "fixed serving metric failed to register: " << metric.status();
  return **metric;
}

CounterFamily MustRegister(absl::StatusOr<CounterFamily> family) {
  CHECK(family.ok()) << "fixed serving metric failed to register: " << family.status();
  return *std::move(family);
}

}  // namespace

const std::vector<double>& ServingMetrics::LatencyBucketsSeconds() {
  static const std::vector<double>* const kBuckets = new std::vector<double>{
      0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.15,
      0.2,   0.3,   0.5,   0.75, 1.0,  2.0,  5.0,  10.0, 20.0, 30.0, 60.0};
  return *kBuckets;
}

ServingMetrics::ServingMetrics()
    : time_to_first_token_seconds(MustRegister(registry.AddHistogram(
          "mla_time_to_first_token_seconds",
          "Seconds from a request's arrival to its first generated token.",
          LatencyBucketsSeconds()))),
      inter_token_latency_seconds(MustRegister(registry.AddHistogram(
          "mla_inter_token_latency_seconds",
          "Seconds between consecutive generated tokens of one request.",
          LatencyBucketsSeconds()))),
      step_duration_seconds(MustRegister(registry.AddHistogram(
          "mla_step_duration_seconds",
          "Seconds one engine step takes: schedule, forward pass and postprocess.",
          LatencyBucketsSeconds()))),
      request_queue_seconds(MustRegister(registry.AddHistogram(
          "mla_request_queue_seconds",
          "Seconds a request waits from arrival until it is first scheduled.",
          LatencyBucketsSeconds()))),
      request_total_seconds(MustRegister(registry.AddHistogram(
          "mla_request_total_seconds",
          "Seconds from a request's arrival until it finishes, for any reason.",
          LatencyBucketsSeconds()))),
      requests_running(MustRegister(registry.AddGauge(
          "mla_requests_running", "Requests scheduled in the running batch."))),
      requests_waiting(MustRegister(registry.AddGauge(
          "mla_requests_waiting", "Requests admitted and waiting to be scheduled."))),
      cache_blocks_used(MustRegister(registry.AddGauge(
          "mla_cache_blocks_used", "Latent cache blocks referenced by requests (cached, unreferenced blocks count as free)."))),
      cache_blocks_total(MustRegister(registry.AddGauge(
          "mla_cache_blocks_total", "Latent cache blocks in the pool."))),
      cache_usage_ratio(MustRegister(registry.AddGauge(
          "mla_cache_usage_ratio",
          "Fraction of latent cache blocks in use, 0 to 1 (blocks_used / blocks_total)."))),
      prompt_tokens_total(MustRegister(registry.AddCounter(
          "mla_prompt_tokens_total", "Prompt tokens of admitted requests."))),
      cached_prompt_tokens_total(MustRegister(registry.AddCounter(
          "mla_cached_prompt_tokens_total",
          "Prompt tokens served from the prefix cache instead of computed."))),
      prefill_tokens_computed_total(MustRegister(registry.AddCounter(
          "mla_prefill_tokens_computed_total",
          "Prompt tokens run through prefill, including recomputation after preemption."))),
      generation_tokens_total(MustRegister(registry.AddCounter(
          "mla_generation_tokens_total", "Tokens generated (sampled) for requests."))),
      preemptions_total(MustRegister(registry.AddCounter(
          "mla_preemptions_total",
          "Requests preempted from the running batch to free latent cache blocks."))),
      prefix_cache_queries_total(MustRegister(registry.AddCounter(
          "mla_prefix_cache_queries_total",
          "Blocks looked up in the prefix cache; hit rate = hits / queries."))),
      prefix_cache_hits_total(MustRegister(registry.AddCounter(
          "mla_prefix_cache_hits_total", "Blocks looked up in the prefix cache and found there."))),
      requests_finished_total(MustRegister(registry.AddCounterFamily(
          "mla_requests_finished_total", "Requests finished, by reason.", "reason",
          {"length", "stop", "cancelled", "error"}))),
      requests_rejected_total(MustRegister(registry.AddCounterFamily(
          "mla_requests_rejected_total", "Requests refused before admission, by status code.",
          "code", {"invalid_argument", "resource_exhausted", "unavailable"}))) {}

void ServingMetrics::SetCacheBlocks(int64_t used, int64_t total) {
  cache_blocks_used.Set(static_cast<double>(used));
  cache_blocks_total.Set(static_cast<double>(total));
  cache_usage_ratio.Set(total > 0 ? static_cast<double>(used) / static_cast<double>(total) : 0.0);
}

Counter* ServingMetrics::RejectedFor(absl::StatusCode code) const {
  switch (code) {
    case absl::StatusCode::kInvalidArgument: return requests_rejected_total.Find("invalid_argument");
    case absl::StatusCode::kResourceExhausted: return requests_rejected_total.Find("resource_exhausted");
    case absl::StatusCode::kUnavailable: return requests_rejected_total.Find("unavailable");
    default: return nullptr;
  }
}

}  // namespace mla
