// The warpgroup-MMA (wgmma, sm_90a) decode attention behind LaunchMlaDecode
// (mla_decode.cuh) for DeepSeek-V3's latent (kv_lora 512, rope 64) at 64 heads
// per work item: a plan with heads_per_block 64 selects it; the merge of split
// sequences is the mma.sync kernel's (mla_decode_mma.cu). Internal to
// kernels/cuda.
#pragma once

#include <cuda_runtime.h>

#include "kernels/cuda/mla_decode.cuh"

namespace mla::cuda::detail {

inline constexpr int kMlaDecodeWgmmaKvLora = 512;
inline constexpr int kMlaDecodeWgmmaRope = 64;
inline constexpr int kMlaDecodeWgmmaHeads = 64;  // heads per work item: one wgmma M

bool MlaDecodeWgmmaTakes(int kv_lora, int qk_rope, int heads_per_block);

// Runs the plan's work items (not the merges). Requires MlaDecodeWgmmaTakes
// and 16-byte aligned q_latent, q_pe and cache. With MlaDecodeCopy::kBulk and
// 64-token pages the cache is staged by TMA tensor copies (mla_decode_tma.cuh's
// map; cudaErrorNotSupported where the driver cannot encode one).
cudaError_t LaunchMlaDecodeWgmma(const MlaDecodeParams& p, cudaStream_t stream);

}  // namespace mla::cuda::detail
