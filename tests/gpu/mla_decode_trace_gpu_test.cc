// The decode kernels' timelines (MlaDecodeParams.trace, mla_decode_trace.h,
// for mla-bench-decode --trace): every tensor-core kernel (mma.sync at 16 and
// 32 heads per block, cp.async or bulk copies; wgmma at 16 heads, cp.async
// two ahead or TMA; wgmma at 64, cp.async or TMA), traced, writes the bits it
// writes untraced, and stamps each work item's row: every stamp there, in
// order (one SM's clock); merged in the last block too; and the merge
// kernel's span in the row after them, after the decode's. The simple kernel
// leaves the rows alone. bench/mla_decode_trace_summary.h then reads
// every item as traced. (Timings are not checked: this is not a timed test.)
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "bench/mla_decode_trace_summary.h"
#include "kernels/cuda/mla_decode.cuh"
#include "kernels/cuda/mla_decode_plan.h"
#include "kernels/cuda/mla_decode_trace.h"
#include "tests/gpu/gpu_test_util.h"
#include "tests/gpu/paged_batch.h"

namespace mla {
namespace {

using gpu_test::DeviceBuffer;
using Copy = cuda::MlaDecodeCopy;
using Mma = cuda::MlaDecodeMma;

constexpr int kHeads = 16, kKvLora = 512, kRope = 64, kLatent = kKvLora + kRope;

struct Kernel {
  const char* name;
  int heads_per_block;
  Mma mma = Mma::kAuto;
  Copy copy = Copy::kAuto;
  bool issue_ahead = false;
};

TEST(MlaDecodeTraceGpuTest, EveryKernelStampsEveryItemInOrder) {
  MLA_SKIP_WITHOUT_GPU();
  auto rng = gpu_test::CaseRng(6061);
  // Four tiles (split under an 8-SM plan), one position, two tiles.
  const std::vector<int32_t> kv_lens = {200, 1, 65};
  const int64_t seqs = static_cast<int64_t>(kv_lens.size());
  std::vector<gpu_test::SeqShape> shapes;
  for (int32_t n : kv_lens) shapes.push_back({n, 0});
  const gpu_test::PagedBatch b = gpu_test::MakePagedBatch(shapes, 64, 2, rng);
  DeviceBuffer<uint16_t> d_cache(gpu_test::RandomBf16(rng, b.num_blocks * 64 * kLatent, -1.0f, 1.0f));
  DeviceBuffer<uint16_t> d_q_lat(gpu_test::RandomBf16(rng, seqs * kHeads * kKvLora, -1.0f, 1.0f));
  DeviceBuffer<uint16_t> d_q_pe(gpu_test::RandomBf16(rng, seqs * kHeads * kRope, -1.0f, 1.0f));
  DeviceBuffer<uint16_t> d_out(seqs * kHeads * kKvLora);
  DeviceBuffer<int32_t> d_tables(b.tables), d_lens(kv_lens);

  cuda::MlaDecodeParams base;
  base.q_latent = d_q_lat.bf16();
  base.q_pe = d_q_pe.bf16();
  base.cache = d_cache.bf16();
  base.block_tables = d_tables.get();
  base.kv_lens = d_lens.get();
  base.out_latent = d_out.bf16();
  base.num_seqs = seqs;
  base.num_heads = kHeads;
  base.kv_lora = kKvLora;
  base.qk_rope = kRope;
  base.block_size = 64;
  base.max_blocks_per_seq = static_cast<int>(b.max_blocks);
  base.scale = 0.135230f;

  // The simple kernel (no plan) ignores the rows.
  {
    const std::vector<uint64_t> marks(4 * cuda::kMlaDecodeTraceWords, 0xABABABABABABABABull);
    DeviceBuffer<uint64_t> d_trace(marks);
    cuda::MlaDecodeParams p = base;
    p.trace = d_trace.get();
    MLA_ASSERT_CUDA(cuda::LaunchMlaDecode(p, nullptr));
    std::vector<uint64_t> rows;
    MLA_ASSERT_CUDA(d_trace.Download(rows));
    EXPECT_EQ(rows, marks) << "the simple kernel wrote trace rows";
  }

  const Kernel kernels[] = {{"mma.sync, 16 heads a block", 16},
                            {"mma.sync, 32 heads a block", 32},
                            {"mma.sync, bulk copies", 16, Mma::kAuto, Copy::kBulk},
                            {"wgmma16, two ahead", 16, Mma::kWarpgroup, Copy::kAuto, true},
                            {"wgmma16, TMA", 16, Mma::kWarpgroup, Copy::kBulk},
                            {"wgmma64", 64},
                            {"wgmma64, TMA", 64, Mma::kAuto, Copy::kBulk}};
  // Plans for 8 SMs (the long sequence split: merges, by the kernel or the
  // last block) and for 1 (whole sequences: items of several tiles, whose
  // waits at the loop's top are summed).
  struct Plan {
    int sms;
    bool merge_in_block;
  };
  for (const Kernel& k : kernels) {
    for (const auto& [sms, merge_in_block] : {Plan{8, false}, Plan{8, true}, Plan{1, false}}) {
      SCOPED_TRACE(std::string(k.name) + ", plan for " + std::to_string(sms) + " SMs" +
                   (merge_in_block ? ", merged in the last block" : ""));
      const cuda::MlaDecodePlan plan = cuda::PlanMlaDecode(kv_lens, kHeads, sms, k.heads_per_block);
      if (sms == 8) {
        ASSERT_GT(plan.merges.size(), 0u) << "the 8-SM plan splits the long sequence";
      }
      DeviceBuffer<cuda::MlaDecodeWorkItem> d_items(plan.items);
      DeviceBuffer<cuda::MlaDecodeMergeItem> d_merges(plan.merges);
      const size_t slots = static_cast<size_t>(plan.num_partials) + 1;
      DeviceBuffer<float> d_part(slots * plan.heads_per_block * kKvLora), d_lse(slots * plan.heads_per_block);
      DeviceBuffer<int32_t> d_counters(std::vector<int32_t>(plan.merges.size() + 1, 0));
      cuda::MlaDecodeParams p = base;
      p.work_items = d_items.get();
      p.num_work_items = static_cast<int>(plan.items.size());
      p.merge_items = d_merges.get();
      p.num_merge_items = static_cast<int>(plan.merges.size());
      p.heads_per_block = plan.heads_per_block;
      p.mma = k.mma;
      p.copy = k.copy;
      p.issue_ahead = k.issue_ahead;
      p.partial_out = d_part.get();
      p.partial_lse = d_lse.get();
      p.merge_counters = merge_in_block ? d_counters.get() : nullptr;

      MLA_ASSERT_CUDA(d_out.Poison());
      MLA_ASSERT_CUDA(cuda::LaunchMlaDecode(p, nullptr));
      std::vector<uint16_t> untraced;
      MLA_ASSERT_CUDA(d_out.Download(untraced));

      // The items' rows, zero; then the merge kernel's span row, {UINT64_MAX, 0}.
      const size_t words = (plan.items.size() + 1) * cuda::kMlaDecodeTraceWords;
      std::vector<uint64_t> fresh(words, 0);
      fresh[plan.items.size() * cuda::kMlaDecodeTraceWords + cuda::kTraceStartNs] = UINT64_MAX;
      DeviceBuffer<uint64_t> d_trace(fresh);
      p.trace = d_trace.get();
      MLA_ASSERT_CUDA(d_out.Poison());
      MLA_ASSERT_CUDA(cuda::LaunchMlaDecode(p, nullptr));
      std::vector<uint16_t> traced;
      MLA_ASSERT_CUDA(d_out.Download(traced));
      EXPECT_EQ(traced, untraced) << "tracing changed the output";
      std::vector<uint64_t> rows;
      MLA_ASSERT_CUDA(d_trace.Download(rows));
      for (size_t i = 0; i < plan.items.size(); ++i) {
        using namespace cuda;  // the MlaDecodeTraceWord names
        const uint64_t* r = &rows[i * kMlaDecodeTraceWords];
        SCOPED_TRACE("item " + std::to_string(i));
        EXPECT_NE(r[kTraceStartNs], 0u);
        EXPECT_LE(r[kTraceStartNs], r[kTraceEndNs]);
        EXPECT_NE(r[kTraceStartClk], 0u);
        EXPECT_LE(r[kTraceStartClk], r[kTraceReadyClk]);
        EXPECT_LE(r[kTraceReadyClk], r[kTraceFirstTileClk]);
        EXPECT_LE(r[kTraceFirstTileClk], r[kTraceLoopEndClk]);
        EXPECT_LE(r[kTraceLoopEndClk], r[kTraceWrittenClk]);
        EXPECT_LE(r[kTraceWrittenClk], r[kTraceEndClk]);
        // The waits for the tiles after the first lie inside the loop (none with one tile).
        EXPECT_LE(r[kTraceTileWaitClk], r[kTraceLoopEndClk] - r[kTraceFirstTileClk]);
        if (plan.items[i].kv_end - plan.items[i].kv_begin <= 64) {
          EXPECT_EQ(r[kTraceTileWaitClk], 0u);
        }
        // %smid need not be below the SM count (the PTX ISA: ids may have
        // gaps, %nsmid may exceed it), only a small number.
        EXPECT_LT(r[kTraceSm], 4096u);
      }
      const bench::MlaDecodeTraceSummary s = bench::SummarizeMlaDecodeTrace(rows, plan.items, kLatent);
      EXPECT_EQ(s.traced, static_cast<int>(plan.items.size())) << bench::MlaDecodeTraceText(s);
      EXPECT_EQ(s.tile.count, static_cast<int>(plan.items.size()));
      if (sms == 1) {
        EXPECT_GT(s.tile_wait.count, 0) << "no item of two tiles or more";
      }
      // The merge kernel's span: after every item's (it waits for the decode
      // grid), where it ran; untouched where the last blocks merged or
      // nothing was split.
      {
        using namespace cuda;
        const uint64_t* span = &rows[plan.items.size() * kMlaDecodeTraceWords];
        if (merge_in_block || plan.merges.empty()) {
          EXPECT_EQ(span[kTraceStartNs], UINT64_MAX);
          EXPECT_EQ(span[kTraceEndNs], 0u);
        } else {
          uint64_t decode_end = 0;
          for (size_t i = 0; i < plan.items.size(); ++i) {
            decode_end = std::max(decode_end, rows[i * kMlaDecodeTraceWords + kTraceEndNs]);
          }
          EXPECT_LE(decode_end, span[kTraceStartNs]);
          EXPECT_LE(span[kTraceStartNs], span[kTraceEndNs]);
        }
      }
      if (merge_in_block) {
        std::vector<int32_t> counts;
        MLA_ASSERT_CUDA(d_counters.Download(counts));
        EXPECT_EQ(counts, std::vector<int32_t>(plan.merges.size() + 1, 0));
      }
    }
  }
}

}  // namespace
}  // namespace mla
