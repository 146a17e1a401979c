#include "runtime/engine_metrics.h"

namespace mla {

void RecordSchedule(ServingMetrics& m, const SchedulerOutput& out) {
  m.preemptions_total.Add(static_cast<double>(out.preempted.size()));
  for (const ScheduledSequence& s : out.batch) {
    Sequence& seq = *s.seq;
    // A decode step feeds the one token sampled last step; anything else is
    // prefill (the prompt, or prompt and generated tokens after a preemption).
    const bool decode = s.num_tokens == 1 && seq.num_generated() > 0 && seq.num_computed == seq.num_tokens() - 1;
    if (!decode) m.prefill_tokens_computed_total.Add(static_cast<double>(s.num_tokens));
    if (seq.first_scheduled == absl::InfinitePast()) {
      m.request_queue_seconds.Observe(absl::Now() - seq.request().arrival());
      m.prompt_tokens_total.Add(static_cast<double>(seq.prompt_len()));
      m.cached_prompt_tokens_total.Add(static_cast<double>(std::max<int64_t>(0, seq.cached_prompt_tokens)));
    }
  }
}

void RecordPrefixCache(ServingMetrics& m, int64_t new_queries, int64_t new_hits) {
  if (new_queries > 0) m.prefix_cache_queries_total.Add(static_cast<double>(new_queries));
  if (new_hits > 0) m.prefix_cache_hits_total.Add(static_cast<double>(new_hits));
}

void RecordToken(ServingMetrics& m, const Sequence& seq, absl::Time now) {
  m.generation_tokens_total.Increment();
  if (seq.last_token_time == absl::InfinitePast()) {
    m.time_to_first_token_seconds.Observe(now - seq.request_ptr()->arrival());
  } else {
    m.inter_token_latency_seconds.Observe(now - seq.last_token_time);
  }
}

void RecordFinish(ServingMetrics& m, Sequence& seq, FinishReason reason, const absl::Status& status) {
  const char* label = !status.ok()                          ? "error"
                      : reason == FinishReason::kStop      ? "stop"
                      : reason == FinishReason::kCancelled ? "cancelled"
                                                           : "length";
  m.requests_finished_total.Get(label).Increment();
  m.request_total_seconds.Observe(absl::Now() - seq.request().arrival());
}

void RecordStep(ServingMetrics& m, absl::Duration duration) { m.step_duration_seconds.Observe(duration); }

void RecordGauges(ServingMetrics& m, int64_t running, int64_t waiting, const BlockManager& blocks) {
  m.requests_running.Set(static_cast<double>(running));
  m.requests_waiting.Set(static_cast<double>(waiting));
  m.SetCacheBlocks(blocks.num_used(), blocks.num_blocks());
}

void RecordRejected(ServingMetrics& m, absl::StatusCode code) {
  if (Counter* c = m.RejectedFor(code)) c->Increment();
}

}  // namespace mla
