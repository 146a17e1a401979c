#include "runtime/engine.h"

#include <glog/logging.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "runtime/engine_metrics.h"
#include "runtime/kv_cache.h"

namespace mla {

namespace cv1 = control::v1;

namespace {

constexpr int kMaxTopLogprobs = 20;

}  // namespace

Engine::Engine(ModelConfig config, EngineOptions options, ServingMetrics* metrics)
    : config_(std::move(config)),
      options_(options),
      max_model_len_(options.max_model_len > 0 ? std::min(options.max_model_len, config_.max_position_embeddings)
                                               : config_.max_position_embeddings),
      metrics_(metrics) {
  links_.resize(static_cast<size_t>(options_.world_size));
}

Engine::~Engine() { Stop(); }

void Engine::Start() { thread_ = std::thread([this] { Loop(); }); }

void Engine::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void Engine::Drain() {
  absl::MutexLock lock(&mu_);
  if (state_ == EngineState::kServing || state_ == EngineState::kLoading) state_ = EngineState::kDraining;
}

int64_t Engine::num_in_flight() {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(queue_.size()) + scheduled_;
}

absl::Status Engine::Attach(std::shared_ptr<WorkerLink> link) {
  absl::MutexLock lock(&mu_);
  const int rank = link->rank();
  if (rank < 0 || rank >= options_.world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("worker rank ", rank, " (expected 0 <= rank < ", options_.world_size, ")"));
  }
  if (links_[static_cast<size_t>(rank)] != nullptr) {
    return absl::AlreadyExistsError(absl::StrCat("worker rank ", rank, " already has a step stream"));
  }
  if (state_ != EngineState::kLoading) {
    return absl::FailedPreconditionError("the group is already formed; a restarted worker needs a new group");
  }
  links_[static_cast<size_t>(rank)] = std::move(link);
  return absl::OkStatus();
}

EngineState Engine::state() {
  absl::MutexLock lock(&mu_);
  return state_;
}

absl::Status Engine::failure() {
  absl::MutexLock lock(&mu_);
  return failure_;
}

EngineState Engine::WaitForEnd(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto ended = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return state_ == EngineState::kFailed || state_ == EngineState::kStopped;
  };
  mu_.AwaitWithTimeout(absl::Condition(&ended), timeout);
  return state_;
}

int64_t Engine::num_blocks() {
  absl::MutexLock lock(&mu_);
  return num_blocks_;
}

int64_t Engine::blocks_in_use() {
  absl::MutexLock lock(&mu_);
  return blocks_in_use_;
}

std::vector<cv1::WorkerReady> Engine::ranks() {
  absl::MutexLock lock(&mu_);
  std::vector<cv1::WorkerReady> out;
  for (const auto& l : links_) {
    if (l != nullptr) out.push_back(l->ready());
  }
  return out;
}

absl::Status Engine::Validate(const Request::Params& p) {
  int64_t blocks;
  {
    absl::MutexLock lock(&mu_);
    switch (state_) {
      case EngineState::kServing: break;
      case EngineState::kLoading: return absl::UnavailableError("the model is still loading; retry shortly");
      case EngineState::kDraining: return absl::UnavailableError("the server is shutting down (draining)");
      default: return absl::UnavailableError(absl::StrCat("the server is not serving: ", failure_.message()));
    }
    blocks = num_blocks_;
  }
  const int64_t vocab = config_.vocab_size;
  if (p.prompt_ids.empty()) return absl::InvalidArgumentError("prompt_token_ids is empty (expected at least one token)");
  for (size_t i = 0; i < p.prompt_ids.size(); ++i) {
    const int32_t id = p.prompt_ids[i];
    if (id < 0 || id >= vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("prompt_token_ids[", i, "] = ", id, " (expected 0 <= id < vocab_size = ", vocab, ")"));
    }
  }
  for (size_t i = 0; i < p.stop_token_ids.size(); ++i) {
    const int32_t id = p.stop_token_ids[i];
    if (id < 0 || id >= vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("stop_token_ids[", i, "] = ", id, " (expected 0 <= id < vocab_size = ", vocab, ")"));
    }
  }
  if (p.max_new_tokens < 1 || p.max_new_tokens > max_model_len_) {
    return absl::InvalidArgumentError(absl::StrCat("max_new_tokens = ", p.max_new_tokens,
                                                   " (expected 1 <= max_new_tokens <= max_model_len = ",
                                                   max_model_len_, ")"));
  }
  const int64_t prompt = static_cast<int64_t>(p.prompt_ids.size());
  const int64_t total = prompt + p.max_new_tokens;
  if (total > max_model_len_) {
    return absl::InvalidArgumentError(absl::StrCat("prompt_token_ids (", prompt, " tokens) + max_new_tokens (",
                                                   p.max_new_tokens, ") = ", total,
                                                   " exceeds max_model_len = ", max_model_len_));
  }
  const int64_t needed = (total + kDefaultBlockSize - 1) / kDefaultBlockSize;
  if (needed > blocks) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt_token_ids + max_new_tokens = ", total, " tokens needs ", needed, " cache blocks, but the whole cache has ",
        blocks, " (", blocks * kDefaultBlockSize, " tokens): it could never run"));
  }
  if (p.top_logprobs < 0 || p.top_logprobs > kMaxTopLogprobs) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_logprobs = ", p.top_logprobs, " (expected 0 <= top_logprobs <= ", kMaxTopLogprobs, ")"));
  }
  if (absl::Status s = ValidateSamplingParams(p.sampling); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("sampling.", s.message()));
  }
  return absl::OkStatus();
}

absl::Status Engine::Submit(std::shared_ptr<Request> request) {
  absl::MutexLock lock(&mu_);
  if (state_ != EngineState::kServing) return absl::UnavailableError("the server is not serving");
  // Waiting = submitted but not running; the scheduler's running set is bounded by max_num_seqs.
  const int64_t waiting = static_cast<int64_t>(queue_.size()) +
                          std::max<int64_t>(0, scheduled_ - options_.scheduler.max_num_seqs);
  if (waiting >= options_.max_queued_requests) {
    return absl::ResourceExhaustedError(absl::StrCat("the server is overloaded: ", waiting,
                                                     " requests are waiting (--max-queued-requests ",
                                                     options_.max_queued_requests, "); retry later"));
  }
  queue_.push_back(std::move(request));
  return absl::OkStatus();
}

bool Engine::WaitForWorkers() {
  absl::MutexLock lock(&mu_);
  auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stop_ || std::all_of(links_.begin(), links_.end(), [](const auto& l) { return l != nullptr; });
  };
  mu_.Await(absl::Condition(&ready));
  if (stop_) return false;
  // Every shard holds the same block count: the minimum over the ranks.
  num_blocks_ = links_[0]->ready().cache_blocks();
  for (const auto& l : links_) num_blocks_ = std::min(num_blocks_, l->ready().cache_blocks());
  blocks_ = std::make_unique<BlockManager>(num_blocks_, kDefaultBlockSize, options_.prefix_caching);
  scheduler_ = std::make_unique<Scheduler>(options_.scheduler, *blocks_);
  if (state_ == EngineState::kLoading) state_ = EngineState::kServing;
  LOG(INFO) << "all " << links_.size() << " workers ready; " << num_blocks_ << " cache blocks per rank";
  return true;
}

absl::Status Engine::RunStep(const cv1::StepPlan& plan, cv1::StepResult* rank0) {
  std::vector<std::shared_ptr<WorkerLink>> links;
  {
    absl::MutexLock lock(&mu_);
    links = links_;
  }
  for (auto& l : links) {
    if (!l->Send(plan)) {
      return absl::UnavailableError(absl::StrCat("worker rank ", l->rank(), " is gone: ", l->why_dead()));
    }
  }
  const absl::Time deadline = absl::Now() + options_.step_timeout;
  for (auto& l : links) {
    std::optional<cv1::StepResult> r = l->Receive(deadline);
    if (!r) {
      if (l->dead()) {
        return absl::UnavailableError(absl::StrCat("worker rank ", l->rank(), " is gone: ", l->why_dead()));
      }
      return absl::UnavailableError(absl::StrCat("worker rank ", l->rank(), " did not finish step ", plan.step_id(),
                                                 " within ", absl::FormatDuration(options_.step_timeout)));
    }
    if (r->error_code() != 0) {
      return absl::UnavailableError(
          absl::StrCat("worker rank ", l->rank(), " failed step ", plan.step_id(), ": ", r->error_message()));
    }
    if (r->step_id() != plan.step_id()) {
      return absl::InternalError(absl::StrCat("worker rank ", l->rank(), " answered step ", r->step_id(),
                                              " (expected ", plan.step_id(), ")"));
    }
    if (l->rank() == 0) *rank0 = std::move(*r);
  }
  return absl::OkStatus();
}

void Engine::Intake() {
  std::deque<std::shared_ptr<Request>> incoming;
  {
    absl::MutexLock lock(&mu_);
    incoming.swap(queue_);
    scheduled_ += static_cast<int64_t>(incoming.size());
  }
  for (auto& r : incoming) scheduler_->Add(std::make_unique<Sequence>(std::move(r), next_sequence_id_++));
}

void Engine::Finish(Sequence* seq, FinishReason reason, absl::Status status) {
  seq->request().Finish(reason, status);
  if (metrics_ != nullptr) RecordFinish(*metrics_, *seq, reason, status);
  scheduler_->Remove(seq);
  absl::MutexLock lock(&mu_);
  --scheduled_;
}

// A cancelled request (client cancel, disconnect or deadline) leaves before
// the step and its blocks come back.
void Engine::SweepCancelled() {
  for (Sequence* s : scheduler_->All()) {
    if (s->request().cancelled()) Finish(s, FinishReason::kCancelled);
  }
}

cv1::StepPlan Engine::BuildPlan(const SchedulerOutput& out) {
  cv1::StepPlan plan;
  plan.set_step_id(next_step_id_++);
  for (const ScheduledSequence& sched : out.batch) {
    Sequence& seq = *sched.seq;
    const Request::Params& p = seq.request().params();
    cv1::SequencePlan* s = plan.add_sequences();
    s->set_sequence_id(seq.id());
    s->set_start_position(seq.num_computed);
    s->mutable_token_ids()->Add(seq.tokens().begin() + seq.num_computed,
                                seq.tokens().begin() + seq.num_computed + sched.num_tokens);
    s->mutable_block_table()->Add(seq.block_table.begin(), seq.block_table.end());
    s->set_sample(sched.sample);
    s->mutable_sampling()->set_temperature(p.sampling.temperature);
    s->mutable_sampling()->set_top_k(p.sampling.top_k);
    s->mutable_sampling()->set_top_p(p.sampling.top_p);
    s->mutable_sampling()->set_seed(p.sampling.seed);
    // The counter of the request's random stream: the index of the token being
    // sampled, so a recomputed (preempted) sequence draws the same tokens.
    s->set_sample_index(seq.num_generated());
    s->set_top_logprobs(p.top_logprobs);
  }
  return plan;
}

void Engine::Postprocess(const SchedulerOutput& out, const cv1::StepResult& rank0) {
  int next = 0;
  for (const ScheduledSequence& sched : out.batch) {
    Sequence& seq = *sched.seq;
    if (seq.first_scheduled == absl::InfinitePast()) {
      seq.first_scheduled = absl::Now();
      seq.request().SetAdmitted(seq.cached_prompt_tokens);
    }
    seq.num_computed += sched.num_tokens;
    blocks_->CommitFullBlocks(seq);
    if (!sched.sample) continue;
    const cv1::SampledToken& t = rank0.tokens(next++);
    seq.AppendToken(t.token_id());
    GeneratedTokenInfo info{t.token_id(), t.logprob(), {}};
    for (const auto& e : t.top_logprobs()) info.top_logprobs.emplace_back(e.token_id(), e.logprob());
    const absl::Time now = absl::Now();
    if (metrics_ != nullptr) RecordToken(*metrics_, seq, now);
    seq.last_token_time = now;
    seq.request().PushToken(std::move(info));
    const Request::Params& p = seq.request().params();
    const int32_t id = t.token_id();
    const bool stop = !p.ignore_eos && (id == config_.eos_token_id ||
                                        std::find(p.stop_token_ids.begin(), p.stop_token_ids.end(), id) !=
                                            p.stop_token_ids.end());
    if (stop) {
      Finish(&seq, FinishReason::kStop);
    } else if (seq.num_generated() >= p.max_new_tokens) {
      Finish(&seq, FinishReason::kLength);
    }
  }
}

void Engine::PublishGauges() {
  int64_t submitted;
  {
    absl::MutexLock lock(&mu_);
    blocks_in_use_ = blocks_->num_used();
    submitted = static_cast<int64_t>(queue_.size());
  }
  if (metrics_ != nullptr) {
    RecordGauges(*metrics_, scheduler_->num_running(), scheduler_->num_waiting() + submitted, *blocks_);
  }
}

void Engine::EndAll(const absl::Status& why) {
  std::deque<std::shared_ptr<Request>> queued;
  {
    absl::MutexLock lock(&mu_);
    queued.swap(queue_);
  }
  for (auto& r : queued) r->Finish(FinishReason::kNone, why);
  if (scheduler_ != nullptr) {
    for (Sequence* s : scheduler_->All()) Finish(s, FinishReason::kNone, why);
    PublishGauges();
  }
  std::vector<std::shared_ptr<WorkerLink>> links;
  {
    absl::MutexLock lock(&mu_);
    links = links_;
  }
  // Healthy workers are told to exit: they cannot serve without the others.
  cv1::StepPlan shutdown;
  shutdown.set_shutdown(true);
  for (auto& l : links) {
    if (l != nullptr) l->Send(shutdown);
  }
}

void Engine::Fail(const absl::Status& why) {
  LOG(ERROR) << "tensor-parallel group failed: " << why;
  {
    absl::MutexLock lock(&mu_);
    state_ = EngineState::kFailed;
    failure_ = why;
  }
  EndAll(why);
}

void Engine::Loop() {
  if (!WaitForWorkers()) {
    absl::MutexLock lock(&mu_);
    state_ = EngineState::kStopped;
    return;
  }
  absl::Time last_step = absl::Now();
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (stop_) break;
    }
    Intake();
    SweepCancelled();
    const int64_t queries = blocks_->prefix_queries(), hits = blocks_->prefix_hits();
    const SchedulerOutput out = scheduler_->Schedule();
    if (metrics_ != nullptr) {
      RecordSchedule(*metrics_, out);
      RecordPrefixCache(*metrics_, blocks_->prefix_queries() - queries, blocks_->prefix_hits() - hits);
    }
    PublishGauges();
    if (out.batch.empty()) {
      // Idle: wait for work, or send a heartbeat every rank answers at once.
      absl::MutexLock lock(&mu_);
      auto work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || !queue_.empty(); };
      const bool stalled = scheduler_->num_running() + scheduler_->num_waiting() > 0;  // cannot happen: guarded
      const absl::Time until = stalled ? absl::Now() + absl::Milliseconds(10) : last_step + options_.heartbeat;
      if (mu_.AwaitWithDeadline(absl::Condition(&work), until) || stalled) continue;
    }
    const cv1::StepPlan plan = BuildPlan(out);
    const absl::Time t0 = absl::Now();
    cv1::StepResult rank0;
    absl::Status s = RunStep(plan, &rank0);
    last_step = absl::Now();
    if (!s.ok()) {
      Fail(s);
      return;
    }
    int64_t samples = 0;
    for (const auto& sched : out.batch) samples += sched.sample ? 1 : 0;
    if (rank0.tokens_size() != samples) {
      Fail(absl::InternalError(
          absl::StrCat("rank 0 sampled ", rank0.tokens_size(), " tokens for ", samples, " sequences")));
      return;
    }
    if (metrics_ != nullptr && !out.batch.empty()) RecordStep(*metrics_, last_step - t0);
    Postprocess(out, rank0);
  }
  {
    absl::MutexLock lock(&mu_);
    state_ = EngineState::kStopped;
  }
  EndAll(absl::UnavailableError("the server is shutting down"));
}

}  // namespace mla
