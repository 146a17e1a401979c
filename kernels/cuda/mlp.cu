#include "kernels/cuda/mlp.cuh"

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/launch.cuh"

namespace mla::cuda {
namespace {

using detail::ToBf16;
using detail::ToFloat;

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65536;  // grid-stride beyond this

__global__ void __launch_bounds__(kThreads) SiluMulKernel(SiluMulParams p) {
  const int64_t n = p.rows * p.inter;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = e / p.inter, i = e % p.inter;
    const __nv_bfloat16* g = p.gate_up + r * 2 * p.inter;
    const float gate = ToFloat(g[i]), up = ToFloat(g[p.inter + i]);
    // As kernels/cpu/mlp.cc: g / (1 + exp(-g)) * u, each step rounded.
    p.out[e] = ToBf16(__fmul_rn(__fdiv_rn(gate, __fadd_rn(1.0f, expf(-gate))), up));
  }
}

__global__ void __launch_bounds__(kThreads) AddKernel(AddParams p) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < p.n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    p.y[e] = ToBf16(__fadd_rn(ToFloat(p.y[e]), ToFloat(p.x[e])));
  }
}

unsigned Blocks(int64_t n) {
  const int64_t b = detail::CeilDiv(n, kThreads);
  return static_cast<unsigned>(b < kMaxBlocks ? b : kMaxBlocks);
}

}  // namespace

cudaError_t LaunchSiluMul(const SiluMulParams& p, cudaStream_t stream) {
  if (p.rows < 0 || p.inter < 0) return cudaErrorInvalidValue;
  if (p.rows == 0 || p.inter == 0) return cudaSuccess;
  detail::LaunchKernel(SiluMulKernel, Blocks(p.rows * p.inter), kThreads, 0, stream, p);
  return cudaGetLastError();
}

cudaError_t LaunchAddInPlace(const AddParams& p, cudaStream_t stream) {
  if (p.n < 0) return cudaErrorInvalidValue;
  if (p.n == 0) return cudaSuccess;
  detail::LaunchKernel(AddKernel, Blocks(p.n), kThreads, 0, stream, p);
  return cudaGetLastError();
}

}  // namespace mla::cuda
