// Control-plane cost per step: one StepPlan out to N workers over gRPC on
// loopback and their StepResults back, with an empty forward (the workers
// answer at once), for N = 1, 2, 4; and its share of a real decode step of the
// small config measured in the same run.
//   build/bin/mla-bench-control-plane [--model DIR] [--steps N] [--batch B] [--json FILE]
#include <glog/logging.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "launcher/cli_flags.h"
#include "nlohmann/json.hpp"
#include "runtime/control_service.h"
#include "runtime/engine.h"
#include "runtime/model.h"

namespace mla {
namespace {

namespace cv1 = control::v1;
using Clock = std::chrono::steady_clock;

// A worker that registers, says ready, and answers every plan at once; rank 0
// returns one sampled token per sequence, as a real rank 0 does.
void FakeWorker(const std::string& address, int local_rank, int world) {
  auto stub = cv1::ControlPlane::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext reg_ctx;
  reg_ctx.set_wait_for_ready(true);
  cv1::RegisterRequest req;
  req.set_local_rank(local_rank);
  req.set_local_world_size(world);
  cv1::RegisterResponse resp;
  CHECK(stub->Register(&reg_ctx, req, &resp).ok());
  grpc::ClientContext ctx;
  auto stream = stub->Steps(&ctx);
  cv1::WorkerMessage hello;
  hello.mutable_ready()->set_rank(resp.rank());
  hello.mutable_ready()->set_cache_blocks(1 << 20);
  hello.mutable_ready()->set_block_size(64);
  CHECK(stream->Write(hello));
  cv1::StepPlan plan;
  while (stream->Read(&plan) && !plan.shutdown()) {
    cv1::WorkerMessage m;
    cv1::StepResult* r = m.mutable_result();
    r->set_step_id(plan.step_id());
    r->set_rank(resp.rank());
    if (resp.rank() == 0) {
      for (const auto& s : plan.sequences()) {
        cv1::SampledToken* t = r->add_tokens();
        t->set_sequence_id(s.sequence_id());
        t->set_token_id(7);
        t->set_logprob(-0.5f);
      }
    }
    if (!stream->Write(m)) break;
  }
  stream->WritesDone();
  stream->Finish();
}

// A decode step of `batch` sequences at `context` cached tokens.
cv1::StepPlan DecodePlan(int64_t step, int batch, int64_t context) {
  cv1::StepPlan plan;
  plan.set_step_id(step);
  const int blocks = static_cast<int>((context + 1 + 63) / 64);
  for (int b = 0; b < batch; ++b) {
    cv1::SequencePlan* s = plan.add_sequences();
    s->set_sequence_id(b);
    s->add_token_ids(100 + b);
    s->set_start_position(context);
    for (int i = 0; i < blocks; ++i) s->add_block_table(b * blocks + i);
    s->set_sample(true);
    s->mutable_sampling()->set_top_p(1.0f);
    s->set_sample_index(context);
  }
  return plan;
}

struct Stats {
  double median_us, p90_us;
};

Stats Measure(const ModelConfig& config, int world, int steps, int batch, int64_t context) {
  EngineOptions eo;
  eo.world_size = world;
  Engine engine(config, eo);  // never started: the benchmark drives RunStep itself
  ControlService control(engine, "bench");
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&control);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  const std::string address = absl::StrCat("127.0.0.1:", port);
  std::vector<std::thread> workers;
  for (int r = 0; r < world; ++r) workers.emplace_back(FakeWorker, address, r, world);
  while (static_cast<int>(engine.ranks().size()) < world) std::this_thread::sleep_for(std::chrono::milliseconds(5));

  std::vector<double> us;
  for (int i = -20; i < steps; ++i) {  // 20 warm-up steps
    cv1::StepPlan plan = DecodePlan(i + 20, batch, context);
    cv1::StepResult rank0;
    auto t0 = Clock::now();
    CHECK(engine.RunStep(plan, &rank0).ok());
    double t = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
    CHECK_EQ(rank0.tokens_size(), batch);
    if (i >= 0) us.push_back(t);
  }
  cv1::StepPlan shutdown;
  shutdown.set_shutdown(true);
  cv1::StepResult ignored;
  engine.RunStep(shutdown, &ignored).IgnoreError();  // workers leave; no answer expected
  for (auto& w : workers) w.join();
  server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
  std::sort(us.begin(), us.end());
  return Stats{us[us.size() / 2], us[us.size() * 9 / 10]};
}

// Median time of a real decode step (TP 1, in process) on the model.
double DecodeStepUs(const std::string& dir, int batch, int64_t context) {
  auto model = Model::Load(dir);
  CHECK(model.ok()) << model.status();
  const int64_t per_seq = (context + 1 + 63) / 64;
  PagedLatentCache cache = (*model)->MakeCache(batch * per_seq, CacheDType::kF32);
  std::vector<std::vector<int32_t>> prompts(batch), tables(batch);
  std::vector<SequenceStep> prefill;
  for (int b = 0; b < batch; ++b) {
    for (int64_t i = 0; i < context; ++i) prompts[b].push_back(static_cast<int32_t>((i * 31 + b) % 200 + 2));
    for (int64_t i = 0; i < per_seq; ++i) tables[b].push_back(static_cast<int32_t>(b * per_seq + i));
    prefill.push_back(SequenceStep{prompts[b], 0, tables[b], false});
  }
  CHECK((*model)->Forward(prefill, cache).ok());
  std::vector<int32_t> next(batch, 5);
  std::vector<double> us;
  for (int i = 0; i < 11; ++i) {
    std::vector<SequenceStep> step;
    for (int b = 0; b < batch; ++b) step.push_back(SequenceStep{std::span<const int32_t>(&next[b], 1), context, tables[b], false});
    auto t0 = Clock::now();
    CHECK((*model)->Forward(step, cache).ok());  // rewrites position `context`: same work every time
    us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
  std::sort(us.begin(), us.end());
  return us[us.size() / 2];
}

int Run(int argc, char** argv) {
  auto flags = CliFlags::Parse(argc, argv, {"model", "steps", "batch", "json"}, {});
  if (!flags.ok()) {
    fprintf(stderr, "mla-bench-control-plane: error: %s\n", std::string(flags.status().message()).c_str());
    return 2;
  }
  const std::string dir = flags->String("model").value_or(MLA_DEFAULT_MODEL_DIR);
  const int steps = static_cast<int>(flags->Int("steps", 500, 1).value_or(500));
  const int batch = static_cast<int>(flags->Int("batch", 8, 1).value_or(8));
  const int64_t context = 512;
  auto config = LoadModelConfig(dir);
  CHECK(config.ok()) << config.status();
  const double decode_us = DecodeStepUs(dir, batch, context);
  printf("control plane per step: batch %d decode plan (context %ld), %d steps, gRPC on loopback, empty forward\n",
         batch, context, steps);
  printf("real decode step on %s (tp 1, batch %d, context %ld): %.0f us\n", dir.c_str(), batch, context, decode_us);
  printf("%8s %12s %12s %22s\n", "workers", "median us", "p90 us", "share of a decode step");
  nlohmann::json out = {{"decode_step_us", decode_us}, {"batch", batch}, {"context", context}, {"rows", nlohmann::json::array()}};
  for (int world : {1, 2, 4}) {
    Stats s = Measure(*config, world, steps, batch, context);
    const double share = s.median_us / (s.median_us + decode_us);
    printf("%8d %12.1f %12.1f %21.1f%%\n", world, s.median_us, s.p90_us, 100.0 * share);
    out["rows"].push_back({{"workers", world}, {"median_us", s.median_us}, {"p90_us", s.p90_us}, {"share", share}});
  }
  if (auto path = flags->String("json")) std::ofstream(*path) << out.dump(2) << "\n";
  return 0;
}

}  // namespace
}  // namespace mla

int main(int argc, char** argv) {
  FLAGS_logtostderr = true;
  FLAGS_minloglevel = 1;
  google::InitGoogleLogging(argv[0]);
  return mla::Run(argc, argv);
}
