// CPU prefill and decode throughput on a small config (default: the embedded
// tiny DeepSeek-V3 fixture), with the naive-form decode measured in the same
// run as the baseline for the absorbed decode.
//   build/bin/mla-bench-cpu [--model DIR] [--threads N] [--json FILE]
#include <glog/logging.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <thread>

#include "kernels/cpu/gemm.h"
#include "launcher/cli_flags.h"
#include "nlohmann/json.hpp"
#include "runtime/generator.h"
#include "runtime/model.h"

namespace mla {
namespace {

using Clock = std::chrono::steady_clock;

struct Row {
  std::string name;
  int64_t batch, prompt, tokens;
  double seconds;
};

std::vector<int32_t> Prompt(int64_t n, int64_t vocab, int64_t salt) {
  std::vector<int32_t> p;
  for (int64_t i = 0; i < n; ++i) p.push_back(static_cast<int32_t>((i * 7919 + salt * 104729) % (vocab - 2) + 2));
  return p;
}

// Prefill of `batch` prompts of `prompt` tokens, one step each.
Row Prefill(Model& model, int64_t batch, int64_t prompt) {
  const int64_t per_seq = prompt / kDefaultBlockSize + 1;
  PagedLatentCache cache = model.MakeCache(batch * per_seq, CacheDType::kF32);
  std::vector<std::vector<int32_t>> prompts, tables(static_cast<size_t>(batch));
  std::vector<SequenceStep> steps;
  for (int64_t b = 0; b < batch; ++b) prompts.push_back(Prompt(prompt, model.config().vocab_size, b));
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t i = 0; i < per_seq; ++i) tables[b].push_back(static_cast<int32_t>(b * per_seq + i));
    steps.push_back(SequenceStep{prompts[b], 0, tables[b], false});
  }
  auto t0 = Clock::now();
  CHECK(model.Forward(steps, cache).ok());
  return Row{"prefill", batch, prompt, batch * prompt, std::chrono::duration<double>(Clock::now() - t0).count()};
}

// Decode: `batch` sequences with `prompt` cached tokens each, `steps` tokens each.
Row Decode(Model& model, const std::string& name, int64_t batch, int64_t prompt, int64_t steps) {
  const int64_t per_seq = (prompt + steps) / kDefaultBlockSize + 1;
  PagedLatentCache cache = model.MakeCache(batch * per_seq, CacheDType::kF32);
  BlockAllocator allocator(batch * per_seq);
  std::vector<GenerationRequest> reqs;
  for (int64_t b = 0; b < batch; ++b) {
    GenerationRequest r;
    r.prompt_ids = Prompt(prompt, model.config().vocab_size, b);
    r.max_new_tokens = 1;
    reqs.push_back(r);
  }
  CHECK(Generate(model, cache, allocator, reqs).ok());  // warm-up: fills nothing we keep
  for (auto& r : reqs) r.max_new_tokens = steps + 1;
  auto t0 = Clock::now();
  CHECK(Generate(model, cache, allocator, reqs).ok());
  double total = std::chrono::duration<double>(Clock::now() - t0).count();
  Row prefill = Prefill(model, batch, prompt);
  // Generate's time includes one prefill; remove it so the row is decode only.
  return Row{name, batch, prompt, batch * steps, std::max(1e-9, total - prefill.seconds)};
}

int Run(int argc, char** argv) {
  auto flags = CliFlags::Parse(argc, argv, {"model", "threads", "json"}, {});
  if (!flags.ok()) {
    fprintf(stderr, "mla-bench-cpu: error: %s\n", std::string(flags.status().message()).c_str());
    return 2;
  }
  std::string dir = flags->String("model").value_or(MLA_DEFAULT_MODEL_DIR);
  int threads = static_cast<int>(
      flags->Int("threads", std::max(1u, std::thread::hardware_concurrency()), 1).value_or(1));
  cpu::SetBlasThreads(threads);
  ModelOptions absorbed, naive;
  absorbed.num_threads = naive.num_threads = threads;
  naive.attention_path = AttentionPath::kNaive;
  auto model = Model::Load(dir, absorbed);
  auto naive_model = Model::Load(dir, naive);
  if (!model.ok() || !naive_model.ok()) {
    fprintf(stderr, "mla-bench-cpu: error: %s\n", std::string(model.status().message()).c_str());
    return 2;
  }
  std::vector<Row> rows;
  Prefill(**model, 1, 64);  // warm-up
  rows.push_back(Prefill(**model, 1, 256));
  rows.push_back(Prefill(**model, 4, 256));
  for (int64_t batch : {1, 8}) {
    rows.push_back(Decode(**model, "decode absorbed", batch, 512, 32));
    rows.push_back(Decode(**naive_model, "decode naive (baseline)", batch, 512, 32));
  }
  printf("model %s, %d threads, float32 CPU\n", dir.c_str(), threads);
  printf("%-26s %6s %8s %10s %12s %10s\n", "phase", "batch", "context", "tokens", "tokens/s", "ms/step");
  nlohmann::json out = nlohmann::json::array();
  for (const Row& r : rows) {
    double tps = static_cast<double>(r.tokens) / r.seconds;
    int64_t step_count = r.name == "prefill" ? 1 : r.tokens / r.batch;
    double ms = r.seconds * 1e3 / static_cast<double>(step_count);
    printf("%-26s %6ld %8ld %10ld %12.1f %10.2f\n", r.name.c_str(), r.batch, r.prompt, r.tokens, tps, ms);
    out.push_back({{"phase", r.name}, {"batch", r.batch}, {"context", r.prompt}, {"tokens", r.tokens},
                   {"tokens_per_s", tps}, {"ms_per_step", ms}});
  }
  for (size_t i = 2; i + 1 < rows.size(); i += 2) {
    printf("absorbed / naive decode speed, batch %ld: %.2fx\n", rows[i].batch, rows[i + 1].seconds / rows[i].seconds);
  }
  if (auto path = flags->String("json")) std::ofstream(*path) << out.dump(2) << "\n";
  return 0;
}

}  // namespace
}  // namespace mla

int main(int argc, char** argv) {
  FLAGS_logtostderr = true;
  google::InitGoogleLogging(argv[0]);
  return mla::Run(argc, argv);
}
