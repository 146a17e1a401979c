#include "kernels/cuda/moe_dispatch.cuh"

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/launch.cuh"

namespace mla::cuda {
namespace {

constexpr int kThreads = 256;

// One block per output row.
__global__ void __launch_bounds__(kThreads) GatherRowsKernel(GatherRowsParams p) {
  const int64_t r = blockIdx.x;
  const __nv_bfloat16* src = p.in + static_cast<int64_t>(p.rows[r]) * p.ld_in;
  __nv_bfloat16* dst = p.out + r * p.ldo;
  for (int64_t i = threadIdx.x; i < p.dim; i += blockDim.x) dst[i] = src[i];
}

// One block per token; each thread owns a column, so the j order is fixed.
__global__ void __launch_bounds__(kThreads) MoeCombineKernel(MoeCombineParams p) {
  const int64_t t = blockIdx.x;
  const int32_t* slots = p.slot_rows + t * p.top_k;
  const float* w = p.weights + t * p.top_k;
  float* out = p.out + t * p.ldo;
  for (int64_t i = threadIdx.x; i < p.dim; i += blockDim.x) {
    float o = 0.0f;
    for (int j = 0; j < p.top_k; ++j) {
      o = __fadd_rn(o, __fmul_rn(w[j], p.expert_out[static_cast<int64_t>(slots[j]) * p.ld_expert + i]));
    }
    out[i] = p.accumulate ? __fadd_rn(o, out[i]) : o;
  }
}

// One block of kMoeGroupMaxExperts threads, thread e owning expert e: count
// each expert's slots, scan the counts into row offsets, then each expert
// walks the slots in order and takes its own (so a token's rows keep token
// order within the expert, as the host grouping). Every thread of a warp
// reads the same id at a time (one broadcast load); at decode sizes (a few
// hundred slots) the walk is a few microseconds.
__global__ void __launch_bounds__(kMoeGroupMaxExperts) MoeGroupByExpertKernel(MoeGroupParams p) {
  __shared__ int32_t counts[kMoeGroupMaxExperts];
  __shared__ int32_t scan[kMoeGroupMaxExperts];
  const int e = threadIdx.x;
  const int64_t slots = p.num_tokens * p.top_k;
  auto expert_of = [&](int64_t s) {
    const int32_t id = p.expert_ids[s];
    return id < 0 ? 0 : id >= p.num_experts ? p.num_experts - 1 : id;
  };
  counts[e] = 0;
  __syncthreads();
  for (int64_t s = e; s < slots; s += blockDim.x) {
    const int32_t id = p.expert_ids[s];
    if (id < 0 || id >= p.num_experts) atomicAdd(p.bad_ids, 1);
    atomicAdd(&counts[expert_of(s)], 1);
  }
  __syncthreads();
  // Inclusive scan (Hillis-Steele) over the experts.
  scan[e] = counts[e];
  __syncthreads();
  for (int d = 1; d < kMoeGroupMaxExperts; d *= 2) {
    const int32_t add = e >= d ? scan[e - d] : 0;
    __syncthreads();
    scan[e] += add;
    __syncthreads();
  }
  const int32_t begin = scan[e] - counts[e];
  if (e < p.num_experts) p.expert_rows[e + 1] = scan[e];
  if (e == 0) p.expert_rows[0] = 0;
  if (e >= p.num_experts || counts[e] == 0) return;
  int32_t row = begin;
  for (int64_t s = 0; s < slots; ++s) {
    if (expert_of(s) == e) {
      p.gather_rows[row] = static_cast<int32_t>(s / p.top_k);
      p.slot_rows[s] = row++;
    }
  }
}

}  // namespace

cudaError_t LaunchMoeGroupByExpert(const MoeGroupParams& p, cudaStream_t stream) {
  const bool slots = p.num_tokens > 0;
  if (p.num_tokens < 0 || p.top_k <= 0 || p.num_tokens * p.top_k > INT32_MAX || p.num_experts <= 0 ||
      p.num_experts > kMoeGroupMaxExperts || p.expert_rows == nullptr || p.bad_ids == nullptr ||
      (slots && (p.expert_ids == nullptr || p.gather_rows == nullptr || p.slot_rows == nullptr))) {
    return cudaErrorInvalidValue;
  }
  detail::LaunchKernel(MoeGroupByExpertKernel, 1, kMoeGroupMaxExperts, 0, stream, p);
  return cudaGetLastError();
}

cudaError_t LaunchGatherRows(const GatherRowsParams& p, cudaStream_t stream) {
  if (p.num_rows < 0 || p.num_rows > INT32_MAX || p.dim < 0 || p.ld_in < p.dim || p.ldo < p.dim) {
    return cudaErrorInvalidValue;
  }
  if (p.num_rows == 0 || p.dim == 0) return cudaSuccess;
  detail::LaunchKernel(GatherRowsKernel, static_cast<unsigned>(p.num_rows), kThreads, 0, stream, p);
  return cudaGetLastError();
}

cudaError_t LaunchMoeCombine(const MoeCombineParams& p, cudaStream_t stream) {
  if (p.num_tokens < 0 || p.num_tokens > INT32_MAX || p.dim < 0 || p.top_k < 0 || p.ld_expert < p.dim ||
      p.ldo < p.dim) {
    return cudaErrorInvalidValue;
  }
  if (p.num_tokens == 0 || p.dim == 0) return cudaSuccess;
  detail::LaunchKernel(MoeCombineKernel, static_cast<unsigned>(p.num_tokens), kThreads, 0, stream, p);
  return cudaGetLastError();
}

}  // namespace mla::cuda
