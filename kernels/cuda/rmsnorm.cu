#include "kernels/cuda/rmsnorm.cuh"

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/launch.cuh"

namespace mla::cuda {
namespace {

using detail::ToBf16;
using detail::ToFloat;

constexpr int kThreads = 256;

// One block per row. Pass 2 touches element i on the thread that read it in
// pass 1, so out may alias x or residual.
template <bool kResidual>
__global__ void __launch_bounds__(kThreads) RmsNormKernel(RmsNormParams p) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const __nv_bfloat16* x = p.x + row * p.ldx;
  __nv_bfloat16* res = kResidual ? p.residual + row * p.ld_residual : nullptr;
  __nv_bfloat16* out = p.out + row * p.ldo;

  float sum_sq = 0.0f;
  for (int64_t i = threadIdx.x; i < p.dim; i += blockDim.x) {
    float v = ToFloat(x[i]);
    if constexpr (kResidual) {
      const __nv_bfloat16 s = ToBf16(v + ToFloat(res[i]));
      res[i] = s;
      v = ToFloat(s);
    }
    sum_sq = fmaf(v, v, sum_sq);
  }
  const float total = detail::BlockSum(sum_sq, scratch);
  // As kernels/cpu/rmsnorm.cc: 1 / sqrt in double, rounded to float once per row.
  const float inv = static_cast<float>(1.0 / sqrt(static_cast<double>(total) / static_cast<double>(p.dim) + p.eps));
  for (int64_t i = threadIdx.x; i < p.dim; i += blockDim.x) {
    const float v = ToFloat(kResidual ? res[i] : x[i]);
    out[i] = ToBf16(__fmul_rn(ToFloat(p.weight[i]), __fmul_rn(v, inv)));
  }
}

}  // namespace

cudaError_t LaunchRmsNorm(const RmsNormParams& p, cudaStream_t stream) {
  if (p.rows < 0 || p.dim < 0 || p.rows > INT32_MAX) return cudaErrorInvalidValue;
  if (p.rows == 0 || p.dim == 0) return cudaSuccess;
  if (p.ldx < p.dim || p.ldo < p.dim || (p.residual != nullptr && p.ld_residual < p.dim)) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(p.rows));
  if (p.residual != nullptr) {
    detail::LaunchKernel(RmsNormKernel<true>, grid, kThreads, 0, stream, p);
  } else {
    detail::LaunchKernel(RmsNormKernel<false>, grid, kThreads, 0, stream, p);
  }
  return cudaGetLastError();
}

}  // namespace mla::cuda
