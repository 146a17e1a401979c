#include "kernels/cuda/embedding.cuh"

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/launch.cuh"

namespace mla::cuda {
namespace {

constexpr int kThreads = 256;

// One block per token. kVec: rows move as 16-byte chunks (hidden % 8 == 0, aligned bases).
template <bool kVec>
__global__ void __launch_bounds__(kThreads) EmbeddingKernel(EmbeddingParams p) {
  const int64_t t = blockIdx.x;
  const int64_t id = p.token_ids[t];
  const bool owned = id >= p.vocab_begin && id < p.vocab_begin + p.local_vocab;
  const __nv_bfloat16* src = p.table + (owned ? (id - p.vocab_begin) * p.hidden : 0);
  __nv_bfloat16* dst = p.out + t * p.hidden;
  if constexpr (kVec) {
    const int64_t chunks = p.hidden / 8;
    const uint4* s = reinterpret_cast<const uint4*>(src);
    uint4* d = reinterpret_cast<uint4*>(dst);
    for (int64_t i = threadIdx.x; i < chunks; i += blockDim.x) d[i] = owned ? s[i] : make_uint4(0, 0, 0, 0);
  } else {
    for (int64_t i = threadIdx.x; i < p.hidden; i += blockDim.x) dst[i] = owned ? src[i] : __float2bfloat16_rn(0.0f);
  }
}

}  // namespace

cudaError_t LaunchEmbedding(const EmbeddingParams& p, cudaStream_t stream) {
  if (p.num_tokens < 0 || p.hidden < 0 || p.local_vocab < 0) return cudaErrorInvalidValue;
  if (p.num_tokens == 0 || p.hidden == 0) return cudaSuccess;
  if (p.num_tokens > INT32_MAX) return cudaErrorInvalidValue;
  const bool vec = p.hidden % 8 == 0 && detail::Aligned16(p.table) && detail::Aligned16(p.out);
  const dim3 grid(static_cast<unsigned>(p.num_tokens));
  if (vec) {
    detail::LaunchKernel(EmbeddingKernel<true>, grid, kThreads, 0, stream, p);
  } else {
    detail::LaunchKernel(EmbeddingKernel<false>, grid, kThreads, 0, stream, p);
  }
  return cudaGetLastError();
}

}  // namespace mla::cuda
