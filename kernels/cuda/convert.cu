#include "kernels/cuda/convert.cuh"

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/launch.cuh"

namespace mla::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65536;  // grid-stride beyond this

__global__ void __launch_bounds__(kThreads) Bf16ToF32Kernel(Bf16ToF32Params p) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < p.n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    p.out[e] = detail::ToFloat(p.in[e]);
  }
}

}  // namespace

cudaError_t LaunchBf16ToF32(const Bf16ToF32Params& p, cudaStream_t stream) {
  if (p.n < 0) return cudaErrorInvalidValue;
  if (p.n == 0) return cudaSuccess;
  const int64_t blocks = detail::CeilDiv(p.n, kThreads);
  detail::LaunchKernel(Bf16ToF32Kernel, static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks), kThreads, 0, stream, p);
  return cudaGetLastError();
}

}  // namespace mla::cuda
