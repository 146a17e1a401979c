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

}  // namespace

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
