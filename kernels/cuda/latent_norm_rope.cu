#include "kernels/cuda/latent_norm_rope.cuh"

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/launch.cuh"

namespace mla::cuda {
namespace {

constexpr int kThreads = 256;

// One block per token: the norm over c_kv, then the k_pe pairs.
__global__ void __launch_bounds__(kThreads) LatentNormRopeKernel(LatentNormRopeParams p) {
  __shared__ double scratch[32];
  const int64_t t = blockIdx.x;
  const float* in = p.kv_a + t * p.ld_in;
  __nv_bfloat16* out = p.latent + t * p.ld_out;
  double sum_sq = 0.0;
  for (int i = threadIdx.x; i < p.kv_lora; i += blockDim.x) {
    const double v = in[i];
    sum_sq += v * v;
  }
  const double total = detail::BlockSum(sum_sq, scratch);
  const float inv = static_cast<float>(1.0 / sqrt(total / static_cast<double>(p.kv_lora) + static_cast<double>(p.eps)));
  for (int i = threadIdx.x; i < p.kv_lora; i += blockDim.x) {
    out[i] = detail::ToBf16(__fmul_rn(p.norm_weight[i], __fmul_rn(in[i], inv)));
  }
  const float pos = static_cast<float>(p.positions[t]);
  const float* pe = in + p.kv_lora;
  __nv_bfloat16* pe_out = out + p.kv_lora;
  for (int i = threadIdx.x; i < p.rope_dim / 2; i += blockDim.x) {
    const float angle = __fmul_rn(pos, p.inv_freq[i]);
    double s, c;
    sincos(static_cast<double>(angle), &s, &c);
    const float cf = __fmul_rn(static_cast<float>(c), p.attention_factor);
    const float sf = __fmul_rn(static_cast<float>(s), p.attention_factor);
    const float xa = pe[2 * i], xb = pe[2 * i + 1];
    pe_out[2 * i] = detail::ToBf16(__fsub_rn(__fmul_rn(xa, cf), __fmul_rn(xb, sf)));
    pe_out[2 * i + 1] = detail::ToBf16(__fadd_rn(__fmul_rn(xb, cf), __fmul_rn(xa, sf)));
  }
}

}  // namespace

cudaError_t LaunchLatentNormRope(const LatentNormRopeParams& p, cudaStream_t stream) {
  const int64_t latent = static_cast<int64_t>(p.kv_lora) + p.rope_dim;
  if (p.num_tokens < 0 || p.num_tokens > INT32_MAX || p.kv_lora <= 0 || p.rope_dim < 0 || p.rope_dim % 2 != 0 ||
      p.ld_in < latent || p.ld_out < latent) {
    return cudaErrorInvalidValue;
  }
  if (p.num_tokens == 0) return cudaSuccess;
  detail::LaunchKernel(LatentNormRopeKernel, static_cast<unsigned>(p.num_tokens), kThreads, 0, stream, p);
  return cudaGetLastError();
}

}  // namespace mla::cuda
