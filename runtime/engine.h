// The coordinator's step loop, nano-vllm style: schedule, run, postprocess.
// The scheduler picks the step's sequences and token counts, the plan goes to
// every rank, rank 0's sampled tokens go back to the requests. Workers hold no
// scheduling state: block tables travel in every plan.
#pragma once

#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "runtime/block_manager.h"
#include "runtime/config.h"
#include "runtime/request.h"
#include "runtime/scheduler.h"
#include "runtime/worker_link.h"

namespace mla {

struct ServingMetrics;

struct EngineOptions {
  int world_size = 1;
  // A step (or heartbeat) not answered by every rank within this is a failure.
  absl::Duration step_timeout = absl::Seconds(5);
  // An idle engine checks on its workers this often.
  absl::Duration heartbeat = absl::Seconds(1);
  SchedulerOptions scheduler;
  bool prefix_caching = true;
  // Requests waiting to run beyond this are refused with ResourceExhausted.
  int64_t max_queued_requests = 1024;
  // Longest prompt + generation accepted; 0: the model's max_position_embeddings.
  int64_t max_model_len = 0;
};

enum class EngineState { kLoading, kServing, kDraining, kFailed, kStopped };

class Engine {
 public:
  Engine(ModelConfig config, EngineOptions options, ServingMetrics* metrics = nullptr);
  ~Engine();

  void Start();
  // Asks the workers to exit, ends queued and running requests with
  // Unavailable, and joins the loop thread.
  void Stop();
  // Refuses new requests (Unavailable) and lets the running ones finish.
  void Drain();
  // Requests queued or running.
  int64_t num_in_flight();

  // A worker whose stream is up; InvalidArgument for a bad or repeated rank.
  absl::Status Attach(std::shared_ptr<WorkerLink> link);

  // Checks a request against the model and the cache (InvalidArgument naming
  // the field and the limit), or Unavailable while loading, draining or failed.
  absl::Status Validate(const Request::Params& params);
  // Queues a validated request; ResourceExhausted when the queue is full.
  absl::Status Submit(std::shared_ptr<Request> request);

  // Sends one plan to every attached rank and collects the results (rank 0's
  // into *rank0) within the step timeout. The loop uses it; a benchmark may
  // call it on an engine that was never started.
  absl::Status RunStep(const control::v1::StepPlan& plan, control::v1::StepResult* rank0);

  EngineState state();
  // Why the group failed (OK unless kFailed).
  absl::Status failure();
  // Blocks until the engine is failed or stopped, or the timeout passes.
  EngineState WaitForEnd(absl::Duration timeout);

  const ModelConfig& config() const { return config_; }
  int world_size() const { return options_.world_size; }
  int64_t max_model_len() const { return max_model_len_; }
  bool prefix_caching() const { return options_.prefix_caching; }
  int64_t num_blocks();
  int64_t blocks_in_use();
  std::vector<control::v1::WorkerReady> ranks();

 private:
  void Loop();
  bool WaitForWorkers();
  // Moves newly submitted requests into the scheduler; ends cancelled ones.
  void Intake();
  void SweepCancelled();
  control::v1::StepPlan BuildPlan(const SchedulerOutput& out);
  void Postprocess(const SchedulerOutput& out, const control::v1::StepResult& rank0);
  void Finish(Sequence* seq, FinishReason reason, absl::Status status = absl::OkStatus());
  void Fail(const absl::Status& why);
  void EndAll(const absl::Status& why);
  void PublishGauges();

  const ModelConfig config_;
  const EngineOptions options_;
  const int64_t max_model_len_;
  ServingMetrics* metrics_;
  std::thread thread_;
  // Engine thread only, once serving.
  std::unique_ptr<BlockManager> blocks_;
  std::unique_ptr<Scheduler> scheduler_;
  int64_t next_sequence_id_ = 0;
  int64_t next_step_id_ = 0;

  absl::Mutex mu_;
  std::vector<std::shared_ptr<WorkerLink>> links_ ABSL_GUARDED_BY(mu_);  // by rank
  std::deque<std::shared_ptr<Request>> queue_ ABSL_GUARDED_BY(mu_);      // submitted, not yet scheduled
  EngineState state_ ABSL_GUARDED_BY(mu_) = EngineState::kLoading;
  absl::Status failure_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  int64_t num_blocks_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t blocks_in_use_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t scheduled_ ABSL_GUARDED_BY(mu_) = 0;  // requests in the scheduler (waiting or running)
};

}  // namespace mla
