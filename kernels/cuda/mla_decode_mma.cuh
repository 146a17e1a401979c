// The tensor-core split-KV decode attention behind LaunchMlaDecode
// (mla_decode.cuh): runs a host plan's work items, then merges split
// sequences. Internal to kernels/cuda.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "kernels/cuda/mla_decode.cuh"

namespace mla::cuda::detail {

// Requires MlaDecodeUsesTensorCores(kv_lora, qk_rope), a plan for num_heads
// (heads_per_block 16 or 32, the plan's; or 64 with kv_lora 512 and rope 64,
// which runs the wgmma kernel, mla_decode_wgmma.cuh), and 16-byte aligned
// q_latent, q_pe and cache.
cudaError_t LaunchMlaDecodeMma(const MlaDecodeParams& p, cudaStream_t stream);

}  // namespace mla::cuda::detail
