// TMA staging of the latent cache for the wgmma decode kernels
// (mla_decode_wgmma.cu at 64 heads per item, mla_decode_wgmma16.cu at 16):
// the cache as a 2-D tensor map, and a 64-token page requested by one thread
// into a 128-byte-swizzled shared-memory stage that wgmma reads directly.
// DeepSeek-V3's latent only (kv_lora 512 + rope 64), 64-token pages only (a
// tile is then one page). Internal to kernels/cuda.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/mla_decode.cuh"
#include "kernels/cuda/mla_decode_cache_map.h"
#include "kernels/cuda/mla_decode_plan.h"
#include "kernels/cuda/warp_mma.cuh"

namespace mla::cuda::detail {

// A stage: 9 boxes of 64 positions x 64 latent values (128-byte rows, 8 KiB,
// 128-byte swizzled: wgmma.cuh), box j holding the latent's [64 j, 64 j + 64).
// Position r's 16-byte chunk c of box j lies at byte j * kTmaBoxBytes + r *
// 128 + 16 (c ^ (r % 8)) of the stage, which must start on a 1024-byte atom.
inline constexpr uint32_t kTmaBoxBytes = 64 * 128;
inline constexpr int kTmaBoxes = kTmaLatent / 64;
inline constexpr uint32_t kTmaStageBytes = kTmaBoxes * kTmaBoxBytes;  // 73728
static_assert(kMlaDecodeTileTokens == 64, "a stage is one 64-token page");

// A TMA-staged kernel's dynamic shared memory: its own layout (stages at
// 1024-byte multiples from its start, mbarriers at its end), then the two
// stages' mbarriers (16 bytes) and the slack to start the layout on a
// 1024-byte atom (AlignToAtom).
inline constexpr size_t kTmaSharedExtraBytes = 16 + 1024;
__device__ __forceinline__ unsigned char* AlignToAtom(unsigned char* smem) {
  return smem + (1024 - SharedAddress(smem) % 1024) % 1024;
}

// Whether a launch stages by TMA: MlaDecodeCopy::kBulk and 64-token pages
// (other block sizes fall back to cp.async).
inline bool MlaDecodeStagesByTma(const MlaDecodeParams& p) {
  return p.copy == MlaDecodeCopy::kBulk && p.block_size == kMlaDecodeTileTokens;
}

// One thread: requests page `block` of the cache (its 64 positions, 9 boxes)
// into the stage at `stage_addr` on the mbarrier `bar`, which it arms with
// the stage's bytes.
__device__ __forceinline__ void IssueCachePage(const CUtensorMap* map, uint32_t stage_addr, uint32_t bar,
                                               int32_t block) {
  MbarArriveExpectTx(bar, static_cast<int>(kTmaStageBytes));
  const int row = block * kMlaDecodeTileTokens;
#pragma unroll
  for (int j = 0; j < kTmaBoxes; ++j) BulkTensorCopy2d(stage_addr + j * kTmaBoxBytes, map, 64 * j, row, bar);
}

// The block's kThreads threads: zero positions [valid, 64) of a landed
// stage (the last page's stale rows past kv_end could hold NaN, and 0 x NaN
// is NaN). A box row's 128 bytes are one position whatever the swizzle. The
// caller fences (FenceProxyAsync) and syncs before wgmma reads the stage.
template <int kThreads>
__device__ __forceinline__ void ZeroStageFrom(unsigned char* stage, int valid) {
  for (int i = threadIdx.x; i < (kMlaDecodeTileTokens - valid) * kTmaBoxes * 8; i += kThreads) {
    const int r = valid + i / (kTmaBoxes * 8), box = i / 8 % kTmaBoxes, chunk = i % 8;
    *reinterpret_cast<uint4*>(stage + box * kTmaBoxBytes + r * 128 + chunk * 16) = make_uint4(0, 0, 0, 0);
  }
}

// One thread: the two stages' mbarriers at bar_addr and bar_addr + 8, one
// arrival a phase (the issuing thread's expect_tx). The block syncs before
// any thread waits on them.
__device__ __forceinline__ void InitStageBarriers(uint32_t bar_addr) {
  MbarInit(bar_addr, 1);
  MbarInit(bar_addr + 8, 1);
  FenceMbarInit();
}

// The block's kThreads threads, at the top of the tile at t0 of `item`:
// waits for the page in `stage` (mbarrier bar_addr + 8 stage, whose next
// phase parity is bit `stage` of *phases, flipped here) and, on the item's
// first tile, for the thread's own cp.async groups (the query); zeroes the
// page's positions past kv_end. `stage_smem` is the stage's generic address.
template <int kThreads>
__device__ __forceinline__ void WaitCachePage(const MlaDecodeWorkItem& item, int t0, int stage, uint32_t bar_addr,
                                              uint32_t* phases, unsigned char* stage_smem) {
  if (t0 == item.kv_begin) CpAsyncWait<0>();
  MbarWaitParity(bar_addr + 8 * stage, static_cast<int>((*phases >> stage) & 1));
  *phases ^= 1u << stage;
  if (item.kv_end - t0 < kMlaDecodeTileTokens) ZeroStageFrom<kThreads>(stage_smem, item.kv_end - t0);
}

}  // namespace mla::cuda::detail
