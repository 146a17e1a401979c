// How the engine's events update the Prometheus metrics (runtime/metrics.h).
#pragma once

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "runtime/block_manager.h"
#include "runtime/metrics.h"
#include "runtime/request.h"
#include "runtime/scheduler.h"

namespace mla {

// Before the step runs: preemptions, prefill tokens, and first admissions
// (queue time, prompt and prefix-cached tokens).
void RecordSchedule(ServingMetrics& m, const SchedulerOutput& out);
// Prefix-cache lookups since the last call (the block manager keeps totals).
void RecordPrefixCache(ServingMetrics& m, int64_t new_queries, int64_t new_hits);
// A token handed to its request: time to first token or inter-token latency.
void RecordToken(ServingMetrics& m, const Sequence& seq, absl::Time now);
void RecordFinish(ServingMetrics& m, Sequence& seq, FinishReason reason, const absl::Status& status);
void RecordStep(ServingMetrics& m, absl::Duration duration);
void RecordGauges(ServingMetrics& m, int64_t running, int64_t waiting, const BlockManager& blocks);
void RecordRejected(ServingMetrics& m, absl::StatusCode code);

}  // namespace mla
