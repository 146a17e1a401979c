// The tensor-core split-KV decode attention behind LaunchMlaDecode
// (mla_decode.cuh): runs a host plan's work items, then merges split
// sequences. Internal to kernels/cuda.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "kernels/cuda/mla_decode.cuh"

namespace mla::cuda::detail {

// Dynamic shared memory of one work item (bytes): the query rows, two stages
// of kMlaDecodeTileTokens cache rows, the BF16 probabilities and the
// cross-warp row statistics.
size_t MlaDecodeMmaSharedBytes(int latent, int heads_per_block);

// Requires MlaDecodeUsesTensorCores(kv_lora, qk_rope), a plan for num_heads
// (heads_per_block = MlaDecodeHeadsPerBlock(num_heads)), and 16-byte aligned
// q_latent, q_pe and cache.
cudaError_t LaunchMlaDecodeMma(const MlaDecodeParams& p, cudaStream_t stream);

}  // namespace mla::cuda::detail
