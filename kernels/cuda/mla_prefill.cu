#include "kernels/cuda/mla_prefill.cuh"

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/launch.cuh"

namespace mla::cuda {
namespace {

using detail::ToBf16;
using detail::ToFloat;

constexpr int kWarps = 4;  // heads per block (one warp each)

// The sequence owning global query row qi: the largest s with cu[s] <= qi
// (empty sequences share their start with the next one).
__device__ int SequenceOf(const int32_t* cu, int num_seqs, int64_t qi) {
  int lo = 0, hi = num_seqs;
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (cu[mid] <= qi) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// One warp per (query row, head), online softmax over the visible keys. Lane l
// holds dims l, l + 32, ...: N registers each for q and the output (dims <= 32N).
template <int N>
__global__ void __launch_bounds__(kWarps * 32) MlaPrefillKernel(MlaPrefillParams p) {
  const int lane = threadIdx.x & 31;
  const int h = blockIdx.y * kWarps + (threadIdx.x >> 5);
  if (h >= p.num_heads) return;  // no block-wide synchronisation below
  const int64_t qi = blockIdx.x;
  const int s = SequenceOf(p.cu_seqlens_q, p.num_seqs, qi);
  const int64_t q0 = p.cu_seqlens_q[s], q_len = p.cu_seqlens_q[s + 1] - q0;
  const int64_t kv0 = p.cu_seqlens_kv[s], kv_len = p.cu_seqlens_kv[s + 1] - kv0;
  const int64_t visible = kv_len - q_len + (qi - q0) + 1;
  const int nope = p.qk_nope, qk = p.qk_nope + p.qk_rope, kvw = p.qk_nope + p.v_dim;

  float q[N], acc[N];
  const __nv_bfloat16* qp = p.q + (qi * p.num_heads + h) * qk;
#pragma unroll
  for (int i = 0; i < N; ++i) {
    const int d = lane + 32 * i;
    q[i] = d < qk ? ToFloat(qp[d]) : 0.0f;
    acc[i] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  for (int64_t t = 0; t < visible; ++t) {
    const __nv_bfloat16* k = p.kv + ((kv0 + t) * p.num_heads + h) * kvw;
    const __nv_bfloat16* kpe = p.k_pe + (kv0 + t) * p.k_pe_stride;
    float part = 0.0f;
#pragma unroll
    for (int i = 0; i < N; ++i) {
      const int d = lane + 32 * i;
      if (d < nope) {
        part = fmaf(q[i], ToFloat(k[d]), part);
      } else if (d < qk) {
        part = fmaf(q[i], ToFloat(kpe[d - nope]), part);
      }
    }
    const float score = detail::WarpSum(part) * p.scale;
    const float m_new = fmaxf(m, score);
    const float corr = expf(m - m_new), w = expf(score - m_new);
    l = l * corr + w;
#pragma unroll
    for (int i = 0; i < N; ++i) {
      const int d = lane + 32 * i;
      if (d < p.v_dim) acc[i] = fmaf(w, ToFloat(k[nope + d]), acc[i] * corr);
    }
    m = m_new;
  }
  __nv_bfloat16* o = p.out + (qi * p.num_heads + h) * p.v_dim;
  const float inv = visible > 0 ? 1.0f / l : 0.0f;
#pragma unroll
  for (int i = 0; i < N; ++i) {
    const int d = lane + 32 * i;
    if (d < p.v_dim) o[d] = ToBf16(acc[i] * inv);
  }
}

template <int N>
cudaError_t Launch(const MlaPrefillParams& p, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(p.total_q), static_cast<unsigned>(detail::CeilDiv(p.num_heads, kWarps)));
  detail::LaunchKernel(MlaPrefillKernel<N>, grid, kWarps * 32, 0, stream, p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchMlaPrefill(const MlaPrefillParams& p, cudaStream_t stream) {
  const int qk = p.qk_nope + p.qk_rope;
  if (p.total_q < 0 || p.total_q > INT32_MAX || p.num_seqs < 0 || p.num_heads <= 0 || p.qk_nope < 0 ||
      p.qk_rope < 0 || p.v_dim <= 0 || qk > kMlaPrefillMaxDim || p.v_dim > kMlaPrefillMaxDim ||
      p.k_pe_stride < p.qk_rope) {
    return cudaErrorInvalidValue;
  }
  if (p.total_q == 0 || p.num_seqs == 0) return cudaSuccess;
  const int widest = qk > p.v_dim ? qk : p.v_dim;
  if (widest <= 64) return Launch<2>(p, stream);
  if (widest <= 128) return Launch<4>(p, stream);
  if (widest <= 192) return Launch<6>(p, stream);
  return Launch<8>(p, stream);
}

}  // namespace mla::cuda
