#include "kernels/cuda/mla_decode.cuh"

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/mla_decode_mma.cuh"

namespace mla::cuda {
namespace {

using detail::ToBf16;
using detail::ToFloat;

constexpr int kWarps = 8;  // heads per block (one warp each), sharing each cache tile
constexpr int kTile = 16;  // cached tokens per shared-memory stage

// The fields of MlaDecodeParams the simple kernel reads, as its own argument:
// with the whole struct as the argument, ptxas spilled 16 bytes in
// MlaDecodeKernel<18, false> whenever the struct grew past 128 bytes.
struct SimpleArgs {
  const __nv_bfloat16* q_latent;
  const __nv_bfloat16* q_pe;
  const __nv_bfloat16* cache;
  const int32_t* block_tables;
  const int32_t* kv_lens;
  __nv_bfloat16* out_latent;
  int num_heads, kv_lora, qk_rope, block_size, max_blocks_per_seq;
  float scale;
};

// Grid (seq, head group). The block stages kTile cache rows at a time in shared
// memory (read from global once for its kWarps heads); each warp scores them
// for its head and folds them into an online softmax. Lane l holds latent dims
// l, l + 32, ...: N registers each for the query and the accumulator
// (kv_lora + qk_rope <= 32N). kVec: 16-byte cache loads (latent % 8 == 0).
template <int N, bool kVec>
__global__ void __launch_bounds__(kWarps * 32) MlaDecodeKernel(SimpleArgs p) {
  MLA_DYNAMIC_SHARED(smem_raw);
  __nv_bfloat16* tile = reinterpret_cast<__nv_bfloat16*>(smem_raw);  // [kTile, latent]
  const int lane = threadIdx.x & 31;
  const int h = blockIdx.y * kWarps + (threadIdx.x >> 5);
  const bool active = h < p.num_heads;  // inactive warps still help load and hit every barrier
  const int64_t s = blockIdx.x;
  const int kv_lora = p.kv_lora, latent = p.kv_lora + p.qk_rope;

  float q[N], acc[N];
  const __nv_bfloat16* ql = p.q_latent + (s * p.num_heads + h) * kv_lora;
  const __nv_bfloat16* qr = p.q_pe + (s * p.num_heads + h) * p.qk_rope;
#pragma unroll
  for (int i = 0; i < N; ++i) {
    const int d = lane + 32 * i;
    q[i] = !active || d >= latent ? 0.0f : d < kv_lora ? ToFloat(ql[d]) : ToFloat(qr[d - kv_lora]);
    acc[i] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;

  const int64_t kv_len = p.kv_lens[s];
  const int32_t* table = p.block_tables + s * p.max_blocks_per_seq;
  for (int64_t t0 = 0; t0 < kv_len; t0 += kTile) {
    const int valid = static_cast<int>(kv_len - t0 < kTile ? kv_len - t0 : kTile);
    __syncthreads();  // the previous tile is consumed
    const int per_row = kVec ? latent / 8 : latent;
    for (int c = threadIdx.x; c < valid * per_row; c += blockDim.x) {
      const int r = c / per_row, k = c % per_row;
      const int64_t pos = t0 + r;
      const int64_t block = table[pos / p.block_size];
      const __nv_bfloat16* row = p.cache + (block * p.block_size + pos % p.block_size) * latent;
      if constexpr (kVec) {
        reinterpret_cast<uint4*>(tile)[r * per_row + k] = reinterpret_cast<const uint4*>(row)[k];
      } else {
        tile[r * latent + k] = row[k];
      }
    }
    __syncthreads();
    if (!active) continue;
    float score[kTile];
    float tile_max = -INFINITY;
#pragma unroll
    for (int r = 0; r < kTile; ++r) {
      score[r] = -INFINITY;
      if (r < valid) {  // valid is warp-uniform: the shuffle below sees all lanes
        float part = 0.0f;
#pragma unroll
        for (int i = 0; i < N; ++i) {
          const int d = lane + 32 * i;
          if (d < latent) part = fmaf(q[i], ToFloat(tile[r * latent + d]), part);
        }
        score[r] = detail::WarpSum(part) * p.scale;
        tile_max = fmaxf(tile_max, score[r]);
      }
    }
    const float m_new = fmaxf(m, tile_max);
    const float corr = expf(m - m_new);
    l *= corr;
#pragma unroll
    for (int i = 0; i < N; ++i) acc[i] *= corr;
#pragma unroll
    for (int r = 0; r < kTile; ++r) {
      if (r < valid) {
        const float w = expf(score[r] - m_new);
        l += w;
#pragma unroll
        for (int i = 0; i < N; ++i) {
          const int d = lane + 32 * i;
          if (d < kv_lora) acc[i] = fmaf(w, ToFloat(tile[r * latent + d]), acc[i]);
        }
      }
    }
    m = m_new;
  }
  if (!active) return;
  __nv_bfloat16* o = p.out_latent + (s * p.num_heads + h) * kv_lora;
  const float inv = kv_len > 0 ? 1.0f / l : 0.0f;
#pragma unroll
  for (int i = 0; i < N; ++i) {
    const int d = lane + 32 * i;
    if (d < kv_lora) o[d] = ToBf16(acc[i] * inv);
  }
}

template <int N>
cudaError_t Launch(const MlaDecodeParams& p, cudaStream_t stream) {
  const int latent = p.kv_lora + p.qk_rope;
  const dim3 grid(static_cast<unsigned>(p.num_seqs), static_cast<unsigned>(detail::CeilDiv(p.num_heads, kWarps)));
  const size_t smem = sizeof(__nv_bfloat16) * kTile * static_cast<size_t>(latent);  // <= 24 KiB
  const bool vec = latent % 8 == 0 && detail::Aligned16(p.cache);
  const SimpleArgs a{p.q_latent,  p.q_pe,    p.cache,      p.block_tables, p.kv_lens, p.out_latent,
                     p.num_heads, p.kv_lora, p.qk_rope,    p.block_size,   p.max_blocks_per_seq, p.scale};
  if (vec) {
    detail::LaunchKernel(MlaDecodeKernel<N, true>, grid, kWarps * 32, smem, stream, a);
  } else {
    detail::LaunchKernel(MlaDecodeKernel<N, false>, grid, kWarps * 32, smem, stream, a);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchMlaDecode(const MlaDecodeParams& p, cudaStream_t stream) {
  const int latent = p.kv_lora + p.qk_rope;
  if (p.num_seqs < 0 || p.num_seqs > INT32_MAX || p.num_heads <= 0 || p.kv_lora <= 0 || p.qk_rope < 0 ||
      latent > kMlaDecodeMaxLatent || p.block_size <= 0 || p.max_blocks_per_seq < 0) {
    return cudaErrorInvalidValue;
  }
  if (p.num_seqs == 0) return cudaSuccess;
  const bool aligned = detail::Aligned16(p.q_latent) && detail::Aligned16(p.q_pe) && detail::Aligned16(p.cache) &&
                       (reinterpret_cast<uintptr_t>(p.out_latent) & 3u) == 0 &&
                       (reinterpret_cast<uintptr_t>(p.partial_out) & 7u) == 0;
  if (p.work_items != nullptr && MlaDecodeUsesTensorCores(p.kv_lora, p.qk_rope) && aligned) {
    return detail::LaunchMlaDecodeMma(p, stream);
  }
  if (latent <= 64) return Launch<2>(p, stream);
  if (latent <= 128) return Launch<4>(p, stream);
  if (latent <= 256) return Launch<8>(p, stream);
  if (latent <= 576) return Launch<18>(p, stream);
  return Launch<24>(p, stream);
}

}  // namespace mla::cuda
