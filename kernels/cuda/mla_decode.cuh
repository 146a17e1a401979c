// MLA decode attention in the absorbed form over the paged latent cache
// (DESIGN.md section 2): one query per sequence, already folded into the
// latent space (q_latent = W_UK^T q_nope per head), scores
//   score_t = scale * (q_latent . c_kv_t + q_pe . k_pe_t)
// over the sequence's kv_len cached tokens (the current one included), FP32
// softmax, and out_latent = sum_t softmax_t c_kv_t (the kv_lora latent values
// only; W_UV and o_proj follow as GEMMs). No per-head key or value exists.
// kernels/cpu/attention.h MlaAbsorbedAttention is the reference. kv_len 0 gives
// a zero output.
//
// Three kernels behind LaunchMlaDecode:
// - the tensor-core split-KV kernel (mla_decode_mma.cu, mma.sync), for the
//   shapes MlaDecodeUsesTensorCores accepts (DeepSeek-V3's 512 + 64 among
//   them): it runs the work items of a host plan (mla_decode_plan.h) and
//   merges split sequences by log-sum-exp (mla_decode_merge.cuh: a second
//   kernel, or each split's last item with merge_counters);
// - its warpgroup-MMA twins (sm_90a wgmma), for DeepSeek-V3's latent
//   (MlaDecodeUsesWgmma), with the same merge: at 64 heads per work item
//   (mla_decode_wgmma.cu, a plan with heads_per_block 64), and at 16 with the
//   positions as the MMA's M (mla_decode_wgmma16.cu, heads_per_block 16 and
//   MlaDecodeMma::kWarpgroup);
// - the simple kernel (one warp per head, FP32 FMA, no split), for the other
//   shapes or when no plan is given.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/mla_decode_plan.h"
#include "kernels/cuda/mla_decode_variant.h"

namespace mla::cuda {

struct MlaDecodeParams {
  const __nv_bfloat16* q_latent = nullptr;  // [num_seqs, num_heads, kv_lora]
  const __nv_bfloat16* q_pe = nullptr;      // [num_seqs, num_heads, qk_rope], RoPE applied
  const __nv_bfloat16* cache = nullptr;     // [num_blocks, block_size, kv_lora + qk_rope]
  // Slot b of sequence s holds positions [b * block_size, (b + 1) * block_size);
  // slots past kv_len are never read (pad them with out-of-range ids).
  const int32_t* block_tables = nullptr;    // [num_seqs, max_blocks_per_seq]
  const int32_t* kv_lens = nullptr;         // [num_seqs]
  __nv_bfloat16* out_latent = nullptr;      // [num_seqs, num_heads, kv_lora]
  int64_t num_seqs = 0;
  int num_heads = 0;
  int kv_lora = 0;
  int qk_rope = 0;
  int block_size = 64;
  int max_blocks_per_seq = 0;
  float scale = 0.0f;  // softmax scale, mscale^2 included

  // The plan (PlanMlaDecode over the same kv_lens, uploaded): work items and
  // merges in device memory, and the partial-result workspace sized by
  // MlaDecodeMaxPartials. Leave work_items null to run the simple kernel.
  const MlaDecodeWorkItem* work_items = nullptr;  // [num_work_items]
  const MlaDecodeMergeItem* merge_items = nullptr;  // [num_merge_items]
  // Split sequences merged by the decode kernel itself instead of a second
  // kernel (mla_decode_merge.cuh): each item of a split counts itself done
  // here, at merge_counters[item.merge], and the last to finish merges the
  // split's partials; that last item sets the count back to 0, so the
  // counters are zero before and after every launch. Null: the merge kernel
  // runs after the decode, as before. Size: one int32 a merge item (at most
  // MlaDecodeMaxMerges), zeroed once when allocated; launches that share
  // the counters must run one after another (one stream). Not measured yet on
  // a GPU: what it saves is the merge kernel's launch and the grid boundary
  // before it, for a longer last item of each split.
  int32_t* merge_counters = nullptr;
  int num_work_items = 0;
  int num_merge_items = 0;
  int heads_per_block = 0;  // the plan's
  // A byte each and the flags in one byte, in what was padding before the
  // pointers below. (The simple kernel takes only the fields it reads, since
  // ptxas spilled in MlaDecodeKernel<18> once this struct passed 128 bytes.)
  MlaDecodeQuery query = MlaDecodeQuery::kAuto;
  MlaDecodeCopy copy = MlaDecodeCopy::kAuto;
  MlaDecodeMma mma = MlaDecodeMma::kAuto;
  // The tensor-core kernels and the merge launched with programmatic
  // dependent launch (launch.cuh's LaunchKernelPdl): each may start while the
  // kernel ahead of it in the stream finishes, and the decode kernels ask L2
  // for their items' first tiles before waiting for it (a hint; it reads the
  // plan and block tables, which must not be written by the kernels ahead).
  // Off by default: on an H200 it saved nothing measurable before that
  // prefetch (bench/RESULTS.md, session 5); with it, not yet measured.
  bool pdl : 1 = false;
  // The tensor-core kernels also ask L2 for the tile after the one they are
  // staging into shared memory (a bulk prefetch, issued by one thread): two
  // tiles of the cache in flight per SM instead of one, where shared memory
  // holds only two stages. Off by default: on an H200 it moved nothing
  // (bench/RESULTS.md, session 5).
  bool prefetch_l2 : 1 = false;
  // The 16-head wgmma kernel (mla_decode_wgmma16.cu) requests tile i + 2 as
  // soon as tile i's P V is done, instead of tile i + 1 during tile i's
  // scores: two tiles in flight while it waits for the next. Off by default
  // until measured; the other kernels ignore it.
  bool issue_ahead : 1 = false;
  float* partial_out = nullptr;  // [partials, heads_per_block, kv_lora]
  float* partial_lse = nullptr;  // [partials, heads_per_block], base 2
  // Each work item's timeline, [num_work_items + 1, kMlaDecodeTraceWords]
  // (mla_decode_trace.h: the last row the merge kernel's span), stamped by
  // the tensor-core kernels; null (the default, every timed launch): none.
  uint64_t* trace = nullptr;
};

// kv_lora + qk_rope must be at most kMlaDecodeMaxLatent.
inline constexpr int kMlaDecodeMaxLatent = 768;
cudaError_t LaunchMlaDecode(const MlaDecodeParams& p, cudaStream_t stream);

}  // namespace mla::cuda
