#include "kernels/cuda/rmsnorm_f32.cuh"

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/launch.cuh"

namespace mla::cuda {
namespace {

constexpr int kThreads = 256;

// One block per output row. Pass 2 reads element i on the thread that wrote it
// in pass 1, so the in-place residual add needs no extra barrier.
template <bool kDelta>
__global__ void __launch_bounds__(kThreads) RmsNormF32Kernel(RmsNormF32Params p) {
  __shared__ double scratch[32];
  const int64_t row = blockIdx.x;
  float* x = p.x + row * p.ldx;
  const float* delta = kDelta ? p.delta + row * p.ld_delta : nullptr;
  double sum_sq = 0.0;
  for (int64_t i = threadIdx.x; i < p.dim; i += blockDim.x) {
    float v = x[i];
    if constexpr (kDelta) {
      v = __fadd_rn(v, delta[i]);
      x[i] = v;
    }
    sum_sq += static_cast<double>(v) * static_cast<double>(v);
  }
  const double total = detail::BlockSum(sum_sq, scratch);
  const float inv = static_cast<float>(1.0 / sqrt(total / static_cast<double>(p.dim) + static_cast<double>(p.eps)));
  __nv_bfloat16* out = p.out + row * p.ldo;
  float* out_f32 = p.out_f32 != nullptr ? p.out_f32 + row * p.ldo : nullptr;
  for (int64_t i = threadIdx.x; i < p.dim; i += blockDim.x) {
    const float o = __fmul_rn(p.weight[i], __fmul_rn(x[i], inv));
    out[i] = detail::ToBf16(o);
    if (out_f32 != nullptr) out_f32[i] = o;
  }
}

}  // namespace

cudaError_t LaunchRmsNormF32(const RmsNormF32Params& p, cudaStream_t stream) {
  if (p.rows < 0 || p.rows > INT32_MAX || p.dim < 0) return cudaErrorInvalidValue;
  if (p.rows == 0 || p.dim == 0) return cudaSuccess;
  if (p.x == nullptr || p.weight == nullptr || p.out == nullptr || p.ldx < p.dim || p.ldo < p.dim) {
    return cudaErrorInvalidValue;
  }
  if (p.delta != nullptr && p.ld_delta < p.dim) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(p.rows));
  if (p.delta != nullptr) {
    detail::LaunchKernel(RmsNormF32Kernel<true>, grid, kThreads, 0, stream, p);
  } else {
    detail::LaunchKernel(RmsNormF32Kernel<false>, grid, kThreads, 0, stream, p);
  }
  return cudaGetLastError();
}

}  // namespace mla::cuda
