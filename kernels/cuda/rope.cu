#include "kernels/cuda/rope.cuh"

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/launch.cuh"

namespace mla::cuda {
namespace {

using detail::ToBf16;
using detail::ToFloat;

constexpr int kThreads = 128;

// One block per token: cos/sin per pair once into shared memory, then every
// (head, pair) of q and the pairs of k. The explicit _rn operations keep the
// compiler from fusing into FMAs, so the rotation rounds as the CPU op does.
__global__ void __launch_bounds__(kThreads) RopeKernel(RopeParams p) {
  MLA_DYNAMIC_SHARED(cs_raw);
  float* cs = reinterpret_cast<float*>(cs_raw);  // [2, rope_dim / 2]: cos | sin
  const int pairs = p.rope_dim / 2;
  const int64_t t = blockIdx.x;
  const float pos = static_cast<float>(p.positions[t]);
  for (int i = threadIdx.x; i < pairs; i += blockDim.x) {
    const float angle = __fmul_rn(pos, p.inv_freq[i]);
    double s, c;
    sincos(static_cast<double>(angle), &s, &c);
    cs[i] = __fmul_rn(static_cast<float>(c), p.attention_factor);
    cs[pairs + i] = __fmul_rn(static_cast<float>(s), p.attention_factor);
  }
  __syncthreads();
  const int q_rows = p.q_pe != nullptr ? p.num_heads : 0;
  const int rows = q_rows + (p.k_pe != nullptr ? 1 : 0);
  for (int w = threadIdx.x; w < rows * pairs; w += blockDim.x) {
    const int row = w / pairs, i = w % pairs;
    __nv_bfloat16* x = row < q_rows ? p.q_pe + t * p.q_token_stride + row * p.q_head_stride
                                    : p.k_pe + t * p.k_token_stride;
    const float xa = ToFloat(x[2 * i]), xb = ToFloat(x[2 * i + 1]);
    const float c = cs[i], s = cs[pairs + i];
    x[2 * i] = ToBf16(__fsub_rn(__fmul_rn(xa, c), __fmul_rn(xb, s)));
    x[2 * i + 1] = ToBf16(__fadd_rn(__fmul_rn(xb, c), __fmul_rn(xa, s)));
  }
}

}  // namespace

cudaError_t LaunchRope(const RopeParams& p, cudaStream_t stream) {
  if (p.num_tokens < 0 || p.num_tokens > INT32_MAX || p.rope_dim < 0 || p.rope_dim % 2 != 0 || p.num_heads < 0) {
    return cudaErrorInvalidValue;
  }
  if (p.num_tokens == 0 || p.rope_dim == 0 || (p.q_pe == nullptr && p.k_pe == nullptr)) return cudaSuccess;
  const size_t smem = sizeof(float) * static_cast<size_t>(p.rope_dim);
  detail::LaunchKernel(RopeKernel, static_cast<unsigned>(p.num_tokens), kThreads, smem, stream, p);
  return cudaGetLastError();
}

}  // namespace mla::cuda
