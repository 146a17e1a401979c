#include "kernels/cuda/latent_gather.cuh"

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/launch.cuh"

namespace mla::cuda {
namespace {

constexpr int kThreads = 128;

// One block per output row; kVec moves 16-byte chunks (latent_dim % 8 == 0, aligned bases).
template <bool kVec>
__global__ void __launch_bounds__(kThreads) LatentGatherKernel(LatentGatherParams p) {
  const int64_t r = blockIdx.x;
  const int64_t pos = p.row_pos[r];
  const int64_t slot = pos / p.block_size;
  int64_t block = -1;
  if (pos >= 0 && slot < p.max_blocks_per_seq) {
    block = p.block_tables[static_cast<int64_t>(p.row_seq[r]) * p.max_blocks_per_seq + slot];
  }
  __nv_bfloat16* dst = p.out + r * p.latent_dim;
  if (block < 0 || block >= p.num_blocks) {
    const __nv_bfloat16 nan = __ushort_as_bfloat16(0x7fc0);
    for (int64_t i = threadIdx.x; i < p.latent_dim; i += blockDim.x) dst[i] = nan;
    return;
  }
  const __nv_bfloat16* src = p.cache + (block * p.block_size + pos % p.block_size) * p.latent_dim;
  if constexpr (kVec) {
    const uint4* s = reinterpret_cast<const uint4*>(src);
    uint4* d = reinterpret_cast<uint4*>(dst);
    for (int64_t i = threadIdx.x; i < p.latent_dim / 8; i += blockDim.x) d[i] = s[i];
  } else {
    for (int64_t i = threadIdx.x; i < p.latent_dim; i += blockDim.x) dst[i] = src[i];
  }
}

}  // namespace

cudaError_t LaunchLatentGather(const LatentGatherParams& p, cudaStream_t stream) {
  if (p.num_rows < 0 || p.num_rows > INT32_MAX || p.latent_dim < 0 || p.block_size <= 0 ||
      p.max_blocks_per_seq < 0 || p.num_blocks < 0) {
    return cudaErrorInvalidValue;
  }
  if (p.num_rows == 0 || p.latent_dim == 0) return cudaSuccess;
  const bool vec = p.latent_dim % 8 == 0 && detail::Aligned16(p.cache) && detail::Aligned16(p.out);
  const dim3 grid(static_cast<unsigned>(p.num_rows));
  if (vec) {
    detail::LaunchKernel(LatentGatherKernel<true>, grid, kThreads, 0, stream, p);
  } else {
    detail::LaunchKernel(LatentGatherKernel<false>, grid, kThreads, 0, stream, p);
  }
  return cudaGetLastError();
}

}  // namespace mla::cuda
