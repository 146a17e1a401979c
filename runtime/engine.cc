#include "runtime/engine.h"

#include <glog/logging.h>

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace mla {

namespace cv1 = control::v1;

namespace {

constexpr int kMaxTopLogprobs = 20;

int64_t BlocksFor(int64_t tokens) { return (tokens + kDefaultBlockSize - 1) / kDefaultBlockSize; }

}  // namespace

Engine::Engine(ModelConfig config, EngineOptions options) : config_(std::move(config)), options_(options) {
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
    if (state_ == EngineState::kLoading) return absl::UnavailableError("the model is still loading");
    if (state_ != EngineState::kServing) {
      return absl::UnavailableError(absl::StrCat("the server is not serving: ", failure_.message()));
    }
    blocks = num_blocks_;
  }
  if (p.prompt_ids.empty()) return absl::InvalidArgumentError("prompt_token_ids is empty (expected at least one token)");
  for (size_t i = 0; i < p.prompt_ids.size(); ++i) {
    const int32_t id = p.prompt_ids[i];
    if (id < 0 || id >= config_.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("prompt_token_ids[", i, "] = ", id,
                                                     " (expected 0 <= id < vocab_size = ", config_.vocab_size, ")"));
    }
  }
  if (p.max_new_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_new_tokens = ", p.max_new_tokens, " (expected >= 1)"));
  }
  const int64_t total = static_cast<int64_t>(p.prompt_ids.size()) + p.max_new_tokens;
  if (total > config_.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("prompt (", p.prompt_ids.size(), " tokens) + max_new_tokens (",
                                                   p.max_new_tokens, ") = ", total,
                                                   " exceeds the model's context of ", config_.max_position_embeddings));
  }
  if (BlocksFor(total) > blocks) {
    return absl::InvalidArgumentError(absl::StrCat("prompt + max_new_tokens = ", total, " tokens needs ",
                                                   BlocksFor(total), " cache blocks; the whole cache has ", blocks,
                                                   " (", blocks * kDefaultBlockSize, " tokens)"));
  }
  if (p.top_logprobs < 0 || p.top_logprobs > kMaxTopLogprobs) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_logprobs = ", p.top_logprobs, " (expected 0 <= top_logprobs <= ", kMaxTopLogprobs, ")"));
  }
  return ValidateSamplingParams(p.sampling);
}

absl::Status Engine::Submit(std::shared_ptr<Request> request) {
  absl::MutexLock lock(&mu_);
  if (state_ != EngineState::kServing) return absl::UnavailableError("the server is not serving");
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
  allocator_ = std::make_unique<BlockAllocator>(num_blocks_);
  state_ = EngineState::kServing;
  LOG(INFO) << "all " << links_.size() << " workers ready; " << num_blocks_ << " cache blocks per rank";
  return true;
}

// Moves queued requests into the running set while their blocks fit (first
// come, first served; all blocks for prompt + max_new_tokens up front).
void Engine::Admit(std::vector<std::shared_ptr<Request>>& active) {
  absl::MutexLock lock(&mu_);
  while (!queue_.empty()) {
    std::shared_ptr<Request>& r = queue_.front();
    if (r->cancelled()) {
      r->Finish(FinishReason::kCancelled);
      queue_.pop_front();
      continue;
    }
    const int64_t total = static_cast<int64_t>(r->params().prompt_ids.size()) + r->params().max_new_tokens;
    if (!r->blocks.Reserve(total, *allocator_).ok()) break;
    r->sequence_id = next_sequence_id_++;
    active.push_back(std::move(r));
    queue_.pop_front();
  }
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

void Engine::Fail(const absl::Status& why, std::vector<std::shared_ptr<Request>>& active) {
  LOG(ERROR) << "tensor-parallel group failed: " << why;
  std::deque<std::shared_ptr<Request>> queued;
  std::vector<std::shared_ptr<WorkerLink>> links;
  {
    absl::MutexLock lock(&mu_);
    state_ = EngineState::kFailed;
    failure_ = why;
    queued.swap(queue_);
    links = links_;
  }
  for (auto& r : active) r->Finish(FinishReason::kNone, why);
  for (auto& r : queued) r->Finish(FinishReason::kNone, why);
  active.clear();
  // Healthy workers are told to exit; they cannot serve without the lost rank.
  cv1::StepPlan shutdown;
  shutdown.set_shutdown(true);
  for (auto& l : links) l->Send(shutdown);
}

void Engine::Loop() {
  if (!WaitForWorkers()) {
    absl::MutexLock lock(&mu_);
    state_ = EngineState::kStopped;
    return;
  }
  std::vector<std::shared_ptr<Request>> active;
  absl::Time last_step = absl::Now();
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (stop_) break;
    }
    // Cancelled requests leave before the step; their blocks come back.
    for (auto& r : active) {
      if (r->cancelled()) {
        r->Finish(FinishReason::kCancelled);
        r->blocks.Release(*allocator_);
      }
    }
    std::erase_if(active, [](const auto& r) { return r->cancelled(); });
    Admit(active);
    cv1::StepPlan plan;
    plan.set_step_id(next_step_id_++);
    if (active.empty()) {
      absl::MutexLock lock(&mu_);
      auto work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || !queue_.empty(); };
      if (mu_.AwaitWithDeadline(absl::Condition(&work), last_step + options_.heartbeat)) {
        --next_step_id_;
        continue;
      }
      // Idle: the plan stays empty, a heartbeat every rank answers at once.
    }
    for (const auto& r : active) {
      const Request::Params& p = r->params();
      cv1::SequencePlan* s = plan.add_sequences();
      s->set_sequence_id(r->sequence_id);
      s->set_start_position(r->cached);
      if (r->cached < static_cast<int64_t>(p.prompt_ids.size())) {
        s->mutable_token_ids()->Add(p.prompt_ids.begin() + r->cached, p.prompt_ids.end());
      } else {
        s->add_token_ids(r->last_token);
      }
      s->mutable_block_table()->Add(r->blocks.blocks().begin(), r->blocks.blocks().end());
      s->set_sample(true);
      s->mutable_sampling()->set_temperature(p.sampling.temperature);
      s->mutable_sampling()->set_top_k(p.sampling.top_k);
      s->mutable_sampling()->set_top_p(p.sampling.top_p);
      s->mutable_sampling()->set_seed(p.sampling.seed);
      s->set_sample_index(static_cast<int64_t>(r->generated.size()));
      s->set_top_logprobs(p.top_logprobs);
    }
    cv1::StepResult result;
    absl::Status s = RunStep(plan, &result);
    last_step = absl::Now();
    if (!s.ok()) {
      Fail(s, active);
      return;
    }
    if (result.tokens_size() != static_cast<int>(active.size())) {
      Fail(absl::InternalError(absl::StrCat("rank 0 sampled ", result.tokens_size(), " tokens for ", active.size(),
                                            " sequences")),
           active);
      return;
    }
    for (size_t i = 0; i < active.size(); ++i) {
      Request& r = *active[i];
      const cv1::SampledToken& t = result.tokens(static_cast<int>(i));
      r.cached += plan.sequences(static_cast<int>(i)).token_ids_size();
      r.generated.push_back(t.token_id());
      r.last_token = t.token_id();
      GeneratedTokenInfo info{t.token_id(), t.logprob(), {}};
      for (const auto& e : t.top_logprobs()) info.top_logprobs.emplace_back(e.token_id(), e.logprob());
      r.PushToken(std::move(info));
      if (!r.params().ignore_eos && t.token_id() == config_.eos_token_id) {
        r.Finish(FinishReason::kStop);
      } else if (static_cast<int64_t>(r.generated.size()) >= r.params().max_new_tokens) {
        r.Finish(FinishReason::kLength);
      } else {
        continue;
      }
      r.blocks.Release(*allocator_);
    }
    std::erase_if(active, [](const auto& r) { return r->blocks.blocks().empty(); });
  }
  // Stopping: workers exit, nothing is left waiting.
  std::deque<std::shared_ptr<Request>> queued;
  std::vector<std::shared_ptr<WorkerLink>> links;
  {
    absl::MutexLock lock(&mu_);
    state_ = EngineState::kStopped;
    queued.swap(queue_);
    links = links_;
  }
  const absl::Status down = absl::UnavailableError("the server is shutting down");
  for (auto& r : active) r->Finish(FinishReason::kNone, down);
  for (auto& r : queued) r->Finish(FinishReason::kNone, down);
  cv1::StepPlan shutdown;
  shutdown.set_shutdown(true);
  for (auto& l : links) l->Send(shutdown);
}

}  // namespace mla
