// The whole absorbed MLA decode attention on one GPU, per (batch, context,
// heads): q_lat = q_nope W_UK per head (cuBLAS, strided batch over heads, or
// --gemm head),
// attention over the paged BF16 latent cache (LaunchMlaDecode: the
// tensor-core split-KV kernel under the step's plan), out = o_lat W_UV^T per
// head (cuBLAS). DeepSeek-V3 dims: kv_lora 512, rope 64, nope 128, v 128;
// 64-token pages in shuffled order. The same computation and conventions as
// ../shared/bench/mla_decode_torch_baseline.py (run beside it by
// tests/gpu/run.sh): median of 20 runs timed with CUDA events after 3
// warm-ups; GB/s = latent-cache bytes (batch x context x 576 x 2) / time; copy
// GB/s = (read + written) bytes of a 2 GiB device-to-device copy / time.
//
// Per shape it also times, in the same run: the whole pipeline again with the
// GPU already busy when the start event is recorded ("queued ms": a memset of
// 256 MiB queued ahead, so the host's launch latency of the first kernels,
// which "ms" and the baseline's timing both include, is left out, as it is in
// a serving step queued behind other work), the attention kernels alone
// (decode and merge: "attn ms"), the two per-head GEMMs alone ("gemm ms"), the
// simple kernel (the earlier decode, no tensor cores, no split) in the same
// pipeline, and checks the tensor-core output against the simple kernel's.
// The plan is made on the host once per step (for all layers) and is not in
// the timed region; its host time is printed.
//
//   mla-bench-decode [--shapes 1x4096x128,16x4096x128,...] [--iters 20] [--json] [--check]
//                    [--copy-mib 2048]   (the copy measured for the bandwidth floor)
//                    [--heads-per-block 16|32|64] [--plan-waves 1.0] [--query shared|registers]
//                    [--copy cp-async|bulk] [--gemm cublas|head] [--pdl] [--prefetch-l2]
//                    [--mma sync|warpgroup] [--issue-ahead] [--graph] [--merge kernel|last-block]
//                    [--no-simple-timing] [--trace]
//
// --trace: after the timings, one more (eager) launch of the pipeline in which
// the tensor-core decode kernels stamp each work item's timeline
// (MlaDecodeParams.trace: clock64 and %globaltimer at entry, past the wait for
// the kernel ahead, the first tile in, the loop's end, the output written, the
// exit), summed up per shape (bench/mla_decode_trace_summary.h) in the JSON
// line ("trace") and a line after the table: where the attention's time goes
// (start skew, PDL wait, first-tile latency, time per tile, epilogue, merge,
// tail), which the timings alone cannot tell apart. A second line
// ("pipeline", and in the JSON) puts the kernels on one clock: the decode's,
// the merge kernel's and (with --gemm head) the two GEMMs' spans, so the gaps
// and overlaps between them show.
//
// The twelve flags before --trace try variants of the kernel and its work partition in one GPU
// call (tests/gpu/run.sh runs a few after the main table): the head-group
// size (default: MlaDecodeDefaultHeadsPerBlock, 64 (the wgmma kernel) at 128
// heads with two tiles per SM or more, else 16 up to 16 heads, 32 above), the
// plan's target in waves of the device's SMs (default one: about one item per
// SM), where the kernel keeps the query (MlaDecodeQuery; default: its kAuto),
// how it stages the cache (MlaDecodeCopy; default: its kAuto), who runs the
// two per-head GEMMs (cuBLAS, the default, or kernels/cuda/head_gemm.cuh's
// kernel, checked against cuBLAS's result: "gemm rel L2"), programmatic
// dependent launch of the decode, merge and head_gemm kernels (each may start
// while the kernel ahead of it finishes: launch.cuh's LaunchKernelPdl), the
// decode kernels' L2 prefetch of the tile after the staged one
// (MlaDecodeParams.prefetch_l2), which tensor-core instructions run plans of
// 16 heads per block (MlaDecodeMma: mma.sync, the default, or the wgmma kernel
// with the positions as M), whether that wgmma kernel requests cache tiles two
// ahead (MlaDecodeParams.issue_ahead), timing "ms" and "queued ms" as one
// launch of the pipeline captured into a CUDA graph (what a serving step
// replayed as a graph would cost; the check then reads the graph's output),
// who merges split sequences (the merge kernel after the decode, the default,
// or each split's last work item: MlaDecodeParams.merge_counters), and
// skipping the simple kernel's timing (it still runs once for the check).
//
// Prints one JSON object per shape (with --json, only those) and a table.
// --check: exit 1 when a shape's tensor-core output is off the simple
// kernel's by more than 1e-2 relative L2 (the kernels' own tests allow 4e-3
// against the CPU each). CI runs a small --check on the CUDA emulator.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "bench/mla_decode_trace_summary.h"
#include "kernels/cuda/head_gemm.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/mla_decode.cuh"
#include "kernels/cuda/mla_decode_plan.h"
#include "kernels/cuda/mla_decode_trace.h"

namespace {

using bf16 = __nv_bfloat16;
using mla::cuda::MlaDecodeCopy;
using mla::cuda::MlaDecodeMergeItem;
using mla::cuda::MlaDecodeMma;
using mla::cuda::MlaDecodeParams;
using mla::cuda::MlaDecodePlan;
using mla::cuda::MlaDecodeQuery;
using mla::cuda::MlaDecodeWorkItem;

constexpr int kLatent = 512, kRope = 64, kNope = 128, kV = 128, kBlock = 64;
constexpr const char* kDefaultShapes = "1x4096x128,16x4096x128,64x4096x16,128x4096x16,64x8192x128";

#define CHECK_CUDA(expr)                                                                              \
  do {                                                                                                \
    const cudaError_t err_ = (expr);                                                                  \
    if (err_ != cudaSuccess) {                                                                        \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(err_));   \
      std::exit(1);                                                                                   \
    }                                                                                                 \
  } while (0)
#define CHECK_CUBLAS(expr)                                                                   \
  do {                                                                                       \
    const cublasStatus_t st_ = (expr);                                                       \
    if (st_ != CUBLAS_STATUS_SUCCESS) {                                                      \
      std::fprintf(stderr, "%s:%d: %s: cuBLAS status %d\n", __FILE__, __LINE__, #expr, st_); \
      std::exit(1);                                                                          \
    }                                                                                        \
  } while (0)

// Uniform values in [-amp, amp) from a counter hash, written as BF16 on the device
// (the 600 MB caches would take seconds to make on the host).
__global__ void FillRandom(bf16* x, int64_t n, uint64_t seed, float amp) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint64_t z = seed + static_cast<uint64_t>(i) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    x[i] = __float2bfloat16_rn(amp * (static_cast<float>(z >> 40) * 0x1.0p-23f - 1.0f));
  }
}

template <typename T>
T* DeviceAlloc(size_t n) {
  void* p = nullptr;
  CHECK_CUDA(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)));
  return static_cast<T*>(p);
}

template <typename T>
T* Upload(const std::vector<T>& host) {
  T* d = DeviceAlloc<T>(host.size());
  if (!host.empty()) CHECK_CUDA(cudaMemcpy(d, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

void Fill(bf16* x, int64_t n, uint64_t seed, float amp) {
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(1024, std::max<int64_t>(1, (n + 255) / 256)));
  CHECK_CUDA(mla::cuda::detail::LaunchKernel(FillRandom, blocks, 256, 0, nullptr, x, n, seed, amp));
}

// Median milliseconds of `iters` runs of fn, each between two events, after 3 warm-ups.
// `before` (if any) is enqueued ahead of each timed run, outside the events.
double MedianMs(const std::function<void()>& fn, int iters, const std::function<void()>& before = nullptr) {
  for (int i = 0; i < 3; ++i) fn();
  CHECK_CUDA(cudaDeviceSynchronize());
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  std::vector<float> ms;
  for (int i = 0; i < iters; ++i) {
    if (before) before();
    CHECK_CUDA(cudaEventRecord(start));
    fn();
    CHECK_CUDA(cudaEventRecord(stop));
    CHECK_CUDA(cudaEventSynchronize(stop));
    float t = 0.0f;
    CHECK_CUDA(cudaEventElapsedTime(&t, start, stop));
    ms.push_back(t);
  }
  CHECK_CUDA(cudaEventDestroy(start));
  CHECK_CUDA(cudaEventDestroy(stop));
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

double CopyGbps(int iters, size_t mib) {
  const size_t n = (mib << 20) / sizeof(bf16);  // BF16 elements: 2 GiB by default
  bf16* x = DeviceAlloc<bf16>(n);
  bf16* y = DeviceAlloc<bf16>(n);
  Fill(x, static_cast<int64_t>(n), 1, 1.0f);
  const double ms = MedianMs([&] { CHECK_CUDA(cudaMemcpyAsync(y, x, n * sizeof(bf16), cudaMemcpyDeviceToDevice)); },
                             iters);
  CHECK_CUDA(cudaFree(x));
  CHECK_CUDA(cudaFree(y));
  return 2.0 * n * sizeof(bf16) / ms / 1e6;
}

struct Shape {
  int batch, context, heads;
};

// Latent-cache bytes read, and the flops of the whole absorbed attention (the
// baseline script's formula).
double CacheBytes(const Shape& s) { return static_cast<double>(s.batch) * s.context * (kLatent + kRope) * 2; }
double Flops(const Shape& s) {
  return 2.0 * s.batch * s.heads *
         (static_cast<double>(kNope) * kLatent + static_cast<double>(s.context) * (kLatent + kRope) +
          static_cast<double>(s.context) * kLatent + static_cast<double>(kLatent) * kV);
}

// A flag that takes one of two words: sets *out to the value of `word`'s
// choice, or says what was expected and returns false.
template <typename T>
bool ParseChoice(const char* flag, const std::string& word, const std::pair<const char*, T> (&choices)[2], T* out) {
  for (const auto& [name, value] : choices) {
    if (word == name) {
      *out = value;
      return true;
    }
  }
  std::fprintf(stderr, "mla-bench-decode: %s %s: expected %s or %s\n", flag, word.c_str(), choices[0].first,
               choices[1].first);
  return false;
}

// The instructions a 16-head plan runs on, as the JSON line names them.
const char* Mma16Name(MlaDecodeMma m) {
  return m == MlaDecodeMma::kWarpgroup ? "warpgroup" : "sync";
}

// How a run partitions and times the work (the flags above).
struct Options {
  int iters = 20;
  int plan_sms = 0;         // the plan's target: items that run at once
  int heads_per_block = 0;  // 0: the default for the head count
  MlaDecodeQuery query = MlaDecodeQuery::kAuto;
  MlaDecodeCopy copy = MlaDecodeCopy::kAuto;
  MlaDecodeMma mma = MlaDecodeMma::kAuto;  // for plans of 16 heads per block
  bool head_gemm = false;  // the per-head GEMMs on head_gemm.cuh's kernel instead of cuBLAS
  bool pdl = false;        // programmatic dependent launch of the decode, merge and head_gemm kernels
  bool prefetch_l2 = false;  // MlaDecodeParams.prefetch_l2: the tile after the staged one asked of L2
  bool issue_ahead = false;  // MlaDecodeParams.issue_ahead (the 16-head wgmma kernel)
  bool graph = false;        // "ms" and "queued ms" time the pipeline captured as one CUDA graph
  bool merge_in_block = false;  // MlaDecodeParams.merge_counters: each split's last item merges it
  bool time_simple = true;
  bool trace = false;     // one more launch with MlaDecodeParams.trace, summed up
  size_t busy_mib = 256;  // the memset ahead of each "queued" run
};

struct Row {
  Shape shape;
  double ms = 0, attn_ms = 0, gemm_ms = 0, simple_ms = 0, plan_us = 0, max_abs = 0, rel_l2 = 0;
  double queued_ms = 0;  // ms with the GPU busy at the start event (see RunShape)
  double gemm_rel_l2 = 0;  // --gemm head: its q_lat and out against cuBLAS's
  int items = 0, merges = 0, heads_per_block = 0;
  bool traced = false;  // --trace: the summary below
  mla::bench::MlaDecodeTraceSummary trace;
  mla::bench::MlaDecodePipelineSpans pipeline;
};

Row RunShape(const Shape& s, cublasHandle_t blas, const Options& opt) {
  const int iters = opt.iters;
  const int B = s.batch, L = s.context, H = s.heads, lat = kLatent + kRope;
  const int blocks_per_seq = (L + kBlock - 1) / kBlock;
  const int64_t num_blocks = static_cast<int64_t>(B) * blocks_per_seq;
  const float scale = 1.0f / std::sqrt(static_cast<float>(kNope + kRope));

  bf16* cache = DeviceAlloc<bf16>(num_blocks * kBlock * lat);
  bf16* w_uk = DeviceAlloc<bf16>(static_cast<size_t>(H) * kNope * kLatent);  // [H, 128, 512]
  bf16* w_uv = DeviceAlloc<bf16>(static_cast<size_t>(H) * kV * kLatent);     // [H, 128, 512]
  bf16* q_nope = DeviceAlloc<bf16>(static_cast<size_t>(B) * H * kNope);
  bf16* q_pe = DeviceAlloc<bf16>(static_cast<size_t>(B) * H * kRope);
  bf16* q_lat = DeviceAlloc<bf16>(static_cast<size_t>(B) * H * kLatent);
  bf16* o_lat = DeviceAlloc<bf16>(static_cast<size_t>(B) * H * kLatent);
  bf16* o_ref = DeviceAlloc<bf16>(static_cast<size_t>(B) * H * kLatent);
  bf16* out = DeviceAlloc<bf16>(static_cast<size_t>(B) * H * kV);
  Fill(cache, num_blocks * kBlock * lat, 2, 1.7f);  // about unit variance, as torch.randn
  Fill(w_uk, static_cast<int64_t>(H) * kNope * kLatent, 3, 1.7f / std::sqrt(static_cast<float>(kLatent)));
  Fill(w_uv, static_cast<int64_t>(H) * kV * kLatent, 4, 1.7f / std::sqrt(static_cast<float>(kLatent)));
  Fill(q_nope, static_cast<int64_t>(B) * H * kNope, 5, 1.7f);
  Fill(q_pe, static_cast<int64_t>(B) * H * kRope, 6, 1.7f);

  // Pages in shuffled order, as a long-running server's allocator leaves them.
  std::vector<int32_t> pool(static_cast<size_t>(num_blocks));
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), std::mt19937_64(7));
  int32_t* tables = Upload(pool);  // [B, blocks_per_seq]
  const std::vector<int32_t> lens(static_cast<size_t>(B), L);
  int32_t* kv_lens = Upload(lens);

  const auto t0 = std::chrono::steady_clock::now();
  // The CUDA model's choice unless --heads-per-block says otherwise.
  const int hpb = opt.heads_per_block != 0
                      ? opt.heads_per_block
                      : mla::cuda::MlaDecodeDefaultHeadsPerBlock(lens, H, kLatent, kRope, opt.plan_sms);
  const MlaDecodePlan plan = mla::cuda::PlanMlaDecode(lens, H, opt.plan_sms, hpb);
  const double plan_us =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
  MlaDecodeWorkItem* items = Upload(plan.items);
  MlaDecodeMergeItem* merges = Upload(plan.merges);
  const size_t slots = static_cast<size_t>(std::max(plan.num_partials, 1));
  float* partial = DeviceAlloc<float>(slots * plan.heads_per_block * kLatent);
  float* partial_lse = DeviceAlloc<float>(slots * plan.heads_per_block);
  // --merge last-block: a count per merge item, zero (each launch leaves it so).
  int32_t* merge_counters = Upload(std::vector<int32_t>(plan.merges.size() + 1, 0));

  MlaDecodeParams p;
  p.q_latent = q_lat;
  p.q_pe = q_pe;
  p.cache = cache;
  p.block_tables = tables;
  p.kv_lens = kv_lens;
  p.out_latent = o_lat;
  p.num_seqs = B;
  p.num_heads = H;
  p.kv_lora = kLatent;
  p.qk_rope = kRope;
  p.block_size = kBlock;
  p.max_blocks_per_seq = blocks_per_seq;
  p.scale = scale;
  p.work_items = items;
  p.num_work_items = static_cast<int>(plan.items.size());
  p.merge_items = merges;
  p.num_merge_items = static_cast<int>(plan.merges.size());
  p.heads_per_block = plan.heads_per_block;
  p.query = opt.query;
  p.copy = opt.copy;
  p.mma = opt.mma;
  p.pdl = opt.pdl;
  p.prefetch_l2 = opt.prefetch_l2;
  p.issue_ahead = opt.issue_ahead;
  p.partial_out = partial;
  p.partial_lse = partial_lse;
  p.merge_counters = opt.merge_in_block ? merge_counters : nullptr;
  MlaDecodeParams simple = p;
  simple.work_items = nullptr;  // no plan: the simple kernel
  simple.out_latent = o_ref;

  const float one = 1.0f, zero = 0.0f;
  // Where the kernels below are issued: the legacy stream, except while the
  // pipeline is captured into a graph (--graph).
  cudaStream_t stream = nullptr;
  // --trace: the two head_gemm.cuh GEMMs' spans, [absorb start, end, unabsorb start, end].
  uint64_t* gemm_spans = nullptr;
  // The same two GEMMs on head_gemm.cuh's kernel (--gemm head).
  auto head_gemm = [&](const bf16* x, int k, const bf16* w, bool k_by_n, bf16* y, int n, uint64_t* span) {
    mla::cuda::HeadGemmParams g;
    g.x = x;
    g.x_ld = static_cast<int64_t>(H) * k;
    g.x_head_stride = k;
    g.w = w;
    g.w_ld = k_by_n ? n : k;
    g.w_head_stride = static_cast<int64_t>(k) * n;
    g.w_is_k_by_n = k_by_n;
    g.out = y;
    g.out_ld = static_cast<int64_t>(H) * n;
    g.out_head_stride = n;
    g.rows = B;
    g.n = n;
    g.k = k;
    g.heads = H;
    g.pdl = opt.pdl;
    g.span = span;
    CHECK_CUDA(mla::cuda::LaunchHeadGemm(g, stream));
  };
  // q_lat[b, h, :] = q_nope[b, h, :] W_UK[h]   (column-major: 512 x B per head)
  auto absorb_cublas = [&](bf16* q_out) {
    CHECK_CUBLAS(cublasGemmStridedBatchedEx(blas, CUBLAS_OP_N, CUBLAS_OP_N, kLatent, B, kNope, &one, w_uk,
                                            CUDA_R_16BF, kLatent, static_cast<int64_t>(kNope) * kLatent, q_nope,
                                            CUDA_R_16BF, H * kNope, kNope, &zero, q_out, CUDA_R_16BF, H * kLatent,
                                            kLatent, H, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  };
  auto unabsorb_cublas = [&](const bf16* o, bf16* y) {  // out[b, h, :] = W_UV[h] o[b, h, :]
    CHECK_CUBLAS(cublasGemmStridedBatchedEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, kV, B, kLatent, &one, w_uv, CUDA_R_16BF,
                                            kLatent, static_cast<int64_t>(kV) * kLatent, o, CUDA_R_16BF,
                                            H * kLatent, kLatent, &zero, y, CUDA_R_16BF, H * kV, kV, H,
                                            CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  };
  auto absorb = [&] {
    if (opt.head_gemm) {
      head_gemm(q_nope, kNope, w_uk, true, q_lat, kLatent, gemm_spans);
    } else {
      absorb_cublas(q_lat);
    }
  };
  auto unabsorb = [&](const bf16* o) {
    if (opt.head_gemm) {
      head_gemm(o, kLatent, w_uv, false, out, kV, gemm_spans != nullptr ? gemm_spans + 2 : nullptr);
    } else {
      unabsorb_cublas(o, out);
    }
  };
  auto attend = [&](const MlaDecodeParams& q) { CHECK_CUDA(mla::cuda::LaunchMlaDecode(q, stream)); };

  Row row;
  row.shape = s;
  row.plan_us = plan_us;
  row.items = static_cast<int>(plan.items.size());
  row.merges = static_cast<int>(plan.merges.size());
  row.heads_per_block = plan.heads_per_block;
  auto pipeline = [&] {
    absorb();
    attend(p);
    unabsorb(o_lat);
  };
  // --graph: the pipeline captured once (after a run outside the capture, so
  // the kernels' shared-memory opt-ins and cuBLAS's choices are made) and
  // replayed by one launch, as a serving step whose plan buffers keep their
  // addresses would be: the host's launch work per kernel leaves the step.
  cudaStream_t capture = nullptr;
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t graph_exec = nullptr;
  std::function<void()> timed = pipeline;
  if (opt.graph) {
    pipeline();
    CHECK_CUDA(cudaDeviceSynchronize());
    CHECK_CUDA(cudaStreamCreateWithFlags(&capture, cudaStreamNonBlocking));
    stream = capture;
    CHECK_CUBLAS(cublasSetStream(blas, capture));
    CHECK_CUDA(cudaStreamBeginCapture(capture, cudaStreamCaptureModeGlobal));
    pipeline();
    CHECK_CUDA(cudaStreamEndCapture(capture, &graph));
    CHECK_CUDA(cudaGraphInstantiate(&graph_exec, graph, 0));
    stream = nullptr;
    CHECK_CUBLAS(cublasSetStream(blas, nullptr));
    timed = [&] { CHECK_CUDA(cudaGraphLaunch(graph_exec, nullptr)); };
  }
  row.ms = MedianMs(timed, iters);
  // The same with the GPU busy when the start event is recorded: a memset of
  // busy_mib MiB is queued first, so the host's latency in launching the
  // first kernels (the GPU idle meanwhile, as in "ms" and in the PyTorch
  // baseline's timing) is not in the time, as it is not behind other work in
  // a serving step; the memset also leaves L2 cold, as another layer's work
  // between two calls of a layer would.
  uint8_t* busy = DeviceAlloc<uint8_t>(opt.busy_mib << 20);
  row.queued_ms = MedianMs(timed, iters, [&] { CHECK_CUDA(cudaMemsetAsync(busy, 0, opt.busy_mib << 20)); });
  CHECK_CUDA(cudaFree(busy));
  row.attn_ms = MedianMs([&] { attend(p); }, iters);
  // The two per-head GEMMs alone: what "ms" spends outside the attention kernels.
  row.gemm_ms = MedianMs([&] { absorb(); unabsorb(o_lat); }, iters);
  if (opt.time_simple) row.simple_ms = MedianMs([&] { absorb(); attend(simple); unabsorb(o_ref); }, iters);

  // The tensor-core output against the simple kernel's (FP32 softmax weights
  // there); with --graph, the graph's (o_lat poisoned first, so a graph that
  // skipped the attention fails the check).
  if (opt.graph) {
    CHECK_CUDA(cudaMemset(o_lat, 0xFF, static_cast<size_t>(B) * H * kLatent * sizeof(bf16)));
    CHECK_CUDA(cudaGraphLaunch(graph_exec, nullptr));
    CHECK_CUDA(cudaGraphExecDestroy(graph_exec));
    CHECK_CUDA(cudaGraphDestroy(graph));
    CHECK_CUDA(cudaStreamDestroy(capture));
  } else {
    absorb();
    attend(p);
  }
  attend(simple);
  CHECK_CUDA(cudaDeviceSynchronize());
  // Relative L2 distance of two device arrays of n BF16 (NaN in `got`: infinite),
  // and their largest absolute difference into *max_abs.
  auto rel_l2 = [](const bf16* got_dev, const bf16* ref_dev, size_t n, double* max_abs) {
    std::vector<bf16> got(n), ref(n);
    CHECK_CUDA(cudaMemcpy(got.data(), got_dev, n * sizeof(bf16), cudaMemcpyDeviceToHost));
    CHECK_CUDA(cudaMemcpy(ref.data(), ref_dev, n * sizeof(bf16), cudaMemcpyDeviceToHost));
    double err = 0, norm = 0;
    for (size_t i = 0; i < n; ++i) {
      const double g = __bfloat162float(got[i]), r = __bfloat162float(ref[i]);
      *max_abs = std::max(*max_abs, std::isnan(g) ? INFINITY : std::fabs(g - r));
      err += (g - r) * (g - r);
      norm += r * r;
    }
    return norm > 0 ? std::sqrt(err / norm) : std::sqrt(err);
  };
  row.rel_l2 = rel_l2(o_lat, o_ref, static_cast<size_t>(B) * H * kLatent, &row.max_abs);
  if (opt.head_gemm) {
    // head_gemm.cuh's results against cuBLAS's, o_ref holding cuBLAS's (q_lat, then out).
    double ignored = 0;
    absorb();
    absorb_cublas(o_ref);
    CHECK_CUDA(cudaDeviceSynchronize());
    const double q_err = rel_l2(q_lat, o_ref, static_cast<size_t>(B) * H * kLatent, &ignored);
    unabsorb(o_lat);
    unabsorb_cublas(o_lat, o_ref);
    CHECK_CUDA(cudaDeviceSynchronize());
    row.gemm_rel_l2 = std::max(q_err, rel_l2(out, o_ref, static_cast<size_t>(B) * H * kV, &ignored));
  }

  // --trace: the pipeline once more, eager, its decode kernels stamping each
  // work item's timeline (the rows start zero: a kernel that does not trace
  // leaves them so, and the summary says none was traced), the merge kernel
  // and head_gemm.cuh's GEMMs their spans (from {UINT64_MAX, 0}).
  if (opt.trace) {
    constexpr int kWords = mla::cuda::kMlaDecodeTraceWords;
    const size_t words = (plan.items.size() + 1) * kWords;
    std::vector<uint64_t> rows(words, 0);
    rows[plan.items.size() * kWords + mla::cuda::kTraceStartNs] = UINT64_MAX;  // the merge kernel's span
    uint64_t* trace = Upload(rows);
    gemm_spans = Upload(std::vector<uint64_t>{UINT64_MAX, 0, UINT64_MAX, 0});
    MlaDecodeParams traced = p;
    traced.trace = trace;
    absorb();
    attend(traced);
    unabsorb(o_lat);
    CHECK_CUDA(cudaDeviceSynchronize());
    std::vector<uint64_t> spans(4);
    CHECK_CUDA(cudaMemcpy(rows.data(), trace, words * sizeof(uint64_t), cudaMemcpyDeviceToHost));
    CHECK_CUDA(cudaMemcpy(spans.data(), gemm_spans, spans.size() * sizeof(uint64_t), cudaMemcpyDeviceToHost));
    CHECK_CUDA(cudaFree(trace));
    CHECK_CUDA(cudaFree(gemm_spans));
    gemm_spans = nullptr;
    row.traced = true;
    row.trace = mla::bench::SummarizeMlaDecodeTrace(rows, plan.items, lat);
    row.pipeline.absorb = {spans[0], spans[1]};
    row.pipeline.decode = mla::bench::MlaDecodeSpan(rows, plan.items);
    row.pipeline.merge = mla::bench::MlaDecodeMergeSpan(rows, plan.items);
    row.pipeline.unabsorb = {spans[2], spans[3]};
  }

  for (void* ptr : std::initializer_list<void*>{cache, w_uk, w_uv, q_nope, q_pe, q_lat, o_lat, o_ref, out, tables,
                                                kv_lens, items, merges, partial, partial_lse, merge_counters}) {
    CHECK_CUDA(cudaFree(ptr));
  }
  return row;
}

std::vector<Shape> ParseShapes(const std::string& text) {
  std::vector<Shape> shapes;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t end = std::min(text.find(',', start), text.size());
    const std::string item = text.substr(start, end - start);
    Shape s{};
    if (std::sscanf(item.c_str(), "%dx%dx%d", &s.batch, &s.context, &s.heads) != 3 || s.batch <= 0 ||
        s.context <= 0 || s.heads <= 0) {
      std::fprintf(stderr, "mla-bench-decode: bad shape '%s' (expected BATCHxCONTEXTxHEADS, e.g. 64x4096x16)\n",
                   item.c_str());
      std::exit(2);
    }
    shapes.push_back(s);
    start = end + 1;
  }
  return shapes;
}

}  // namespace

int main(int argc, char** argv) {
  std::string shapes_text = kDefaultShapes;
  Options opt;
  double plan_waves = 1.0;
  size_t copy_mib = 2048;
  bool json_only = false, check = false;
  const char* usage =
      "usage: mla-bench-decode [--shapes BxLxH,...] [--iters N] [--json] [--check] [--copy-mib N]\n"
      "                        [--heads-per-block 16|32|64] [--plan-waves X] [--query shared|registers]\n"
      "                        [--copy cp-async|bulk] [--gemm cublas|head] [--pdl] [--prefetch-l2]\n"
      "                        [--mma sync|warpgroup] [--issue-ahead] [--graph] [--merge kernel|last-block]\n"
      "                        [--no-simple-timing] [--trace]\n";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--shapes" && i + 1 < argc) {
      shapes_text = argv[++i];
    } else if (a == "--iters" && i + 1 < argc) {
      opt.iters = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--json") {
      json_only = true;
    } else if (a == "--check") {
      check = true;
    } else if (a == "--copy-mib" && i + 1 < argc) {
      copy_mib = static_cast<size_t>(std::max(1, std::atoi(argv[++i])));
    } else if (a == "--heads-per-block" && i + 1 < argc) {
      opt.heads_per_block = std::atoi(argv[++i]);
      if (opt.heads_per_block != 16 && opt.heads_per_block != 32 && opt.heads_per_block != 64) {
        std::fprintf(stderr, "mla-bench-decode: --heads-per-block %s: expected 16, 32 or 64 (the wgmma kernel)\n",
                     argv[i]);
        return 2;
      }
    } else if (a == "--plan-waves" && i + 1 < argc) {
      plan_waves = std::atof(argv[++i]);
      if (!(plan_waves > 0.0 && plan_waves <= 64.0)) {
        std::fprintf(stderr, "mla-bench-decode: --plan-waves %s: expected a number in (0, 64]\n", argv[i]);
        return 2;
      }
    } else if (a == "--query" && i + 1 < argc) {
      const std::pair<const char*, MlaDecodeQuery> choices[] = {{"shared", MlaDecodeQuery::kShared},
                                                                 {"registers", MlaDecodeQuery::kRegisters}};
      if (!ParseChoice("--query", argv[++i], choices, &opt.query)) return 2;
    } else if (a == "--copy" && i + 1 < argc) {
      const std::pair<const char*, MlaDecodeCopy> choices[] = {{"cp-async", MlaDecodeCopy::kCpAsync},
                                                                {"bulk", MlaDecodeCopy::kBulk}};
      if (!ParseChoice("--copy", argv[++i], choices, &opt.copy)) return 2;
    } else if (a == "--gemm" && i + 1 < argc) {
      const std::pair<const char*, bool> choices[] = {{"cublas", false}, {"head", true}};
      if (!ParseChoice("--gemm", argv[++i], choices, &opt.head_gemm)) return 2;
    } else if (a == "--mma" && i + 1 < argc) {
      const std::pair<const char*, MlaDecodeMma> choices[] = {{"sync", MlaDecodeMma::kSync},
                                                               {"warpgroup", MlaDecodeMma::kWarpgroup}};
      if (!ParseChoice("--mma", argv[++i], choices, &opt.mma)) return 2;
    } else if (a == "--merge" && i + 1 < argc) {
      const std::pair<const char*, bool> choices[] = {{"kernel", false}, {"last-block", true}};
      if (!ParseChoice("--merge", argv[++i], choices, &opt.merge_in_block)) return 2;
    } else if (a == "--pdl") {
      opt.pdl = true;
    } else if (a == "--prefetch-l2") {
      opt.prefetch_l2 = true;
    } else if (a == "--issue-ahead") {
      opt.issue_ahead = true;
    } else if (a == "--graph") {
      opt.graph = true;
    } else if (a == "--no-simple-timing") {
      opt.time_simple = false;
    } else if (a == "--trace") {
      opt.trace = true;
    } else {
      std::fprintf(stderr, "%s", usage);
      return 2;
    }
  }
  const std::vector<Shape> shapes = ParseShapes(shapes_text);
  int device = 0, sms = 0;
  CHECK_CUDA(cudaGetDevice(&device));
  CHECK_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, device));
  cublasHandle_t blas;
  CHECK_CUBLAS(cublasCreate(&blas));
  // --graph: cuBLAS's workspace given up front, so nothing is allocated
  // inside a capture (32 MiB: cuBLAS's default on Hopper).
  void* blas_workspace = nullptr;
  if (opt.graph) {
    constexpr size_t kWorkspaceBytes = size_t{32} << 20;
    blas_workspace = DeviceAlloc<uint8_t>(kWorkspaceBytes);
    CHECK_CUBLAS(cublasSetWorkspace(blas, blas_workspace, kWorkspaceBytes));
  }
  opt.plan_sms = std::max(1, static_cast<int>(std::lround(plan_waves * sms)));
  const double copy_gbps = CopyGbps(opt.iters, copy_mib);
  opt.busy_mib = std::min<size_t>(256, copy_mib);

  std::vector<Row> rows;
  for (const Shape& s : shapes) {
    const Row r = RunShape(s, blas, opt);
    const double bytes = CacheBytes(s), flops = Flops(s);
    std::printf(
        "{\"batch\": %d, \"context\": %d, \"heads\": %d, \"ms\": %.4f, \"cache_gbps\": %.1f, \"tflops\": %.2f, "
        "\"copy_gbps\": %.1f, \"queued_ms\": %.4f, \"attn_ms\": %.4f, \"attn_gbps\": %.1f, \"gemm_ms\": %.4f, "
        "\"simple_ms\": %.4f, "
        "\"items\": %d, \"merges\": %d, \"plan_us\": %.1f, \"max_abs_vs_simple\": %.3g, \"rel_l2_vs_simple\": %.3g, "
        "\"heads_per_block\": %d, \"plan_sms\": %d, \"query\": \"%s\", \"copy\": \"%s\", \"gemm\": \"%s\", "
        "\"gemm_rel_l2_vs_cublas\": %.3g, \"pdl\": %s, \"prefetch_l2\": %s, \"mma16\": \"%s\", \"issue_ahead\": %s, "
        "\"graph\": %s, \"merge\": \"%s\", \"trace\": %s, \"pipeline\": %s}\n",
        s.batch, s.context, s.heads, r.ms, bytes / r.ms / 1e6, flops / r.ms / 1e9, copy_gbps, r.queued_ms, r.attn_ms,
        bytes / r.attn_ms / 1e6, r.gemm_ms, r.simple_ms, r.items, r.merges, r.plan_us, r.max_abs, r.rel_l2,
        r.heads_per_block, opt.plan_sms, opt.query == MlaDecodeQuery::kShared ? "shared" : "registers",
        opt.copy == MlaDecodeCopy::kBulk ? "bulk" : "cp-async", opt.head_gemm ? "head" : "cublas",
        r.gemm_rel_l2, opt.pdl ? "true" : "false", opt.prefetch_l2 ? "true" : "false", Mma16Name(opt.mma),
        opt.issue_ahead ? "true" : "false", opt.graph ? "true" : "false",
        opt.merge_in_block ? "last-block" : "kernel",
        r.traced ? mla::bench::MlaDecodeTraceJson(r.trace).c_str() : "null",
        r.traced ? mla::bench::MlaDecodePipelineJson(r.pipeline).c_str() : "null");
    std::fflush(stdout);
    rows.push_back(r);
  }
  cublasDestroy(blas);
  if (blas_workspace != nullptr) CHECK_CUDA(cudaFree(blas_workspace));
  int status = 0;
  for (const Row& r : rows) {
    if (check && !(r.rel_l2 <= 1e-2)) {
      std::fprintf(stderr, "mla-bench-decode: %dx%dx%d: tensor-core output %.3g relative L2 off the simple kernel's\n",
                   r.shape.batch, r.shape.context, r.shape.heads, r.rel_l2);
      status = 1;
    }
    // BF16 outputs of FP32 sums in different orders: 2^-8 relative at most each.
    if (check && !(r.gemm_rel_l2 <= 1e-2)) {
      std::fprintf(stderr, "mla-bench-decode: %dx%dx%d: head_gemm.cuh's GEMMs %.3g relative L2 off cuBLAS's\n",
                   r.shape.batch, r.shape.context, r.shape.heads, r.gemm_rel_l2);
      status = 1;
    }
  }
  if (json_only) return status;
  std::printf(
      "\n%s, %d SMs; copy %.0f GB/s (read + written); plan for %d SMs; query in %s; cache staged by %s; GEMMs on "
      "%s%s%s%s%s%s%s\n",
      prop.name, sms, copy_gbps, opt.plan_sms,
      opt.query == MlaDecodeQuery::kShared ? "shared memory" : "registers",
      opt.copy != MlaDecodeCopy::kBulk ? "cp.async"
                                       : "bulk copies (TMA tensor copies in the wgmma kernels: 64 heads per block, "
                                         "or 16 with --mma warpgroup)",
      opt.head_gemm ? "head_gemm.cuh" : "cuBLAS", opt.pdl ? "; programmatic dependent launch" : "",
      opt.prefetch_l2 ? "; L2 prefetch of the next tile" : "",
      opt.mma == MlaDecodeMma::kWarpgroup ? "; 16-head plans on wgmma" : "",
      opt.issue_ahead ? ", tiles requested two ahead" : "",
      opt.graph ? "; ms and queued ms: one CUDA graph launch" : "",
      opt.merge_in_block ? "; splits merged by their last block" : "");
  std::printf("%-14s %9s %8s %7s %6s %9s %7s %9s %8s %8s %4s %10s %7s %9s %9s\n", "BxLxH", "ms", "GB/s", "%copy",
              "TF/s", "queued ms", "q %copy", "attn ms", "gemm ms", "simple x", "hpb", "items/merg", "plan us",
              "rel L2", "gemm L2");
  for (const Row& r : rows) {
    const double bytes = CacheBytes(r.shape), flops = Flops(r.shape);
    const std::string name =
        std::to_string(r.shape.batch) + "x" + std::to_string(r.shape.context) + "x" + std::to_string(r.shape.heads);
    const std::string im = std::to_string(r.items) + "/" + std::to_string(r.merges);
    char simple_x[16] = "-";
    if (r.simple_ms > 0) std::snprintf(simple_x, sizeof(simple_x), "%.2fx", r.simple_ms / r.ms);
    std::printf("%-14s %9.4f %8.0f %6.1f%% %6.1f %9.4f %6.1f%% %9.4f %8.4f %8s %4d %10s %7.1f %9.2g %9.2g\n",
                name.c_str(), r.ms, bytes / r.ms / 1e6, 100.0 * bytes / r.ms / 1e6 / copy_gbps, flops / r.ms / 1e9,
                r.queued_ms, 100.0 * bytes / r.queued_ms / 1e6 / copy_gbps, r.attn_ms, r.gemm_ms, simple_x,
                r.heads_per_block, im.c_str(), r.plan_us, r.rel_l2, r.gemm_rel_l2);
  }
  for (const Row& r : rows) {
    if (!r.traced) continue;
    std::printf("trace %dx%dx%d: %s\n", r.shape.batch, r.shape.context, r.shape.heads,
                mla::bench::MlaDecodeTraceText(r.trace).c_str());
    std::printf("pipeline %dx%dx%d: %s\n", r.shape.batch, r.shape.context, r.shape.heads,
                mla::bench::MlaDecodePipelineText(r.pipeline).c_str());
  }
  return status;
}
