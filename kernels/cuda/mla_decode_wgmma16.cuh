// The warpgroup-MMA (wgmma, sm_90a) decode attention behind LaunchMlaDecode
// (mla_decode.cuh) at 16 heads per work item, with the cached positions as the
// MMA's M (S^T = K Q^T, O^T += V^T P^T): a plan with heads_per_block 16 and
// MlaDecodeParams.mma kWarpgroup selects it, for DeepSeek-V3's latent only
// (kv_lora 512, rope 64). The merge of split sequences is the mma.sync
// kernel's (mla_decode_mma.cu). Internal to kernels/cuda.
#pragma once

#include <cuda_runtime.h>

#include "kernels/cuda/mla_decode.cuh"

namespace mla::cuda::detail {

inline constexpr int kMlaDecodeWgmma16Heads = 16;  // heads per work item: one wgmma N

bool MlaDecodeWgmma16Takes(int kv_lora, int qk_rope, int heads_per_block, MlaDecodeMma mma);

// Runs the plan's work items (not the merges). Requires MlaDecodeWgmma16Takes
// and 16-byte aligned q_latent, q_pe and cache. With MlaDecodeCopy::kBulk and
// 64-token pages the cache is staged by TMA tensor copies (mla_decode_tma.cuh's
// map; cudaErrorNotSupported where the driver cannot encode one).
cudaError_t LaunchMlaDecodeWgmma16(const MlaDecodeParams& p, cudaStream_t stream);

}  // namespace mla::cuda::detail
