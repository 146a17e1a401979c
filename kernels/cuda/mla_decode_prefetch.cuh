// The decode kernels' L2 prefetch of cache tiles ahead of the one being staged
// (MlaDecodeParams.prefetch_l2). Internal to kernels/cuda.
#pragma once

#include <cstdint>

#include "kernels/cuda/mla_decode.cuh"
#include "kernels/cuda/warp_mma.cuh"

namespace mla::cuda::detail {

// Asks L2 for positions [begin, end) of the sequence whose block table is
// `table` (rows of `latent` BF16): one bulk prefetch per cache block the range
// touches, so one for a 64-position tile inside a 64-token page. Called by one
// thread; begin >= end asks for nothing.
__device__ __forceinline__ void PrefetchPositionsL2(const MlaDecodeParams& p, const int32_t* table, int latent,
                                                    int begin, int end) {
  const uint32_t row_bytes = static_cast<uint32_t>(latent) * 2;
  for (int pos = begin; pos < end;) {
    const int in_block = pos % p.block_size;
    const int run = min(p.block_size - in_block, end - pos);
    PrefetchL2(p.cache + (static_cast<int64_t>(table[pos / p.block_size]) * p.block_size + in_block) * latent,
               static_cast<uint32_t>(run) * row_bytes);
    pos += run;
  }
}

}  // namespace mla::cuda::detail
