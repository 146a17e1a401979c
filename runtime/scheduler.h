// Continuous batching: which sequences run in the next step and how many of
// their tokens (chunked prefill under a token budget), admitting waiting
// requests between steps and preempting (by recompute) when blocks run out.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "runtime/block_manager.h"
#include "runtime/sequence.h"

namespace mla {

struct SchedulerOptions {
  int64_t max_num_batched_tokens = 2048;  // new tokens per step, over all sequences
  int64_t max_num_seqs = 64;              // sequences running at once
};

struct ScheduledSequence {
  Sequence* seq;
  int64_t num_tokens;  // fed this step, from position seq->num_computed
  bool sample;         // the step ends at the sequence's last token: sample the next
};

struct SchedulerOutput {
  std::vector<ScheduledSequence> batch;
  std::vector<Sequence*> preempted;  // moved back to waiting this step, blocks released
};

class Scheduler {
 public:
  Scheduler(const SchedulerOptions& options, BlockManager& blocks) : options_(options), blocks_(blocks) {}

  void Add(std::unique_ptr<Sequence> seq) { waiting_.push_back(std::move(seq)); }

  // Running sequences first (in admission order), each taking what it needs
  // of the budget; when blocks run out the newest running sequence is
  // preempted (recomputed later) until the older one fits. Waiting sequences
  // are admitted first come, first served, after prefix-cache lookup, while
  // budget, sequence slots and blocks allow (and only in a step without
  // preemption).
  SchedulerOutput Schedule();

  // Removes a sequence (finished or cancelled) and releases its blocks.
  std::unique_ptr<Sequence> Remove(Sequence* seq);

  // Every sequence, running then waiting (for cancellation sweeps and shutdown).
  std::vector<Sequence*> All();

  int64_t num_running() const { return static_cast<int64_t>(running_.size()); }
  int64_t num_waiting() const { return static_cast<int64_t>(waiting_.size()); }

 private:
  void Preempt(SchedulerOutput& out);

  SchedulerOptions options_;
  BlockManager& blocks_;
  std::vector<std::unique_ptr<Sequence>> running_;  // admission order
  std::deque<std::unique_ptr<Sequence>> waiting_;
};

}  // namespace mla
