// The decode kernels' L2 prefetches of the cache: of tiles ahead of the one
// being staged (MlaDecodeParams.prefetch_l2), and of a work item's first
// tiles before the wait of a programmatic dependent launch (MlaDecodeParams.pdl).
// Internal to kernels/cuda.
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

// With programmatic dependent launch (p.pdl) a decode block may be resident
// while the kernel ahead of it (the W_UK GEMM, a few microseconds) still runs;
// before its GridDependencyWait it asks L2 for its work item's first
// positions, so the cache streams from DRAM meanwhile instead of after. Only
// a hint (an L2 prefetch changes no result, whatever the kernels ahead write);
// it reads the plan and the block table, which the host uploads with copies
// ahead of the kernels. At most two tiles an item, and about kBudgetBytes over
// the grid so the prefetched lines stay in L2 until the tiles are staged (50
// MiB on an H100 or H200; 16 MiB is about 4 us of an H200's DRAM bandwidth,
// the W_UK GEMM's time). Called by one thread of the block.
__device__ __forceinline__ void PrefetchItemStartL2(const MlaDecodeParams& p, int latent) {
  constexpr int64_t kBudgetBytes = int64_t{16} << 20;
  const int64_t row_bytes = static_cast<int64_t>(latent) * 2;
  const int64_t per_item = kBudgetBytes / (static_cast<int64_t>(max(p.num_work_items, 1)) * row_bytes);
  const int positions = static_cast<int>(per_item < 2 * kMlaDecodeTileTokens ? per_item : 2 * kMlaDecodeTileTokens);
  const MlaDecodeWorkItem item = p.work_items[blockIdx.x];
  const int32_t* table = p.block_tables + static_cast<int64_t>(item.seq) * p.max_blocks_per_seq;
  PrefetchPositionsL2(p, table, latent, item.kv_begin, min(item.kv_begin + positions, item.kv_end));
}

}  // namespace mla::cuda::detail
