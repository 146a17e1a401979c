// The work partition of the split-KV decode attention (mla_decode.cuh),
// planned once per step on the host from the sequences' lengths, so that the
// device side is a fixed list of work items (and a step can later be captured
// as a CUDA graph: only the uploaded items change).
//
// A work item is one thread block: a group of heads_per_block heads of one
// sequence over a contiguous range of its cached positions. A (sequence, head
// group) whose range is split over several items writes one partial result
// per item (FP32 output normalised by its own softmax sum, plus the base-2
// log-sum-exp); a merge item then combines them. Plain C++: built without CUDA
// and tested on the CPU (tests/unit/mla_decode_plan_test.cc).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace mla::cuda {

// Cached positions per pipeline stage of the kernel; items start at multiples
// of it (so with 64-token pages a tile is one page).
inline constexpr int kMlaDecodeTileTokens = 64;

struct MlaDecodeWorkItem {
  int32_t seq = 0;
  int32_t head_begin = 0;  // heads [head_begin, head_begin + heads_per_block), clipped to num_heads
  int32_t kv_begin = 0;    // cached positions [kv_begin, kv_end); empty only for a kv_len 0 sequence
  int32_t kv_end = 0;
  int32_t partial = -1;    // -1: the whole sequence, written to out_latent; else its partial slot
  int32_t merge = -1;      // with a partial slot: the index of the merge item that combines it
};

struct MlaDecodeMergeItem {
  int32_t seq = 0;
  int32_t head_begin = 0;
  int32_t first_partial = 0;  // slots [first_partial, first_partial + num_partials)
  int32_t num_partials = 0;
};

struct MlaDecodePlan {
  int heads_per_block = 16;
  std::vector<MlaDecodeWorkItem> items;    // one per thread block, in launch order
  std::vector<MlaDecodeMergeItem> merges;  // one per split (sequence, head group)
  int32_t num_partials = 0;
};

// Shapes the tensor-core kernel takes: whole MMA tiles over the latent
// (kv_lora + qk_rope a multiple of 16), whole 8-column output tiles, at most
// 512 latent values per query (8 warps x 64 output columns) and at most 640
// cached values per position (two 64-row stages and 32 query rows fit the 227
// KiB of shared memory). Other shapes run the simple kernel, needing no plan.
bool MlaDecodeUsesTensorCores(int kv_lora, int qk_rope);

// Shapes the warpgroup-MMA kernel (sm_90a wgmma, mla_decode_wgmma.cu) takes,
// selected by a plan with heads_per_block 64: DeepSeek-V3's kv_lora 512 +
// rope 64 only (its shared-memory layout is laid out for that shape).
bool MlaDecodeUsesWgmma(int kv_lora, int qk_rope);

// Heads per work item: one 16-row MMA tile up to 16 heads, two above (the
// cache tile in shared memory then serves 32 heads). The kernel runs either
// for any head count (rows past the last head are zero); this is the default.
int MlaDecodeHeadsPerBlock(int num_heads);

// The head-group size for a step, what the CUDA model and the benchmark plan
// with: 64 (the wgmma kernel) where the shape takes it (MlaDecodeUsesWgmma),
// there are at least 64 heads and the step has at least two 64-head tiles of
// 64 positions per SM; else MlaDecodeHeadsPerBlock(num_heads). On an H200
// (bench/RESULTS.md, session 5) 64 heads per block took 16x4096x128 from
// 0.151 to 0.118 ms and 64x8192x128 from 0.880 to 0.620 ms, but 1x4096x128
// (one tile per SM) from 0.056 to 0.066 ms; the cut-off between is a guess.
int MlaDecodeDefaultHeadsPerBlock(std::span<const int32_t> kv_lens, int num_heads, int kv_lora, int qk_rope,
                                  int num_sms);

// The most partial slots any plan for `num_sms` uses: size the workspace
// (partial_out: slots x heads_per_block x kv_lora floats; partial_lse: slots x
// heads_per_block floats) with it once.
int64_t MlaDecodeMaxPartials(int num_sms);
// The most merge items any plan for `num_sms` has (a split has two partial
// slots or more): size MlaDecodeParams.merge_counters with it once.
int64_t MlaDecodeMaxMerges(int num_sms);

// kv_lens: per sequence, the cached positions it attends to (>= 0).
// num_sms: thread blocks that run at once (the kernel runs one per SM); the
// plan aims at one wave of about that many items.
MlaDecodePlan PlanMlaDecode(std::span<const int32_t> kv_lens, int num_heads, int num_sms);
// The same with heads_per_block chosen by the caller: 16 or 32 (the mma.sync
// kernel), or 64 (the wgmma kernel, for kv_lora 512 and rope 64 only:
// mla_decode_wgmma.cuh); any other value takes MlaDecodeHeadsPerBlock(num_heads).
MlaDecodePlan PlanMlaDecode(std::span<const int32_t> kv_lens, int num_heads, int num_sms, int heads_per_block);

}  // namespace mla::cuda
