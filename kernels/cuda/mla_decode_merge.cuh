// Merging a split (sequence, head group)'s partial results (the plan's merge
// items, mla_decode_plan.h): per head row,
//   out = sum_i 2^lse_i o_i / sum_i 2^lse_i
// over the split's partial slots in slot order (each o_i normalised by its own
// softmax sum, lse_i its base-2 log-sum-exp), in FP32, written as BF16 to
// out_latent. One routine, a warp a head row, for both places that run it, so
// they give the same bits: the merge kernel after the decode, and the decode
// kernels' last item of a split (MlaDecodeParams.merge_counters).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/mla_decode.cuh"

namespace mla::cuda::detail {

// Head row `row` of merge item m by one warp: lane l keeps dims l + 32 k.
// Every lane reads the log-sum-exps and computes the weights itself (the same
// loads in every lane are one transaction; no shuffles, so no lane waits on
// another). The sums run in slot order, two slots' loads at a time (an L2
// round trip a pair, not a slot). The partials are read through L2 (__ldcg):
// other blocks wrote them, and a line this SM's L1 kept from another merge
// could be stale (the log-sum-exps of two slots share lines).
__device__ __forceinline__ void MergeHeadRowByWarp(const MlaDecodeParams& p, const MlaDecodeMergeItem& m, int row,
                                                   int lane) {
  const int hpb = p.heads_per_block, n = m.num_partials;
  const float* lse = p.partial_lse + static_cast<int64_t>(m.first_partial) * hpb + row;
  const float* part = p.partial_out + (static_cast<int64_t>(m.first_partial) * hpb + row) * p.kv_lora;
  const int64_t slot_stride = static_cast<int64_t>(hpb) * p.kv_lora;  // floats from a slot's row to the next's
  float mx = -INFINITY;
#pragma unroll 4
  for (int i = 0; i < n; ++i) mx = fmaxf(mx, __ldcg(lse + static_cast<int64_t>(i) * hpb));
  constexpr int kDims = 512 / 32;  // kv_lora <= 512 on the tensor-core path
  float acc[kDims] = {};
  float wsum = 0.0f;
  // Slot i's weight, and its values into v[k] (0 past kv_lora).
  auto load = [&](int i, float (&v)[kDims]) {
    const float* src = part + i * slot_stride;
#pragma unroll
    for (int k = 0; k < kDims; ++k) v[k] = lane + 32 * k < p.kv_lora ? __ldcg(src + lane + 32 * k) : 0.0f;
    return exp2f(__ldcg(lse + static_cast<int64_t>(i) * hpb) - mx);
  };
  int i = 0;
  for (; i + 1 < n; i += 2) {
    float v0[kDims], v1[kDims];
    const float w0 = load(i, v0), w1 = load(i + 1, v1);
    wsum += w0;
    wsum += w1;
#pragma unroll
    for (int k = 0; k < kDims; ++k) acc[k] = fmaf(w1, v1[k], fmaf(w0, v0[k], acc[k]));
  }
  if (i < n) {
    float v0[kDims];
    const float w0 = load(i, v0);
    wsum += w0;
#pragma unroll
    for (int k = 0; k < kDims; ++k) acc[k] = fmaf(w0, v0[k], acc[k]);
  }
  const float inv = 1.0f / wsum;  // >= 1: the largest weight is 2^0
  __nv_bfloat16* o = p.out_latent + (static_cast<int64_t>(m.seq) * p.num_heads + m.head_begin + row) * p.kv_lora;
#pragma unroll
  for (int k = 0; k < kDims; ++k) {
    const int d = lane + 32 * k;
    if (d < p.kv_lora) o[d] = ToBf16(acc[k] * inv);
  }
}

// The end of a decode work item, called by all kThreads threads of its block
// after their last store of its result. Where p.merge_counters is set and the
// item is one of a split's: count it done, and if it is the split's last,
// merge the split (its head rows over the block's warps) and set its count
// back to 0. Scratch: 4 bytes of shared memory at `flag` that the block no
// longer uses. Ordering: each thread's partial stores are made visible
// device-wide (fence) before its block counts; the block that counts last
// fences again before it reads the others' partials (through L2).
template <int kThreads>
__device__ __forceinline__ void MergeIfLastOfSplit(const MlaDecodeParams& p, const MlaDecodeWorkItem& item,
                                                   int* flag) {
  if (p.merge_counters == nullptr || item.partial < 0) return;  // uniform over the block
  __threadfence();
  __syncthreads();  // every thread's partial stores are fenced before the count
  if (threadIdx.x == 0) {
    const int n = p.merge_items[item.merge].num_partials;
    const bool last = atomicAdd(p.merge_counters + item.merge, 1) == n - 1;
    // The split's other items have all counted: nobody else touches the count this launch.
    if (last) p.merge_counters[item.merge] = 0;
    *flag = last;
  }
  __syncthreads();
  if (*flag == 0) return;
  __threadfence();  // the other items' partials, fenced before their counts, are read after ours
  const MlaDecodeMergeItem m = p.merge_items[item.merge];
  const int rows = min(p.heads_per_block, p.num_heads - m.head_begin);
  for (int row = threadIdx.x / 32; row < rows; row += kThreads / 32) MergeHeadRowByWarp(p, m, row, threadIdx.x % 32);
}

}  // namespace mla::cuda::detail
