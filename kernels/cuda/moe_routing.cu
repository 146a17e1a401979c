#include "kernels/cuda/moe_routing.cuh"

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/launch.cuh"

namespace mla::cuda {
namespace {

constexpr int kNone = 0x7fffffff;

// (value, index) ordering of the CPU's TopK: larger value first, ties to the lower index.
__device__ __forceinline__ bool Before(float v, int i, float bv, int bi) {
  return bi == kNone || v > bv || (v == bv && i < bi);
}

// Warp-wide best of each lane's candidate; every lane gets the result.
__device__ __forceinline__ void WarpBest(float& v, int& i) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(detail::kFullMask, v, o);
    const int oi = __shfl_xor_sync(detail::kFullMask, i, o);
    if (oi != kNone && Before(ov, oi, v, i)) {
      v = ov;
      i = oi;
    }
  }
}

// Warp 0 picks the k best of vals[0..n) not yet taken, in order, into picked[0..k)
// and marks them taken. k rounds of a warp argmax: k and n are small.
__device__ void WarpTopK(const float* vals, int n, int k, int* taken, int* picked) {
  const int lane = threadIdx.x & 31;
  for (int r = 0; r < k; ++r) {
    float bv = -INFINITY;
    int bi = kNone;
    for (int i = lane; i < n; i += 32) {
      if (!taken[i] && Before(vals[i], i, bv, bi)) {
        bv = vals[i];
        bi = i;
      }
    }
    WarpBest(bv, bi);
    if (lane == 0) {
      picked[r] = bi;
      taken[bi] = 1;
    }
    __syncwarp();
  }
}

// One block per token, one thread per expert. Shared memory: scores, choice,
// group scores, taken flags (experts then groups), picked ids.
__global__ void MoeRoutingKernel(MoeRoutingParams p) {
  MLA_DYNAMIC_SHARED(smem_raw);
  float* smem = reinterpret_cast<float*>(smem_raw);
  const int e = p.num_experts, groups = p.num_groups, per_group = e / groups;
  float* scores = smem;                                     // [e]
  float* choice = scores + e;                               // [e]
  float* group_score = choice + e;                          // [groups]
  int* taken = reinterpret_cast<int*>(group_score + groups);  // [e]
  int* group_taken = taken + e;                             // [groups]
  int* picked = group_taken + groups;                       // [max(top_k, topk_groups)]
  __shared__ float fscratch[32];
  __shared__ double dscratch[32];

  const int64_t t = blockIdx.x;
  const int x = threadIdx.x;
  const float* l = p.logits + t * e;
  const float lx = x < e ? l[x] : -INFINITY;
  if (p.scoring == RouterScoring::kSigmoid) {
    if (x < e) scores[x] = __fdiv_rn(1.0f, __fadd_rn(1.0f, expf(-lx)));
  } else {
    // As the CPU: max in float, exp(double(l - max)), sum in double, quotient rounded to float.
    const float mx = detail::BlockMax(lx, fscratch);
    const double ex = x < e ? exp(static_cast<double>(__fsub_rn(lx, mx))) : 0.0;
    const double sum = detail::BlockSum(ex, dscratch);
    if (x < e) scores[x] = static_cast<float>(ex / sum);
  }
  if (x < e) {
    choice[x] = p.method == RouterTopk::kNoauxTc ? __fadd_rn(scores[x], p.bias[x]) : scores[x];
    taken[x] = 0;
  }
  if (x < groups) group_taken[x] = 0;
  __syncthreads();

  if (p.method != RouterTopk::kGreedy) {
    if (x < groups) {  // a group's score: its best choice (V2) or the sum of its two best (V3)
      float top1 = -INFINITY, top2 = -INFINITY;
      for (int i = x * per_group; i < (x + 1) * per_group; ++i) {
        const float v = choice[i];
        if (v > top1) {
          top2 = top1;
          top1 = v;
        } else if (v > top2) {
          top2 = v;
        }
      }
      group_score[x] = p.method == RouterTopk::kNoauxTc ? __fadd_rn(top1, top2) : top1;
    }
    __syncthreads();
    if (x < 32) WarpTopK(group_score, groups, p.topk_groups, group_taken, picked);
    __syncthreads();
    if (x < e && !group_taken[x / per_group]) choice[x] = -INFINITY;  // excluded group
    __syncthreads();
  }
  if (x >= 32) return;
  WarpTopK(choice, e, p.top_k, taken, picked);
  // Ascending expert id (a fixed combine order), then the weights from the
  // scores (not the choice) summed in that order, as the CPU does.
  int* sorted = taken;  // the flags are no longer needed: reuse as [top_k]
  __syncwarp();
  for (int j = x; j < p.top_k; j += 32) {
    int rank = 0;
    for (int i = 0; i < p.top_k; ++i) rank += picked[i] < picked[j];
    sorted[rank] = picked[j];
  }
  __syncwarp();
  float sum = 0.0f;
  if (p.norm_topk_prob) {
    for (int j = 0; j < p.top_k; ++j) sum = __fadd_rn(sum, scores[sorted[j]]);
  }
  for (int j = x; j < p.top_k; j += 32) {
    float w = scores[sorted[j]];
    if (p.norm_topk_prob) w = __fdiv_rn(w, __fadd_rn(sum, 1e-20f));
    p.expert_ids[t * p.top_k + j] = sorted[j];
    p.weights[t * p.top_k + j] = __fmul_rn(w, p.routed_scaling_factor);
  }
}

}  // namespace

cudaError_t LaunchMoeRouting(const MoeRoutingParams& p, cudaStream_t stream) {
  const bool grouped = p.method != RouterTopk::kGreedy;
  if (p.num_tokens < 0 || p.num_tokens > INT32_MAX || p.num_experts <= 0 || p.num_experts > kMoeMaxExperts ||
      p.top_k <= 0 || p.top_k > p.num_experts || p.num_groups <= 0 || p.num_experts % p.num_groups != 0 ||
      (grouped && (p.topk_groups <= 0 || p.topk_groups > p.num_groups)) ||
      (p.method == RouterTopk::kNoauxTc && (p.bias == nullptr || p.num_experts / p.num_groups < 2))) {
    return cudaErrorInvalidValue;
  }
  if (p.num_tokens == 0) return cudaSuccess;
  const int threads = static_cast<int>(detail::CeilDiv(p.num_experts, 32) * 32);
  const int picks = p.top_k > p.topk_groups ? p.top_k : p.topk_groups;
  const size_t smem = sizeof(float) * (2 * p.num_experts + p.num_groups) +
                      sizeof(int) * (p.num_experts + p.num_groups + picks);
  detail::LaunchKernel(MoeRoutingKernel, static_cast<unsigned>(p.num_tokens), threads, smem, stream, p);
  return cudaGetLastError();
}

}  // namespace mla::cuda
