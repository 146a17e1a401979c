#include "runtime/worker.h"

#include <glog/logging.h>
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <set>

#include "absl/strings/str_cat.h"
#include "mla/control/v1/control.grpc.pb.h"
#include "runtime/auth.h"
#include "runtime/communicator.h"
#include "runtime/control_store.h"
#include "runtime/sampler.h"
#include "runtime/status_macros.h"
#include "runtime/worker_backend.h"

namespace mla {
namespace {

namespace cv1 = control::v1;
using Clock = std::chrono::steady_clock;

int64_t MicrosSince(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t).count();
}

// One worker's state once it has joined the group.
class Worker {
 public:
  Worker(const WorkerOptions& options, int rank, WorkerBackend backend)
      : options_(options), rank_(rank), backend_(std::move(backend)) {}

  cv1::WorkerReady Ready() const {
    cv1::WorkerReady r;
    r.set_rank(rank_);
    r.set_cache_blocks(backend_.cache_blocks);
    r.set_block_size(static_cast<int32_t>(backend_.block_size));
    const WeightBytes& b = backend_.weight_bytes;
    r.mutable_weight_bytes()->set_attention(b.attention);
    r.mutable_weight_bytes()->set_experts(b.experts);
    r.mutable_weight_bytes()->set_embeddings(b.embeddings);
    r.mutable_weight_bytes()->set_replicated(b.replicated);
    r.set_host(options_.host);
    r.set_device(backend_.device);
    r.set_pid(::getpid());
    r.set_cache_bytes(backend_.cache_bytes);
    r.set_decode_kernel(backend_.decode_kernel);
    return r;
  }

  // Executes one plan. A failed step is reported in the result; the caller
  // stops after sending it (the group is out of step).
  cv1::StepResult Execute(const cv1::StepPlan& plan) {
    auto t0 = Clock::now();
    cv1::StepResult result;
    result.set_step_id(plan.step_id());
    result.set_rank(rank_);
    result.set_cache_bytes(backend_.cache_bytes);
    if (plan.sequences().empty()) return result;  // heartbeat
    std::vector<SequenceStep> batch;
    std::set<int32_t> blocks;
    for (const cv1::SequencePlan& s : plan.sequences()) {
      batch.push_back(SequenceStep{std::span<const int32_t>(s.token_ids().data(), s.token_ids().size()),
                                   s.start_position(),
                                   std::span<const int32_t>(s.block_table().data(), s.block_table().size()), false});
      blocks.insert(s.block_table().begin(), s.block_table().end());
    }
    result.set_blocks_referenced(static_cast<int64_t>(blocks.size()));
    absl::StatusOr<std::vector<float>> logits = backend_.forward(batch);
    result.mutable_timings()->set_forward_us(MicrosSince(t0));
    if (!logits.ok()) {
      result.set_error_code(static_cast<int32_t>(logits.status().code()));
      result.set_error_message(std::string(logits.status().message()));
      return result;
    }
    auto t1 = Clock::now();
    if (rank_ == 0) Sample(plan, *logits, result);
    result.mutable_timings()->set_sample_us(MicrosSince(t1));
    result.mutable_timings()->set_total_us(MicrosSince(t0));
    return result;
  }

 private:
  void Sample(const cv1::StepPlan& plan, const std::vector<float>& logits, cv1::StepResult& result) {
    const int64_t vocab = backend_.config.vocab_size;
    for (int i = 0; i < plan.sequences_size(); ++i) {
      const cv1::SequencePlan& s = plan.sequences(i);
      if (!s.sample()) continue;
      std::span<const float> row(&logits[static_cast<size_t>(i) * vocab], static_cast<size_t>(vocab));
      SamplingParams p{s.sampling().temperature(), s.sampling().top_k(), s.sampling().top_p(), s.sampling().seed()};
      int32_t token = SampleToken(row, p, static_cast<uint64_t>(s.sample_index()));
      TokenLogprobs lp = ComputeLogprobs(row, token, s.top_logprobs());
      cv1::SampledToken* t = result.add_tokens();
      t->set_sequence_id(s.sequence_id());
      t->set_token_id(token);
      t->set_logprob(lp.logprob);
      for (const auto& [id, logprob] : lp.top) {
        cv1::TokenLogprob* e = t->add_top_logprobs();
        e->set_token_id(id);
        e->set_logprob(logprob);
      }
    }
  }

  const WorkerOptions& options_;
  int rank_;
  WorkerBackend backend_;
};

absl::StatusOr<cv1::RegisterResponse> Register(cv1::ControlPlane::Stub& stub, const WorkerOptions& o) {
  cv1::RegisterRequest req;
  req.set_host(o.host);
  req.set_device(o.backend);
  req.set_pid(::getpid());
  req.set_node_rank(o.node_rank);
  req.set_local_rank(o.local_rank);
  req.set_local_world_size(o.local_world_size);
  grpc::ClientContext ctx;
  AddBearer(ctx, o.api_key);
  ctx.set_wait_for_ready(true);  // the coordinator may still be starting
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + o.connect_timeout));
  cv1::RegisterResponse resp;
  absl::Status s = FromGrpc(stub.Register(&ctx, req, &resp));
  if (!s.ok()) {
    return absl::Status(s.code(), absl::StrCat("registering with the coordinator at ", o.coordinator, ": ",
                                               s.message()));
  }
  return resp;
}

}  // namespace

absl::Status RunWorker(const WorkerOptions& o) {
  if (o.backend != "cpu" && o.backend != "cuda") {
    return absl::InvalidArgumentError(absl::StrCat("--backend ", o.backend, " (expected cpu or cuda)"));
  }
  // The coordinator may still be starting: retry the connection quickly
  // rather than with gRPC's default backoff (1 s, growing to 2 min).
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (!o.tls_ca_path.empty()) {
    std::ifstream in(o.tls_ca_path);
    if (!in) return absl::InvalidArgumentError(absl::StrCat("--tls-ca: cannot read ", o.tls_ca_path));
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    creds = grpc::SslCredentials(ssl);
  }
  auto channel = grpc::CreateCustomChannel(o.coordinator, creds, args);
  auto stub = std::shared_ptr<cv1::ControlPlane::Stub>(cv1::ControlPlane::NewStub(channel));
  MLA_ASSIGN_OR_RETURN(cv1::RegisterResponse reg, Register(*stub, o));
  const int rank = reg.rank(), world = reg.world_size();
  LOG(INFO) << "worker rank " << rank << " of " << world << " (node " << o.node_rank << ", local rank "
            << o.local_rank << ")";

  // Refuse an unshardable model before joining the group or reading weights.
  MLA_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(o.model_dir));
  MLA_RETURN_IF_ERROR(CheckShardable(config, world));

  ControlPlaneStore store(stub, reg.rendezvous_prefix(), o.api_key);
  MLA_ASSIGN_OR_RETURN(WorkerBackend backend, o.backend == "cuda" ? MakeCudaBackend(o, store, rank, world)
                                                                  : MakeCpuBackend(o, store, rank, world));
  Worker worker(o, rank, std::move(backend));

  grpc::ClientContext ctx;
  AddBearer(ctx, o.api_key);
  auto stream = stub->Steps(&ctx);
  cv1::WorkerMessage hello;
  *hello.mutable_ready() = worker.Ready();
  if (!stream->Write(hello)) return FromGrpc(stream->Finish());
  LOG(INFO) << "worker rank " << rank << " ready: " << hello.ready().cache_blocks() << " cache blocks";

  cv1::StepPlan plan;
  while (stream->Read(&plan)) {
    if (plan.shutdown()) {
      stream->WritesDone();
      LOG(INFO) << "worker rank " << rank << ": shutdown";
      return absl::OkStatus();
    }
    cv1::WorkerMessage msg;
    *msg.mutable_result() = worker.Execute(plan);
    const bool failed = msg.result().error_code() != 0;
    if (!stream->Write(msg)) break;
    if (failed) {
      return absl::Status(static_cast<absl::StatusCode>(msg.result().error_code()),
                          absl::StrCat("step ", plan.step_id(), ": ", msg.result().error_message()));
    }
  }
  absl::Status s = FromGrpc(stream->Finish());
  return absl::UnavailableError(
      absl::StrCat("lost the coordinator at ", o.coordinator, s.ok() ? "" : ": ", s.message()));
}

}  // namespace mla
