#include "kernels/cuda/latent_cache.cuh"

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/launch.cuh"

namespace mla::cuda {
namespace {

constexpr int kThreads = 128;

// One block per token; kVec moves 16-byte chunks (latent_dim and stride % 8 == 0, aligned bases).
template <bool kVec>
__global__ void __launch_bounds__(kThreads) LatentAppendKernel(LatentAppendParams p) {
  const int64_t t = blockIdx.x;
  const int64_t pos = p.positions[t];
  const int64_t slot = pos / p.block_size;
  if (pos < 0 || slot >= p.max_blocks_per_seq) return;
  const int64_t block = p.block_tables[static_cast<int64_t>(p.token_seq[t]) * p.max_blocks_per_seq + slot];
  if (block < 0 || block >= p.num_blocks) return;
  const __nv_bfloat16* src = p.latent + t * p.latent_stride;
  __nv_bfloat16* dst = p.cache + (block * p.block_size + pos % p.block_size) * p.latent_dim;
  if constexpr (kVec) {
    const uint4* s = reinterpret_cast<const uint4*>(src);
    uint4* d = reinterpret_cast<uint4*>(dst);
    for (int64_t i = threadIdx.x; i < p.latent_dim / 8; i += blockDim.x) d[i] = s[i];
  } else {
    for (int64_t i = threadIdx.x; i < p.latent_dim; i += blockDim.x) dst[i] = src[i];
  }
}

}  // namespace

cudaError_t LaunchLatentAppend(const LatentAppendParams& p, cudaStream_t stream) {
  if (p.num_tokens < 0 || p.num_tokens > INT32_MAX || p.latent_dim < 0 || p.latent_stride < p.latent_dim ||
      p.block_size <= 0 || p.max_blocks_per_seq < 0) {
    return cudaErrorInvalidValue;
  }
  if (p.num_tokens == 0 || p.latent_dim == 0) return cudaSuccess;
  const bool vec = p.latent_dim % 8 == 0 && p.latent_stride % 8 == 0 && detail::Aligned16(p.latent) &&
                   detail::Aligned16(p.cache);
  const dim3 grid(static_cast<unsigned>(p.num_tokens));
  if (vec) {
    detail::LaunchKernel(LatentAppendKernel<true>, grid, kThreads, 0, stream, p);
  } else {
    detail::LaunchKernel(LatentAppendKernel<false>, grid, kThreads, 0, stream, p);
  }
  return cudaGetLastError();
}

}  // namespace mla::cuda
