#include "runtime/worker_link.h"

namespace mla {

bool WorkerLink::Send(control::v1::StepPlan plan) {
  absl::MutexLock lock(&mu_);
  if (dead_) return false;
  plans_.push_back(std::move(plan));
  return true;
}

std::optional<control::v1::StepResult> WorkerLink::Receive(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !results_.empty() || dead_; };
  mu_.AwaitWithDeadline(absl::Condition(&ready), deadline);
  if (results_.empty()) return std::nullopt;
  control::v1::StepResult r = std::move(results_.front());
  results_.pop_front();
  return r;
}

std::optional<control::v1::StepPlan> WorkerLink::NextPlan() {
  absl::MutexLock lock(&mu_);
  auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !plans_.empty() || dead_; };
  mu_.Await(absl::Condition(&ready));
  if (plans_.empty()) return std::nullopt;
  control::v1::StepPlan p = std::move(plans_.front());
  plans_.pop_front();
  return p;
}

void WorkerLink::PushResult(control::v1::StepResult result) {
  absl::MutexLock lock(&mu_);
  results_.push_back(std::move(result));
}

void WorkerLink::MarkDead(const std::string& why) {
  absl::MutexLock lock(&mu_);
  if (dead_) return;
  dead_ = true;
  why_ = why;
}

bool WorkerLink::dead() {
  absl::MutexLock lock(&mu_);
  return dead_;
}

std::string WorkerLink::why_dead() {
  absl::MutexLock lock(&mu_);
  return why_;
}

}  // namespace mla
