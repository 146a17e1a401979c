// mla-generate: offline generation on the CPU backend, or on one GPU with --backend cuda.
//   mla-generate --model DIR --prompt-ids 1,2,3 --max-new-tokens N [--temperature T --top-k K
//                --top-p P --seed S] [--kv-cache-dtype fp32|bf16] [--logits-out FILE.json]
//                [--backend cpu|cuda [--decode-kernel SPEC] [--moe-grouping host|device] [--decode-graphs]]
//   mla-generate --model DIR --describe
// Exit codes: 0 ok; 2 bad flags or a bad model directory; 1 any other failure.
#include <glog/logging.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/cpu/gemm.h"
#include "launcher/cli_flags.h"
#include "launcher/decode_kernel_flag.h"
#include "nlohmann/json.hpp"
#include "runtime/generator.h"
#include "runtime/model.h"
#include "runtime/moe_grouping.h"
#include "runtime/status_macros.h"
#ifdef MLA_HAVE_CUDA
#include "runtime/cuda/cuda_model.h"
#endif

namespace mla {
namespace {

constexpr char kUsage[] =
    "usage: mla-generate [--model DIR] --prompt-ids 1,2,3 [--max-new-tokens N] [--temperature T]\n"
    "                    [--top-k K] [--top-p P] [--seed S] [--kv-cache-dtype fp32|bf16]\n"
    "                    [--logits-out FILE.json] [--prefill-chunk N] [--threads N] [--describe]\n"
    "                    [--backend cpu|cuda]   (cuda: GPU 0, BF16, a bf16 latent cache)\n"
    "                    [--decode-kernel SPEC] (cuda: e.g. mma=warpgroup,copy=bulk; launcher/decode_kernel_flag.h)\n"
    "                    [--moe-grouping host|device] (cuda: where MoE layers group tokens by expert)\n"
    "                    [--decode-graphs] (cuda: decode steps replayed from CUDA graphs; needs\n"
    "                                       --moe-grouping device on a MoE model)\n"
    "  --model defaults to the embedded tiny DeepSeek-V3 fixture (" MLA_DEFAULT_MODEL_DIR ")\n";

struct Options {
  std::string model_dir = MLA_DEFAULT_MODEL_DIR;
  bool describe = false;
  GenerationRequest request;
  CacheDType cache_dtype = CacheDType::kF32;
  bool cache_dtype_set = false;
  std::string logits_out;
  int threads = 1;
  std::string backend = "cpu";
  cuda::MlaDecodeVariant decode_kernel;
  MoeGrouping moe_grouping = MoeGrouping::kHost;
  bool decode_graphs = false;
};

absl::StatusOr<Options> ParseOptions(int argc, char** argv) {
  MLA_ASSIGN_OR_RETURN(
      CliFlags flags,
      CliFlags::Parse(argc, argv,
                      {"model", "prompt-ids", "max-new-tokens", "temperature", "top-k", "top-p", "seed",
                       "kv-cache-dtype", "logits-out", "prefill-chunk", "threads", "backend", "decode-kernel",
                       "moe-grouping"},
                      {"describe", "help", "decode-graphs"}));
  Options o;
  if (auto m = flags.String("model")) o.model_dir = *m;
  o.describe = flags.Has("describe");
  o.backend = flags.String("backend").value_or("cpu");
  if (o.backend != "cpu" && o.backend != "cuda") {
    return absl::InvalidArgumentError(absl::StrCat("--backend ", o.backend, " (expected cpu or cuda)"));
  }
  MLA_ASSIGN_OR_RETURN(o.decode_kernel, DecodeKernelFlag(flags, o.backend));
  MLA_ASSIGN_OR_RETURN(o.moe_grouping, ParseMoeGrouping(flags.String("moe-grouping").value_or("host"), o.backend));
  MLA_ASSIGN_OR_RETURN(o.decode_graphs, DecodeGraphsFlag(flags, o.backend));
  if (o.describe) return o;
  if (!flags.Has("prompt-ids")) return absl::InvalidArgumentError("--prompt-ids is required (e.g. 1,2,3)");
  MLA_ASSIGN_OR_RETURN(o.request.prompt_ids, flags.IntList("prompt-ids"));
  MLA_ASSIGN_OR_RETURN(o.request.max_new_tokens, flags.Int("max-new-tokens", 16, 1));
  MLA_ASSIGN_OR_RETURN(double temperature, flags.Double("temperature", 0.0));
  o.request.sampling.temperature = static_cast<float>(temperature);
  MLA_ASSIGN_OR_RETURN(int64_t top_k, flags.Int("top-k", 0, 0));
  o.request.sampling.top_k = static_cast<int32_t>(std::min<int64_t>(top_k, INT32_MAX));
  MLA_ASSIGN_OR_RETURN(double top_p, flags.Double("top-p", 1.0));
  o.request.sampling.top_p = static_cast<float>(top_p);
  MLA_ASSIGN_OR_RETURN(o.request.sampling.seed, flags.Uint64("seed", 0));
  MLA_RETURN_IF_ERROR(ValidateSamplingParams(o.request.sampling));
  MLA_ASSIGN_OR_RETURN(o.request.prefill_chunk, flags.Int("prefill-chunk", 0, 0));
  MLA_ASSIGN_OR_RETURN(o.cache_dtype, ParseCacheDType(flags.String("kv-cache-dtype").value_or("fp32")));
  o.cache_dtype_set = flags.Has("kv-cache-dtype");
  o.logits_out = flags.String("logits-out").value_or("");
  o.request.record_logits = !o.logits_out.empty();
  int64_t cores = std::max(1u, std::thread::hardware_concurrency());
  MLA_ASSIGN_OR_RETURN(int64_t threads, flags.Int("threads", cores, 1));
  o.threads = static_cast<int>(threads);
  return o;
}

absl::Status WriteLogits(const std::string& path, const GenerationRequest& req, const GenerationResult& res) {
  nlohmann::json j;
  j["prompt_ids"] = req.prompt_ids;
  j["generated_ids"] = res.generated_ids;
  j["logits"] = res.logits;
  std::ofstream out(path);
  if (!out) return absl::InvalidArgumentError(absl::StrCat("--logits-out: cannot write ", path));
  out << j.dump() << "\n";
  if (!out) return absl::InternalError(absl::StrCat("--logits-out: write to ", path, " failed"));
  return absl::OkStatus();
}

int Fail(int code, const absl::Status& status) {
  std::cerr << "mla-generate: error: " << status.message() << "\n";
  return code;
}

int Run(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--help") {
      std::cout << kUsage;
      return 0;
    }
  }
  absl::StatusOr<Options> options = ParseOptions(argc, argv);
  if (!options.ok()) return Fail(2, options.status());
  if (options->describe) {
    absl::StatusOr<ModelConfig> config = LoadModelConfig(options->model_dir);
    if (!config.ok()) return Fail(2, config.status());
    std::cout << DescribeConfig(*config);
    return 0;
  }
  cpu::SetBlasThreads(options->threads);
  const GenerationRequest& req = options->request;
  const int64_t tokens = static_cast<int64_t>(req.prompt_ids.size()) + req.max_new_tokens;
  const int64_t blocks = (tokens + kDefaultBlockSize - 1) / kDefaultBlockSize;
  BlockAllocator allocator(blocks);
  absl::StatusOr<std::vector<GenerationResult>> results;
  auto t0 = std::chrono::steady_clock::now(), t1 = t0;
  if (options->backend == "cuda") {
#ifdef MLA_HAVE_CUDA
    if (options->cache_dtype_set && options->cache_dtype != CacheDType::kBF16) {
      return Fail(2, absl::InvalidArgumentError("--kv-cache-dtype fp32 (the CUDA backend's latent cache is bf16)"));
    }
    cuda::CudaModelOptions model_options;
    model_options.decode = options->decode_kernel;
    model_options.moe_grouping = options->moe_grouping;
    model_options.decode_graphs = options->decode_graphs;
    absl::StatusOr<std::unique_ptr<cuda::CudaModel>> model = cuda::CudaModel::Load(options->model_dir, model_options);
    // A device or CUDA failure is not a bad model directory.
    if (!model.ok()) return Fail(model.status().code() == absl::StatusCode::kInternal ? 1 : 2, model.status());
    if (absl::Status s = ValidateRequest((*model)->config(), req); !s.ok()) return Fail(2, s);
    t1 = std::chrono::steady_clock::now();
    absl::StatusOr<cuda::CudaLatentCache> cache = (*model)->MakeCache(blocks);
    if (!cache.ok()) return Fail(1, cache.status());
    results = Generate(
        (*model)->config(), cache->block_size(),
        [&](std::span<const SequenceStep> batch) { return (*model)->Forward(batch, *cache); }, allocator,
        std::span<const GenerationRequest>(&req, 1));
#else
    return Fail(2, absl::InvalidArgumentError(
                       "--backend cuda: this mla-generate was built without the CUDA backend (no nvcc found, or "
                       "-DMLA_CUDA=OFF)"));
#endif
  } else {
    ModelOptions model_options;
    model_options.num_threads = options->threads;
    absl::StatusOr<std::unique_ptr<Model>> model = Model::Load(options->model_dir, model_options);
    if (!model.ok()) return Fail(2, model.status());
    if (absl::Status s = ValidateRequest((*model)->config(), req); !s.ok()) return Fail(2, s);
    t1 = std::chrono::steady_clock::now();
    PagedLatentCache cache = (*model)->MakeCache(blocks, options->cache_dtype);
    results = Generate(**model, cache, allocator, std::span<const GenerationRequest>(&req, 1));
  }
  if (!results.ok()) return Fail(1, results.status());
  auto t2 = std::chrono::steady_clock::now();

  const GenerationResult& result = (*results)[0];
  std::cout << absl::StrJoin(result.generated_ids, ",") << std::endl;
  if (!options->logits_out.empty()) {
    if (absl::Status s = WriteLogits(options->logits_out, req, result); !s.ok()) return Fail(1, s);
  }
  LOG(INFO) << "loaded in " << std::chrono::duration<double>(t1 - t0).count() << " s; generated "
            << result.generated_ids.size() << " tokens in " << std::chrono::duration<double>(t2 - t1).count()
            << " s";
  return 0;
}

}  // namespace
}  // namespace mla

int main(int argc, char** argv) {
  FLAGS_logtostderr = true;
  google::InitGoogleLogging(argv[0]);
  return mla::Run(argc, argv);
}
