#include "runtime/scheduler.h"

#include <algorithm>

namespace mla {

void Scheduler::Preempt(SchedulerOutput& out) {
  std::unique_ptr<Sequence> victim = std::move(running_.back());
  running_.pop_back();
  blocks_.Release(*victim);
  out.preempted.push_back(victim.get());
  waiting_.push_front(std::move(victim));
}

SchedulerOutput Scheduler::Schedule() {
  SchedulerOutput out;
  int64_t budget = options_.max_num_batched_tokens;
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Sequence* s = running_[i].get();
    const int64_t n = std::min(s->num_uncomputed(), budget);
    bool fits = true;
    while (!blocks_.Allocate(*s, s->num_computed + n)) {
      const bool self = running_.back().get() == s;
      Preempt(out);
      if (self) {
        fits = false;
        break;
      }
    }
    if (!fits) break;  // s was the newest: nothing after it is running
    out.batch.push_back(ScheduledSequence{s, n, s->num_computed + n == s->num_tokens()});
    budget -= n;
    ++i;
  }
  if (!out.preempted.empty()) return out;
  while (!waiting_.empty() && budget > 0 && static_cast<int64_t>(running_.size()) < options_.max_num_seqs) {
    Sequence* s = waiting_.front().get();
    const int64_t cached = blocks_.AttachCachedPrefix(*s);
    if (s->cached_prompt_tokens < 0) s->cached_prompt_tokens = std::min(cached, s->prompt_len());
    const int64_t n = std::min(s->num_uncomputed(), budget);
    if (!blocks_.Allocate(*s, s->num_computed + n)) {
      blocks_.Release(*s);
      break;
    }
    out.batch.push_back(ScheduledSequence{s, n, s->num_computed + n == s->num_tokens()});
    budget -= n;
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }
  return out;
}

std::unique_ptr<Sequence> Scheduler::Remove(Sequence* seq) {
  std::unique_ptr<Sequence> out;
  auto match = [seq](const std::unique_ptr<Sequence>& p) { return p.get() == seq; };
  if (auto it = std::find_if(running_.begin(), running_.end(), match); it != running_.end()) {
    out = std::move(*it);
    running_.erase(it);
  } else if (auto wt = std::find_if(waiting_.begin(), waiting_.end(), match); wt != waiting_.end()) {
    out = std::move(*wt);
    waiting_.erase(wt);
  }
  if (out) blocks_.Release(*out);
  return out;
}

std::vector<Sequence*> Scheduler::All() {
  std::vector<Sequence*> all;
  for (auto& s : running_) all.push_back(s.get());
  for (auto& s : waiting_) all.push_back(s.get());
  return all;
}

}  // namespace mla
