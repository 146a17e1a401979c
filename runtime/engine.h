// The coordinator's step loop: admit requests, build the step plan, send it to
// every rank, collect the results, hand out the sampled tokens. The workers
// hold no scheduling state; block tables travel in every plan.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "runtime/config.h"
#include "runtime/kv_cache.h"
#include "runtime/request.h"
#include "runtime/worker_link.h"

namespace mla {

struct EngineOptions {
  int world_size = 1;
  // A step (or heartbeat) not answered by every rank within this is a failure.
  absl::Duration step_timeout = absl::Seconds(5);
  // An idle engine checks on its workers this often.
  absl::Duration heartbeat = absl::Seconds(1);
};

enum class EngineState { kLoading, kServing, kFailed, kStopped };

class Engine {
 public:
  Engine(ModelConfig config, EngineOptions options);
  ~Engine();

  void Start();
  // Asks the workers to exit, ends queued and running requests with
  // Unavailable, and joins the loop thread.
  void Stop();

  // A worker whose stream is up; InvalidArgument for a bad or repeated rank.
  absl::Status Attach(std::shared_ptr<WorkerLink> link);

  // Checks a request against the model and the cache (InvalidArgument naming
  // the field), or Unavailable while loading or after a failure.
  absl::Status Validate(const Request::Params& params);
  absl::Status Submit(std::shared_ptr<Request> request);

  EngineState state();
  // Why the group failed (OK unless kFailed).
  absl::Status failure();
  // Blocks until the engine is failed or stopped, or the timeout passes.
  EngineState WaitForEnd(absl::Duration timeout);

  // Sends one plan to every attached rank and collects the results (rank 0's
  // into *rank0) within the step timeout. The loop uses it; a benchmark may
  // call it on an engine that was never started.
  absl::Status RunStep(const control::v1::StepPlan& plan, control::v1::StepResult* rank0);

  const ModelConfig& config() const { return config_; }
  int world_size() const { return options_.world_size; }
  int64_t num_blocks();
  std::vector<control::v1::WorkerReady> ranks();

 private:
  void Loop();
  bool WaitForWorkers();
  void Admit(std::vector<std::shared_ptr<Request>>& active);
  void Fail(const absl::Status& why, std::vector<std::shared_ptr<Request>>& active);

  const ModelConfig config_;
  const EngineOptions options_;
  std::thread thread_;
  std::unique_ptr<BlockAllocator> allocator_;  // engine thread only, once serving
  int64_t next_sequence_id_ = 0;
  int64_t next_step_id_ = 0;

  absl::Mutex mu_;
  std::vector<std::shared_ptr<WorkerLink>> links_ ABSL_GUARDED_BY(mu_);  // by rank
  std::deque<std::shared_ptr<Request>> queue_ ABSL_GUARDED_BY(mu_);
  EngineState state_ ABSL_GUARDED_BY(mu_) = EngineState::kLoading;
  absl::Status failure_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  int64_t num_blocks_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace mla
