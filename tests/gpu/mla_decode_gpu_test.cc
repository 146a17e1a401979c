// Absorbed-form MLA decode over the paged BF16 latent cache, the simple and
// the tensor-core split-KV kernels (mma.sync; wgmma at 64 heads per block, and at 16 with the positions as M),
// against cpu::MlaAbsorbedAttention (one query per sequence, reading the same
// BF16 cache through a PagedLatentView). Spare blocks and the rows past each
// sequence's length are NaN and the table padding is out of range, so any
// stray read shows up (as NaN in the output, or as a fault).
// Tolerance: rtol 1e-2 for the BF16 output (at most 2^-8 relative), atol 2e-5:
// FP32 scores, softmax and sums on both sides, in a different order. The
// tensor-core kernel's own bounds are below (kMmaAtol, kMmaSeqRelL2).
#include <cuda.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <ostream>
#include <span>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cuda/mla_decode.cuh"
#include "kernels/cuda/mla_decode_cache_map.h"
#include "kernels/cuda/mla_decode_plan.h"
#include "tests/gpu/gpu_test_util.h"
#include "tests/gpu/paged_batch.h"

namespace mla {
namespace {

using gpu_test::DeviceBuffer;
using gpu_test::SeqShape;

constexpr double kRtol = 1e-2, kAtol = 2e-5;
// The tensor-core kernel's softmax weights p_i / l are BF16 before P V: each
// off by at most 2^-8 relative, so with values in [-1, 1] an output moves by
// at most 2^-8 * sum_i p_i / l = 2^-8 absolute (more than kAtol allows where
// an output is near 0). That bound alone would hide one dropped position of a
// long context (about 1/len), so each sequence's whole output must also lie
// within 4e-3 relative L2 of the reference. A NumPy emulation of the kernel's
// rounding (64-position tiles, base-2 online softmax, BF16 weights and output)
// gave at most 2.4e-3 over contexts 1 to 4096 at 16 x 512 + 64 and 8 x 96 + 16,
// and 1.1e-3 at most beyond rtol elementwise; one dropped position of 4096
// adds about 4.5e-3 (independent of the rounding: about 5e-3 in all).
constexpr double kMmaAtol = 1.0 / 256, kMmaSeqRelL2 = 4e-3;

::testing::AssertionResult SeqRelL2Within(std::span<const float> got, std::span<const float> want, int64_t seqs,
                                          double bound) {
  const size_t per_seq = want.size() / static_cast<size_t>(seqs);
  for (int64_t s = 0; s < seqs; ++s) {
    double err = 0.0, ref = 0.0;
    for (size_t i = s * per_seq; i < (s + 1) * per_seq; ++i) {
      err += (static_cast<double>(got[i]) - want[i]) * (static_cast<double>(got[i]) - want[i]);
      ref += static_cast<double>(want[i]) * want[i];
    }
    if (ref == 0.0 ? err != 0.0 : !(std::sqrt(err / ref) <= bound)) {
      return ::testing::AssertionFailure() << "sequence " << s << ": relative L2 error " << std::sqrt(err / ref)
                                           << " (bound " << bound << ")";
    }
  }
  return ::testing::AssertionSuccess();
}

struct DecodeCase {
  int heads, kv_lora, rope;
  float scale;                   // 0: DeepSeek-V3's 0.1352
  std::vector<int64_t> kv_lens;  // per sequence, the current token included
  int64_t block_size = 64;       // cache positions per block
};

void PrintTo(const DecodeCase& c, std::ostream* os) {
  *os << c.heads << " heads, kv_lora " << c.kv_lora << " rope " << c.rope << ", kv_lens:";
  for (int64_t n : c.kv_lens) *os << " " << n;
  *os << ", block size " << c.block_size;
}

class MlaDecodeGpuTest : public ::testing::TestWithParam<DecodeCase> {};

// The emulator's extra fiber orders and copy landings (for races) run in its
// plain build; its sanitizer build (for memory errors: the same addresses
// under any order) skips them, to stay within CI's time.
#if defined(MLA_CUDA_EMULATED) && !defined(__SANITIZE_ADDRESS__)
#define MLA_DECODE_EXTRA_ORDERS 1
#endif

TEST_P(MlaDecodeGpuTest, MatchesCpuAbsorbed) {
  MLA_SKIP_WITHOUT_GPU();
  const DecodeCase& c = GetParam();
  int64_t head_positions = 0;  // emulated cost: about 20 us each over the four runs below
  for (int64_t n : c.kv_lens) head_positions += n * c.heads;
  MLA_SKIP_LARGE_FOR_EMULATOR(head_positions, 500000);
  std::ostringstream lens;
  for (int64_t n : c.kv_lens) lens << " " << n;
  SCOPED_TRACE(::testing::Message() << "heads " << c.heads << " kv_lora " << c.kv_lora << " rope " << c.rope
                                    << " kv_lens" << lens.str() << " block size " << c.block_size << " seed "
                                    << gpu_test::BaseSeed());
  auto rng = gpu_test::CaseRng(static_cast<uint64_t>(c.heads * 13 + c.kv_lora + c.kv_lens.size() * 977));
  const int latent = c.kv_lora + c.rope;
  const float scale = c.scale != 0.0f ? c.scale : 0.135230f;
  const int64_t seqs = static_cast<int64_t>(c.kv_lens.size());
  std::vector<SeqShape> shapes;
  for (int64_t n : c.kv_lens) shapes.push_back({n, 0});
  gpu_test::PagedBatch b = gpu_test::MakePagedBatch(shapes, c.block_size, 3, rng);

  // NaN everywhere, then the valid rows of every sequence.
  std::vector<uint16_t> cache(static_cast<size_t>(b.num_blocks * b.block_size * latent), gpu_test::kBf16NaNBits);
  for (int64_t s = 0; s < seqs; ++s) {
    for (int64_t pos = 0; pos < c.kv_lens[s]; ++pos) {
      const int64_t block = b.tables[s * b.max_blocks + pos / b.block_size];
      std::vector<uint16_t> row = gpu_test::RandomBf16(rng, latent, -1.0f, 1.0f);
      std::copy(row.begin(), row.end(), &cache[(block * b.block_size + pos % b.block_size) * latent]);
    }
  }
  std::vector<uint16_t> q_lat = gpu_test::RandomBf16(rng, seqs * c.heads * c.kv_lora, -1.0f, 1.0f);
  std::vector<uint16_t> q_pe = gpu_test::RandomBf16(rng, seqs * c.heads * c.rope, -1.0f, 1.0f);
  std::vector<int32_t> kv_lens(c.kv_lens.begin(), c.kv_lens.end());

  const std::vector<float> q_latf = gpu_test::ToFloats(q_lat), q_pef = gpu_test::ToFloats(q_pe);
  std::vector<float> want(static_cast<size_t>(seqs * c.heads * c.kv_lora), 0.0f);  // kv_len 0: zeros
  for (int64_t s = 0; s < seqs; ++s) {
    if (c.kv_lens[s] == 0) continue;
    cpu::MlaAbsorbedParams p;
    p.q_latent = q_latf.data() + s * c.heads * c.kv_lora;
    p.q_pe = q_pef.data() + s * c.heads * c.rope;  // empty where rope is 0
    p.cache.base = cache.data();
    p.cache.dtype = cpu::CacheDType::kBF16;
    p.cache.num_blocks = b.num_blocks;
    p.cache.block_size = b.block_size;
    p.cache.latent_dim = latent;
    p.block_table = &b.tables[s * b.max_blocks];
    p.out_latent = &want[s * c.heads * c.kv_lora];
    p.num_queries = 1;
    p.kv_len = c.kv_lens[s];
    p.num_heads = c.heads;
    p.kv_lora = c.kv_lora;
    p.qk_rope = c.rope;
    p.scale = scale;
    gpu_test::ParallelFor(c.heads, [&](int64_t hb, int64_t he) {
      cpu::MlaAbsorbedAttention(p, static_cast<int>(hb), static_cast<int>(he));
    });
  }

  DeviceBuffer<uint16_t> d_cache(cache), d_q_lat(q_lat), d_q_pe(q_pe), d_out(want.size());
  DeviceBuffer<int32_t> d_tables(b.tables), d_lens(kv_lens);
  int device_sms = 0;
  MLA_ASSERT_CUDA(cudaDeviceGetAttribute(&device_sms, cudaDevAttrMultiProcessorCount, 0));
  // The simple kernel (no plan), then the tensor-core kernel (where the shape
  // allows; otherwise the launcher falls back to the simple one) under plans
  // for one SM (no split), 3 SMs, the device's SMs (the production plan) and
  // 2^20 SMs (every sequence split into single tiles: the merge at its widest),
  // and the device's SMs with the other head-group size (16 heads per block
  // where the default is 32 and the reverse, as the benchmark may choose);
  // then the query-in-shared-memory variant (the default, kAuto, keeps it in
  // registers) under the device's plan with either head-group size and under
  // the widest plan, and under the one-SM plan (whole sequences: many tiles
  // an item, both stages reused); then the bulk-copy staging
  // (MlaDecodeCopy::kBulk) the same three ways and under the one- and
  // three-SM plans, the query in registers or shared memory.
  // Where the shape allows (DeepSeek-V3's latent), the warpgroup-MMA kernels
  // (64 heads per block; 16 heads per block with MlaDecodeMma::kWarpgroup,
  // requesting tiles one or two ahead; both staged by cp.async or TMA) under
  // the one-, three-, device- and 2^20-SM plans.
  // On the CPU emulator (tests/emu; not its sanitizer build) the widest plan
  // also runs with the fibers in reverse and in two seeded random orders: a
  // missing barrier tends to show under one order or another, and a few runs
  // with each warp running ahead to the next block barrier (kWarpFirst: a
  // read of another warp's stores with only warp collectives between shows
  // there), and a few with the copies landing at issue instead of at their
  // wait (a copy into a stage another warp has yet to read, with no barrier
  // between, shows there; emu::SetCopiesLandAtIssue). (order: 0 forward, 1
  // reverse, 4 warp first, 5 forward with copies landing at issue, else
  // random.)
  const bool mma = cuda::MlaDecodeUsesTensorCores(c.kv_lora, c.rope);
  const int other_hpb = cuda::MlaDecodeHeadsPerBlock(static_cast<int>(c.heads)) == 16 ? 32 : 16;
  using Query = cuda::MlaDecodeQuery;
  using Copy = cuda::MlaDecodeCopy;
  using Mma = cuda::MlaDecodeMma;
  struct Run {
    int sms, order, heads_per_block;  // sms 0: the simple kernel; heads_per_block 0: the default
    Query query = Query::kAuto;
    Copy copy = Copy::kAuto;
    bool prefetch_l2 = false;
    Mma mma = Mma::kAuto;
    bool issue_ahead = false;  // the 16-head wgmma kernel's MlaDecodeParams.issue_ahead
    bool pdl = false;          // programmatic dependent launch: the L2 prefetch before the wait
    bool merge_in_block = false;  // also with merge counters: the split's last item merges
  };
  std::vector<Run> runs = {{0, 0, 0},
                           {1, 0, 0},
                           {3, 0, 0},
                           {device_sms, 0, 0},
                           {1 << 20, 0, 0},
                           {device_sms, 0, other_hpb},
                           {device_sms, 0, 0, Query::kShared},
                           {device_sms, 0, other_hpb, Query::kShared},
                           {1 << 20, 0, 0, Query::kShared},
                           {1, 0, 0, Query::kShared},
                           {device_sms, 0, 0, Query::kAuto, Copy::kBulk},
                           {device_sms, 0, other_hpb, Query::kShared, Copy::kBulk},
                           {1 << 20, 0, 0, Query::kAuto, Copy::kBulk},
                           {1, 0, 0, Query::kAuto, Copy::kBulk},
                           {3, 0, 0, Query::kShared, Copy::kBulk}};
  // The L2 prefetch of the next tile (MlaDecodeParams.prefetch_l2) under the
  // device's and the one-SM plan (many tiles an item), with cp.async and bulk
  // copies, and with the wgmma kernel below.
  runs.insert(runs.end(), {{device_sms, 0, 0, Query::kAuto, Copy::kAuto, true},
                           {1, 0, 0, Query::kAuto, Copy::kAuto, true},
                           {1, 0, 0, Query::kShared, Copy::kBulk, true}});
  // Programmatic dependent launch: before its wait a block asks L2 for its
  // item's first tiles (PrefetchItemStartL2), under few and many items.
  runs.insert(runs.end(), {{1, 0, 0, Query::kShared, Copy::kBulk, false, Mma::kAuto, false, true},
                           {1 << 20, 0, 0, Query::kAuto, Copy::kAuto, false, Mma::kAuto, false, true}});
  // Merged by the split's last item (MlaDecodeParams.merge_counters), under
  // the widest plan, and the device's with the other head-group size, bulk
  // copies and PDL; each of these runs is launched again with the counters (below).
  const Mma am = Mma::kAuto;
  runs.insert(runs.end(), {{1 << 20, 0, 0, Query::kAuto, Copy::kAuto, false, am, false, false, true},
                           {device_sms, 0, other_hpb, Query::kShared, Copy::kBulk, false, am, false, true, true}});
  constexpr int kWgmmaHeads = 64;
  bool wgmma = cuda::MlaDecodeUsesWgmma(c.kv_lora, c.rope);
#if defined(MLA_CUDA_EMULATED)
  // The emulator computes each wgmma thread by thread (about 0.1 s a 64-head
  // tile under ASan): the long cases run it on the GPU only.
  int64_t wgmma_tiles = 0;
  for (int64_t n : c.kv_lens) wgmma_tiles += (n + 63) / 64 * ((c.heads + kWgmmaHeads - 1) / kWgmmaHeads);
  wgmma = wgmma && wgmma_tiles <= 40;
  // The wgmma kernels merged in the last block (the mma.sync kernel's merge
  // routine, run on every case): on the emulator only for the short cases.
  const bool wgmma_merge = wgmma_tiles <= 8;
#else
  const bool wgmma_merge = true;
#endif
  if (wgmma) {
    runs.insert(runs.end(), {{1, 0, kWgmmaHeads}, {3, 0, kWgmmaHeads}, {device_sms, 0, kWgmmaHeads},
                             {1 << 20, 0, kWgmmaHeads}, {1, 0, kWgmmaHeads, Query::kAuto, Copy::kAuto, true},
                             {device_sms, 0, kWgmmaHeads, Query::kAuto, Copy::kAuto, false, Mma::kAuto, false, true}});
    if (wgmma_merge) runs.push_back({1 << 20, 0, kWgmmaHeads, Query::kAuto, Copy::kAuto, false, am, false, true, true});
    // Staged by TMA tensor copies (Copy::kBulk: 128-byte swizzled stages,
    // whole pages; other block sizes fall back to cp.async), with the L2
    // prefetch and PDL, and merged by the split's last item.
    const Copy tma = Copy::kBulk;
    runs.insert(runs.end(), {{1, 0, kWgmmaHeads, Query::kAuto, tma}, {1 << 20, 0, kWgmmaHeads, Query::kAuto, tma},
                             {device_sms, 0, kWgmmaHeads, Query::kAuto, tma, true, am, false, true}});
    if (wgmma_merge) runs.push_back({3, 0, kWgmmaHeads, Query::kAuto, tma, false, am, false, false, true});
  }
  // The 16-head wgmma kernel. On the emulator only the cases of up to 26
  // 16-head tiles run it (up to 8 in the sanitizer build: about 0.1 s a tile
  // there), and the extra fiber orders only those of up to 16; its partial
  // head group (20 heads) runs there in mla_bench_decode_wgmma16_emu_test.
  bool wgmma16 = cuda::MlaDecodeUsesWgmma(c.kv_lora, c.rope);
  [[maybe_unused]] int64_t wgmma16_tiles = 0;
  for (int64_t n : c.kv_lens) wgmma16_tiles += (n + 63) / 64 * ((c.heads + 15) / 16);
#if defined(MLA_CUDA_EMULATED)
  const bool wgmma16_merge = wgmma16_tiles <= 8;  // as for the 64-head kernel's above
#else
  const bool wgmma16_merge = true;
#endif
#if defined(MLA_CUDA_EMULATED) && defined(__SANITIZE_ADDRESS__)
  wgmma16 = wgmma16 && wgmma16_tiles <= 8;
#elif defined(MLA_CUDA_EMULATED)
  wgmma16 = wgmma16 && wgmma16_tiles <= 26;
#endif
  if (wgmma16) {
    const Query a = Query::kAuto;
    const Copy ac = Copy::kAuto;
    const Mma wg = Mma::kWarpgroup;
    runs.insert(runs.end(), {{1, 0, 16, a, ac, false, wg}, {3, 0, 16, a, ac, false, wg},
                             {device_sms, 0, 16, a, ac, false, wg}, {1 << 20, 0, 16, a, ac, false, wg},
                             {1, 0, 16, a, ac, true, wg}, {1, 0, 16, a, ac, false, wg, true},
                             {3, 0, 16, a, ac, false, wg, true}, {device_sms, 0, 16, a, ac, true, wg, true}});
    // Under programmatic dependent launch (the L2 prefetch before the wait).
    runs.push_back({device_sms, 0, 16, a, ac, false, wg, true, true});
    // Staged by TMA tensor copies (Copy::kBulk: 128-byte swizzled stages,
    // whole pages; other block sizes fall back to cp.async).
    const Copy tma = Copy::kBulk;
    runs.insert(runs.end(), {{1, 0, 16, a, tma, false, wg}, {3, 0, 16, a, tma, false, wg, true},
                             {device_sms, 0, 16, a, tma, true, wg}, {1 << 20, 0, 16, a, tma, false, wg, true, true}});
    // Merged by the split's last item, staged by cp.async, or by TMA two ahead.
    if (wgmma16_merge) {
      runs.insert(runs.end(), {{1 << 20, 0, 16, a, ac, false, wg, false, false, true},
                               {3, 0, 16, a, tma, false, wg, true, false, true}});
    }
#if defined(MLA_DECODE_EXTRA_ORDERS)
    if (wgmma16_tiles <= 16) {
      runs.insert(runs.end(), {{1 << 20, 1, 16, a, ac, false, wg}, {1 << 20, 2, 16, a, ac, false, wg},
                               {1, 3, 16, a, ac, false, wg}, {1, 4, 16, a, ac, false, wg},
                               {1 << 20, 4, 16, a, ac, false, wg}, {1, 4, 16, a, ac, false, wg, true},
                               {1, 2, 16, a, ac, false, wg, true}, {1, 5, 16, a, ac, false, wg},
                               {1, 5, 16, a, ac, false, wg, true}, {1, 4, 16, a, Copy::kBulk, false, wg},
                               {1, 5, 16, a, Copy::kBulk, false, wg}, {1, 5, 16, a, Copy::kBulk, false, wg, true}});
    }
#endif
  }
#if defined(MLA_DECODE_EXTRA_ORDERS)
  runs.insert(runs.end(), {{1 << 20, 1, 0}, {1 << 20, 2, 0}, {1 << 20, 3, 0}, {1 << 20, 1, 0, Query::kShared},
                           {1 << 20, 2, 0, Query::kShared}, {1 << 20, 1, 0, Query::kAuto, Copy::kBulk},
                           {1 << 20, 2, 0, Query::kShared, Copy::kBulk}, {1, 1, 0, Query::kAuto, Copy::kBulk}});
  runs.insert(runs.end(), {{1 << 20, 4, 0}, {1, 4, 0, Query::kShared}, {1, 4, 0, Query::kAuto, Copy::kBulk}});
  runs.insert(runs.end(), {{1, 5, 0}, {1, 5, 0, Query::kShared}, {1, 5, 0, Query::kAuto, Copy::kBulk}});
  runs.push_back({1 << 20, 2, 0, Query::kAuto, Copy::kAuto, false, Mma::kAuto, false, false, true});
  if (wgmma) {
    runs.insert(runs.end(), {{1 << 20, 1, kWgmmaHeads}, {1 << 20, 2, kWgmmaHeads}, {1, 3, kWgmmaHeads},
                             {1, 4, kWgmmaHeads}, {1 << 20, 4, kWgmmaHeads}, {1, 5, kWgmmaHeads},
                             {1, 4, kWgmmaHeads, Query::kAuto, Copy::kBulk},
                             {1, 5, kWgmmaHeads, Query::kAuto, Copy::kBulk}});
  }
#endif
  for (const auto& [sms, order, hpb, query, copy, prefetch_l2, mma_kind, issue_ahead, pdl, merge_in_block] : runs) {
#if defined(MLA_CUDA_EMULATED)
    emu::SetSchedule(order == 0   ? emu::Schedule::kForward
                     : order == 1 ? emu::Schedule::kReverse
                     : order == 4 ? emu::Schedule::kWarpFirst
                     : order == 5 ? emu::Schedule::kForward
                                  : emu::Schedule::kRandom,
                     static_cast<uint64_t>(order));
    emu::SetCopiesLandAtIssue(order == 5);
#endif
    SCOPED_TRACE(sms == 0 ? std::string("simple kernel")
                          : "plan for " + std::to_string(sms) + " SMs, heads per block " +
                                (hpb == 0 ? std::string("default") : std::to_string(hpb)) +
                                (query == Query::kShared ? ", query in shared memory" : "") +
                                (copy == Copy::kBulk ? ", bulk copies" : "") +
                                (prefetch_l2 ? ", L2 prefetch" : "") +
                                (mma_kind == Mma::kWarpgroup ? ", wgmma" : "") +
                                (issue_ahead ? ", issue ahead" : "") + (pdl ? ", PDL" : "") +
                                (merge_in_block ? ", merged in the last block" : "") + ", fiber order " +
                                std::to_string(order));
    cuda::MlaDecodeParams p;
    p.q_latent = d_q_lat.bf16();
    p.q_pe = d_q_pe.bf16();
    p.cache = d_cache.bf16();
    p.block_tables = d_tables.get();
    p.kv_lens = d_lens.get();
    p.out_latent = d_out.bf16();
    p.num_seqs = seqs;
    p.num_heads = c.heads;
    p.kv_lora = c.kv_lora;
    p.qk_rope = c.rope;
    p.block_size = static_cast<int>(b.block_size);
    p.max_blocks_per_seq = static_cast<int>(b.max_blocks);
    p.scale = scale;
    const cuda::MlaDecodePlan plan =
        hpb == 0 ? cuda::PlanMlaDecode(kv_lens, c.heads, std::max(sms, 1))
                 : cuda::PlanMlaDecode(kv_lens, c.heads, std::max(sms, 1), hpb);
    ASSERT_LE(plan.num_partials, cuda::MlaDecodeMaxPartials(std::max(sms, 1)));
    // Unused partial slots are NaN (poisoned): the merge must read only its own.
    DeviceBuffer<cuda::MlaDecodeWorkItem> d_items(plan.items);
    DeviceBuffer<cuda::MlaDecodeMergeItem> d_merges(plan.merges);
    const size_t slots = static_cast<size_t>(plan.num_partials) + 1;
    DeviceBuffer<float> d_part(slots * plan.heads_per_block * c.kv_lora), d_lse(slots * plan.heads_per_block);
    MLA_ASSERT_CUDA(d_part.Poison());
    MLA_ASSERT_CUDA(d_lse.Poison());
    if (sms > 0) {
      p.work_items = d_items.get();
      p.num_work_items = static_cast<int>(plan.items.size());
      p.merge_items = d_merges.get();
      p.num_merge_items = static_cast<int>(plan.merges.size());
      p.heads_per_block = plan.heads_per_block;
      p.query = query;
      p.copy = copy;
      p.prefetch_l2 = prefetch_l2;
      p.mma = mma_kind;
      p.issue_ahead = issue_ahead;
      p.pdl = pdl;
      p.partial_out = d_part.get();
      p.partial_lse = d_lse.get();
    }
    if (sms > 1 && !mma) continue;  // the simple kernel again: once is enough
    MLA_ASSERT_CUDA(d_out.Poison());
    MLA_ASSERT_CUDA(cuda::LaunchMlaDecode(p, nullptr));
    MLA_ASSERT_CUDA(cudaDeviceSynchronize());
    std::vector<uint16_t> got;
    MLA_ASSERT_CUDA(d_out.Download(got));
    const std::vector<float> gotf = gpu_test::ToFloats(got);
    if (sms > 0 && mma) {
      EXPECT_TRUE(gpu_test::AllClose(gotf, want, kRtol, kMmaAtol));
      EXPECT_TRUE(SeqRelL2Within(gotf, want, seqs, kMmaSeqRelL2));
    } else {
      EXPECT_TRUE(gpu_test::AllClose(gotf, want, kRtol, kAtol));
    }
    if (merge_in_block && sms > 0 && mma) {
      // The same plan merged by each split's last item: the same bits as the
      // merge kernel's (one routine, mla_decode_merge.cuh), and the counters
      // back at zero, ready for the next launch (the bench's graph test
      // replays one launch over the same counters).
      SCOPED_TRACE("merged in the last block");
      const std::vector<int32_t> zeros(plan.merges.size() + 1, 0);
      DeviceBuffer<int32_t> d_counters(zeros);
      p.merge_counters = d_counters.get();
      MLA_ASSERT_CUDA(d_out.Poison());
      MLA_ASSERT_CUDA(cuda::LaunchMlaDecode(p, nullptr));
      std::vector<uint16_t> merged;
      MLA_ASSERT_CUDA(d_out.Download(merged));
      EXPECT_EQ(merged, got);
      std::vector<int32_t> counts;
      MLA_ASSERT_CUDA(d_counters.Download(counts));
      EXPECT_EQ(counts, zeros);
    }
  }
#if defined(MLA_CUDA_EMULATED)
  emu::SetSchedule(emu::Schedule::kForward);
  emu::SetCopiesLandAtIssue(false);
#endif
}

// The TMA staging's tensor maps (mla_decode_cache_map.h) are kept per cache
// address: a model's 61 layers, each with its own cache, encode theirs once
// over any number of decode steps; past kMlaDecodeCacheMapsKept caches the
// oldest is replaced and encoded again when it comes back, to the same map.
// On a thread of its own: the kept maps are per host thread, and this one's
// start empty (an earlier test's freed cache may have had these addresses).
void KeepsOneMapPerCache() {
  using cuda::detail::kMlaDecodeCacheMapsKept;
  constexpr int kLayers = 61;
  constexpr size_t kPage = 64 * 576;  // BF16: one 64-token page a layer
  DeviceBuffer<uint16_t> pages(kPage * (kMlaDecodeCacheMapsKept + 1));
  cuda::MlaDecodeParams p;
  p.kv_lora = 512;
  p.qk_rope = 64;
  auto map_of = [&](size_t layer, CUtensorMap* map) {
    p.cache = pages.bf16() + layer * kPage;
    return cuda::detail::MlaDecodeCacheMap(p, map);
  };
  const int64_t before = cuda::detail::MlaDecodeCacheMapsEncoded();
  std::vector<CUtensorMap> first(kLayers);
  for (int step = 0; step < 3; ++step) {
    for (int layer = 0; layer < kLayers; ++layer) {
      CUtensorMap map{};
      ASSERT_EQ(map_of(layer, &map), cudaSuccess);
      if (step == 0) {
        first[layer] = map;
      } else {
        EXPECT_EQ(std::memcmp(&map, &first[layer], sizeof(map)), 0) << "layer " << layer << ", step " << step;
      }
    }
  }
  EXPECT_EQ(cuda::detail::MlaDecodeCacheMapsEncoded() - before, kLayers);
  EXPECT_NE(std::memcmp(&first[0], &first[1], sizeof(CUtensorMap)), 0) << "two caches, one map";
  // More caches than are kept: layer 0's map is replaced, then encoded again.
  for (int layer = kLayers; layer <= kMlaDecodeCacheMapsKept; ++layer) {
    CUtensorMap map{};
    ASSERT_EQ(map_of(layer, &map), cudaSuccess);
  }
  const int64_t encoded = cuda::detail::MlaDecodeCacheMapsEncoded();
  CUtensorMap again{};
  ASSERT_EQ(map_of(0, &again), cudaSuccess);
  EXPECT_EQ(cuda::detail::MlaDecodeCacheMapsEncoded(), encoded + 1);
  EXPECT_EQ(std::memcmp(&again, &first[0], sizeof(again)), 0);
  // A latent other than 512 + 64: no map.
  p.qk_rope = 32;
  EXPECT_EQ(cuda::detail::MlaDecodeCacheMap(p, &again), cudaErrorInvalidValue);
}

TEST(MlaDecodeCacheMapTest, KeepsOneMapPerCache) {
  MLA_SKIP_WITHOUT_GPU();
  std::thread(KeepsOneMapPerCache).join();
}

INSTANTIATE_TEST_SUITE_P(
    Batches, MlaDecodeGpuTest,
    ::testing::Values(
        // DeepSeek-V3: kv_lora 512 + rope 64, 128 heads (TP=1) and 16 heads (TP=8).
        DecodeCase{128, 512, 64, 0.0f, {1}}, DecodeCase{128, 512, 64, 0.0f, {63, 64, 65, 0, 1, 129}},
        DecodeCase{128, 512, 64, 0.0f, {3001, 17}}, DecodeCase{16, 512, 64, 0.0f, {4096, 1, 65, 64}},
        DecodeCase{16, 512, 64, 1.0f, {200, 2}},
        // Small and odd dims: heads not a multiple of the block's 8, latent % 8 != 0 (scalar loads).
        DecodeCase{16, 64, 16, 0.3f, {0, 1, 63, 64, 65, 200}}, DecodeCase{3, 36, 6, 0.5f, {1, 64, 65, 130}},
        DecodeCase{5, 32, 0, 0.2f, {7, 70}}, DecodeCase{128, 512, 64, 0.0f, {0}},
        // Tensor-core head groups: 32 heads (one group of two MMA tiles), 20 (a
        // part-filled group), 64 (two groups sharing each cache range).
        DecodeCase{32, 512, 64, 0.0f, {1, 64, 700}}, DecodeCase{20, 512, 64, 0.0f, {65, 2048}},
        DecodeCase{64, 512, 64, 0.0f, {130, 0, 1000}},
        // The golden fixtures' attention: 8 heads, kv_lora 160 + rope 16 (latent % 32 == 16:
        // the last score k-step alone) and V2-Lite's 96 + 16.
        DecodeCase{8, 160, 16, 0.25f, {1, 5, 64, 129}}, DecodeCase{8, 96, 16, 0.25f, {17, 300}},
        // Short enough for the emulator's extra fiber orders: DeepSeek-V3's latent at 16
        // heads with a partial tile; 20 heads with kv_lora 64 (warps 1..7 one output tile,
        // 5 k-steps split 3 + 2); two head groups of 32 over latent 160; the fixtures'
        // 8 x (160 + 16) with an empty sequence.
        DecodeCase{16, 512, 64, 0.0f, {130, 3}}, DecodeCase{20, 64, 16, 0.3f, {200, 1, 64}},
        DecodeCase{64, 128, 32, 0.2f, {70, 128}}, DecodeCase{8, 160, 16, 0.25f, {1, 5, 64, 65, 129, 0}},
        // Block sizes other than 64: a tile spans several blocks (16, 32: the
        // tensor-core kernel stages it row by row), or lies in the first or
        // second half of one (128: the contiguous copy at an offset).
        DecodeCase{16, 512, 64, 0.0f, {130, 3, 64}, 16}, DecodeCase{8, 160, 16, 0.25f, {1, 65, 129}, 32},
        DecodeCase{32, 512, 64, 0.0f, {200, 65, 128}, 128}),
    // Names for --gtest_filter (tests/gpu/run.sh runs a few under racecheck by name).
    [](const ::testing::TestParamInfo<DecodeCase>& info) {
      const DecodeCase& c = info.param;
      std::ostringstream name;
      name << "h" << c.heads << "_kv" << c.kv_lora << "_rope" << c.rope << "_len"
           << (c.kv_lens.empty() ? 0 : c.kv_lens.front()) << "_seqs" << c.kv_lens.size();
      if (c.block_size != 64) name << "_bs" << c.block_size;
      return name.str();
    });

}  // namespace
}  // namespace mla
