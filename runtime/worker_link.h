// The coordinator's end of one worker's step stream: plans go out through a
// queue the stream handler drains, results come back through another.
#pragma once

#include <deque>
#include <optional>
#include <string>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "mla/control/v1/control.pb.h"

namespace mla {

class WorkerLink {
 public:
  explicit WorkerLink(control::v1::WorkerReady ready) : ready_(std::move(ready)) {}

  const control::v1::WorkerReady& ready() const { return ready_; }
  int rank() const { return ready_.rank(); }

  // Engine side: queue a plan; false once the link is dead.
  bool Send(control::v1::StepPlan plan);
  // Engine side: the next result, or nullopt at the deadline or when the link dies.
  std::optional<control::v1::StepResult> Receive(absl::Time deadline);

  // Stream side: the next plan to write; nullopt once the link is closed.
  std::optional<control::v1::StepPlan> NextPlan();
  void PushResult(control::v1::StepResult result);
  // The stream broke or the handler is leaving; wakes both sides.
  void MarkDead(const std::string& why);

  bool dead();
  std::string why_dead();

 private:
  control::v1::WorkerReady ready_;
  absl::Mutex mu_;
  std::deque<control::v1::StepPlan> plans_ ABSL_GUARDED_BY(mu_);
  std::deque<control::v1::StepResult> results_ ABSL_GUARDED_BY(mu_);
  bool dead_ ABSL_GUARDED_BY(mu_) = false;
  std::string why_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mla
