// One client request as the coordinator tracks it: what was asked, and the
// channel through which the engine hands tokens to the Generate handler.
#pragma once

#include <cstdint>
#include <atomic>
#include <deque>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "runtime/sampler.h"

namespace mla {

enum class FinishReason { kNone, kLength, kStop, kCancelled };

struct GeneratedTokenInfo {
  int32_t token_id = 0;
  float logprob = 0.0f;
  std::vector<std::pair<int32_t, float>> top_logprobs;
};

class Request {
 public:
  struct Params {
    std::vector<int32_t> prompt_ids;
    int64_t max_new_tokens = 1;
    SamplingParams sampling;
    int32_t top_logprobs = 0;
    bool ignore_eos = false;
    std::vector<int32_t> stop_token_ids;
    std::string client_id;
  };
  explicit Request(Params params) : params_(std::move(params)), arrival_(absl::Now()) {}

  const Params& params() const { return params_; }
  absl::Time arrival() const { return arrival_; }

  // Engine side.
  void PushToken(GeneratedTokenInfo token) {
    absl::MutexLock lock(&mu_);
    if (first_token_ == absl::InfinitePast()) first_token_ = absl::Now();
    tokens_.push_back(std::move(token));
  }
  void Finish(FinishReason reason, absl::Status status = absl::OkStatus()) {
    absl::MutexLock lock(&mu_);
    if (reason_ != FinishReason::kNone || !status_.ok()) return;
    reason_ = reason;
    status_ = std::move(status);
  }
  bool cancelled() const { return cancelled_.load(); }

  // Handler side.
  void Cancel() { cancelled_.store(true); }
  // Waits up to `timeout` for news; moves new tokens into `out`. Returns true
  // once the request has finished and every token was handed out.
  bool Next(absl::Duration timeout, std::vector<GeneratedTokenInfo>* out, FinishReason* reason,
            absl::Status* status) {
    absl::MutexLock lock(&mu_);
    auto news = [this] { return !tokens_.empty() || reason_ != FinishReason::kNone || !status_.ok(); };
    mu_.AwaitWithTimeout(absl::Condition(&news), timeout);
    while (!tokens_.empty()) {
      out->push_back(std::move(tokens_.front()));
      tokens_.pop_front();
    }
    *reason = reason_;
    *status = status_;
    return reason_ != FinishReason::kNone || !status_.ok();
  }
  absl::Time first_token_time() {
    absl::MutexLock lock(&mu_);
    return first_token_;
  }
  // Engine side, at first admission: prompt tokens served from the prefix cache.
  void SetAdmitted(int64_t cached_prompt_tokens) {
    absl::MutexLock lock(&mu_);
    admitted_ = absl::Now();
    cached_prompt_tokens_ = cached_prompt_tokens;
  }
  absl::Time admitted_time() {
    absl::MutexLock lock(&mu_);
    return admitted_;
  }
  int64_t cached_prompt_tokens() {
    absl::MutexLock lock(&mu_);
    return cached_prompt_tokens_;
  }

 private:
  Params params_;
  absl::Time arrival_;
  std::atomic<bool> cancelled_{false};
  absl::Mutex mu_;
  std::deque<GeneratedTokenInfo> tokens_ ABSL_GUARDED_BY(mu_);
  FinishReason reason_ ABSL_GUARDED_BY(mu_) = FinishReason::kNone;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
  absl::Time first_token_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  absl::Time admitted_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  int64_t cached_prompt_tokens_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace mla
