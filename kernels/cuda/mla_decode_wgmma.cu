#include "kernels/cuda/mla_decode_wgmma.cuh"

#include <cuda.h>
#include <cuda_bf16.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/mla_decode_merge.cuh"
#include "kernels/cuda/mla_decode_prefetch.cuh"
#include "kernels/cuda/mla_decode_tma.cuh"
#include "kernels/cuda/mla_decode_trace.cuh"
#include "kernels/cuda/warp_mma.cuh"
#include "kernels/cuda/wgmma.cuh"

namespace mla::cuda::detail {
namespace {

using bf16 = __nv_bfloat16;

// DeepSeek-V3's latent: kv_lora 512 + rope 64 BF16 per cached position.
constexpr int kKvLora = kMlaDecodeWgmmaKvLora;
constexpr int kLatent = kMlaDecodeWgmmaKvLora + kMlaDecodeWgmmaRope;
constexpr int kChunks = kLatent / 8;          // 16-byte pieces of a row: 72
constexpr int kRows = kMlaDecodeWgmmaHeads;   // heads per work item: one wgmma M of 64
constexpr int kTile = kMlaDecodeTileTokens;   // cached positions per stage: 64
constexpr int kWarpGroups = 2;
constexpr int kThreads = kWarpGroups * 128;
constexpr int kScoreN = kTile / kWarpGroups;  // positions per warpgroup in S = Q K^T: 32
constexpr int kOutN = kKvLora / kWarpGroups;  // output columns per warpgroup in O += P V: 256

// Shared memory in core matrices (wgmma.cuh: 8 rows x 16 bytes, 128
// contiguous bytes), no padding: a matrix of `rows` x kLatent (the query, a
// cache stage) keeps row r's 16-byte piece c at byte
//   (r / 8) * kGroupBytes + c * 128 + (r % 8) * 16,
// so piece q = (r / 8) * 8 kChunks + 8 c + r % 8 of a row-major walk over
// (row group, piece, row in group) lands at byte 16 q. As a wgmma operand,
// K-major along the latent (Q as A, K as B of the scores) it has LBO 128
// (next 8 latent values) and SBO kGroupBytes (next 8 rows); MN-major (V as B
// of P V, rows = positions = K) LBO kGroupBytes and SBO 128.
constexpr uint32_t kGroupBytes = 128 * kChunks;  // 8 rows: 9216
constexpr uint32_t kMatBytes = kGroupBytes * (kRows / 8);  // 64 rows: 73728 (query, and a stage)
// P [kRows heads x kTile positions], K-major: LBO 128, SBO kPGroupBytes.
constexpr uint32_t kPGroupBytes = 128 * (kTile / 8);  // 1024
constexpr uint32_t kPBytes = kPGroupBytes * (kRows / 8);  // 8192
// Row statistics exchanged between the warpgroups: [kWarpGroups][kRows] floats.
constexpr uint32_t kRedBytes = sizeof(float) * kWarpGroups * kRows;
constexpr size_t kSharedBytes = 3 * static_cast<size_t>(kMatBytes) + kPBytes + kRedBytes;  // 229888
static_assert(kSharedBytes <= 227 * 1024, "query, two stages, P and the statistics fit sm_90's 227 KiB");
// Staged by TMA (kTma: MlaDecodeCopy::kBulk with 64-token pages): a stage is
// mla_decode_tma.cuh's 9 boxes of 64 positions x 64 latent values, 128-byte
// swizzled (the query stays unswizzled, by cp.async); then two mbarriers, one
// a stage, and 1 KiB of slack to align the stages' 1024-byte atoms (the query
// before them is 72 KiB).
constexpr uint32_t kBoxBytes = kTmaBoxBytes;
static_assert(kTmaStageBytes == kMatBytes && kMatBytes % 1024 == 0, "boxes tile a stage, 1024-aligned");
constexpr uint32_t kBarOffset = static_cast<uint32_t>(kSharedBytes);  // a multiple of 8
constexpr size_t kTmaSharedBytes = kSharedBytes + kTmaSharedExtraBytes;
static_assert(kTmaSharedBytes <= 227 * 1024, "the mbarriers and the alignment slack fit too");
static_assert(kTile == 64 && kRows == 64 && kChunks == 72, "the layouts below assume DeepSeek-V3's shape");

// One work item (MlaDecodeWorkItem) per block: 64 heads of one sequence over
// its cached positions [kv_begin, kv_end) in tiles of 64, double-buffered with
// cp.async, on warpgroup MMAs (wgmma) from shared memory. Two warpgroups; per
// tile:
//   S = Q K^T  warpgroup wg scores positions 32 wg + [0, 32) for all 64 heads:
//              36 wgmma m64n32k16 (Q and K from shared memory);
//   softmax    online, base 2; the row maxima of both halves meet in shared
//              memory, each warpgroup keeps the softmax sums of its positions;
//   O += P V   P (BF16, all 64 positions) through shared memory; warpgroup wg
//              owns output columns 256 wg + [0, 256): 4 wgmma m64n256k16 with
//              V, the kv_lora columns of the same cached rows, MN-major.
// The mma.sync kernel (mla_decode_mma.cu) at 32 heads per block is bound by
// issuing ldmatrix and mma.sync (about 1100 MMAs per tile) at 8 warps per SM;
// here a tile is 40 wgmma per warpgroup, and each cache tile serves 64 heads.
// How the cache tiles are staged (kTma: MlaDecodeParams.copy kBulk):
//   false  tile i + 1's 18 cp.async a thread go out between tile i's score
//          mmas, into the no-swizzle layout;
//   true   one thread requests tile i + 1 (a whole 64-token page: 9 TMA
//          tensor copies, cache_map, 128-byte swizzle) as soon as tile i has
//          landed and the other stage is free, so the copy has all of tile
//          i's mmas and softmax to land in, and the warps issue no copy
//          instructions. Rows past kv_end of the last page are zeroed once
//          it lands. Not yet measured on a GPU.
// Three barriers per tile. Positions past kv_end are zero-filled and score
// -inf, as in the mma.sync kernel, and the result goes to out_latent (BF16)
// or the item's partial slot (FP32 normalised, plus the base-2 log-sum-exp),
// which with p.merge_counters the split's last item merges.
template <bool kTma>
__global__ void __launch_bounds__(kThreads, 1)
    MlaDecodeWgmmaKernel(MlaDecodeParams p, const __grid_constant__ CUtensorMap cache_map) {
  MLA_DYNAMIC_SHARED(smem_raw);
  unsigned char* smem = smem_raw;
  if constexpr (kTma) smem = AlignToAtom(smem_raw);
  const uint32_t q_addr = SharedAddress(smem);
  const uint32_t bar_addr = q_addr + kBarOffset;  // kTma: stage s's mbarrier at bar_addr + 8 s
  const uint32_t kv_addr = q_addr + kMatBytes;  // stage s at kv_addr + s * kMatBytes
  const uint32_t p_addr = kv_addr + 2 * kMatBytes;
  float* red = reinterpret_cast<float*>(smem + 3 * kMatBytes + kPBytes);  // [kWarpGroups][kRows]

  // Programmatic dependent launch (p.pdl): let the next kernel's blocks be
  // scheduled now, ask L2 for the item's first tiles while the kernel ahead
  // finishes, and read nothing the kernels ahead wrote before they end.
  TraceStart(p);
  GridDependentsLaunch();
  if (p.pdl && threadIdx.x == 0) PrefetchItemStartL2(p, kLatent);
  GridDependencyWait();
  TraceStamp(p, kTraceReadyClk);
  const MlaDecodeWorkItem item = p.work_items[blockIdx.x];
  const int wg = threadIdx.x / 128, wt = threadIdx.x % 128;  // warpgroup, thread in it
  const int w = wt / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int r0 = 16 * w + g, r1 = r0 + 8;  // this thread's accumulator rows (heads)
  const int heads_here = min(kRows, p.num_heads - item.head_begin);

  // Staging a matrix of 64 rows (Q, a cache tile): thread i copies row i / 4's
  // 16-byte pieces i % 4 + 4 j, j < 18. Its shared-memory address steps by
  // 512 bytes a piece and its source by 64, so the unrolled loop is one
  // cp.async and two adds a piece (the first version walked the layout's
  // order and spent about 30 instructions a piece on divisions and branches).
  // A warp's 32 pieces are 4 consecutive pieces of 8 rows: 512 contiguous
  // bytes of shared memory (no bank conflicts) from 8 runs of 64 bytes.
  constexpr int kPieces = kChunks / 4;  // per thread: 18
  const int my_row = threadIdx.x / 4, my_piece = threadIdx.x % 4;
  const uint32_t my_offset = (my_row / 8) * kGroupBytes + my_piece * 128 + (my_row % 8) * 16;
  static_assert(kThreads == kRows * 4 && kRows == kTile, "a thread per (row, piece mod 4)");

  // Q rows: q_latent (pieces < 64) then q_pe (64..71) of each head; rows past
  // the last head are zero.
  {
    const bool valid = my_row < heads_here;
    const int64_t qh = static_cast<int64_t>(item.seq) * p.num_heads + item.head_begin + (valid ? my_row : 0);
    const bf16* lat = p.q_latent + qh * kKvLora + my_piece * 8;
    const bf16* pe = p.q_pe + qh * kMlaDecodeWgmmaRope + my_piece * 8;
#pragma unroll
    for (int j = 0; j < kPieces; ++j) {
      const bf16* src = j < kKvLora / 32 ? lat + 32 * j : pe + 32 * (j - kKvLora / 32);
      CpAsync16(q_addr + my_offset + 512 * j, src, valid ? 16 : 0);
    }
  }

  const int32_t* table = p.block_tables + static_cast<int64_t>(item.seq) * p.max_blocks_per_seq;
  // A cache tile: this thread's row is one block-table entry (any block size;
  // -1 past kv_end, where the row is zero-filled and nothing is read), looked
  // up a tile ahead so that its latency hides behind a tile.
  auto row_block = [&](int t) { return t + my_row < item.kv_end ? table[(t + my_row) / p.block_size] : -1; };
  auto row_src = [&](int t, int32_t block) {
    return block < 0 ? p.cache
                     : p.cache + (static_cast<int64_t>(block) * p.block_size + (t + my_row) % p.block_size) * kLatent +
                           my_piece * 8;
  };
  // Piece j of this thread's row of a tile into the stage at `dst` (its row's offset included).
  auto copy_piece = [&](uint32_t dst, const bf16* src, int32_t block, int j) {
    CpAsync16(dst + 512 * j, block >= 0 ? src + 32 * j : src, block >= 0 ? 16 : 0);
  };
  int32_t next_block = -1;  // cp.async: the next tile's entry for this thread's row
  if constexpr (kTma) {
    CpAsyncCommit();  // Q's group
    if (threadIdx.x == 0) {
      InitStageBarriers(bar_addr);
      if (item.kv_begin < item.kv_end) IssueCachePage(&cache_map, kv_addr, bar_addr, table[item.kv_begin / kTile]);
    }
    __syncthreads();  // the barriers are initialised before any thread waits on them
  } else {
    if (item.kv_begin < item.kv_end) {
      const int32_t block = row_block(item.kv_begin);
      const bf16* src = row_src(item.kv_begin, block);
#pragma unroll
      for (int j = 0; j < kPieces; ++j) copy_piece(kv_addr + my_offset, src, block, j);
    }
    CpAsyncCommit();
    next_block = row_block(item.kv_begin + kTile);
  }
  // L2 prefetch (p.prefetch_l2): the tile after the one being staged.
  const bool prefetcher = p.prefetch_l2 && threadIdx.x == 0;
  if (prefetcher) {
    PrefetchPositionsL2(p, table, kLatent, min(item.kv_begin + kTile, item.kv_end),
                        min(item.kv_begin + 2 * kTile, item.kv_end));
  }

  // O [64 heads x 256 columns] of this warpgroup (wgmma.cuh's fragment:
  // o[4j + e], column 256 wg + 8j + 2t + (e & 1), row r0 for e < 2 else r1).
  float o[kOutN / 2];
#pragma unroll
  for (int i = 0; i < kOutN / 2; ++i) o[i] = 0.0f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};  // rows r0, r1; l over this warpgroup's positions
  const float scale_log2 = p.scale * 1.4426950408889634f;  // scores in log2 units: exp2 below

  int stage = 0;
  uint32_t phases = 0;  // kTma: bit s, the parity of stage s's next mbarrier phase
  uint32_t tile_wait = 0;  // p.trace: thread 0's cycles in the waits for tiles after the first
  for (int t0 = item.kv_begin; t0 < item.kv_end; t0 += kTile, stage ^= 1) {
    const uint32_t wait_from = TraceClock32(p);
    if constexpr (kTma) {
      // The page in this stage (and on the first tile the query).
      WaitCachePage<kThreads>(item, t0, stage, bar_addr, &phases, smem + kMatBytes + stage * kMatBytes);
    } else {
      CpAsyncWait<0>();
    }
    // cp.async (and WaitCachePage's zeros) write through the generic proxy; wgmma
    // reads through the async proxy: the fence orders this thread's writes
    // before the barrier, after which any warpgroup's wgmma may read them.
    FenceProxyAsync();
    // Tile t0 (and Q) are in; every warpgroup is done with the other stage, P and red.
    __syncthreads();
    TraceTileIn(p, t0 == item.kv_begin, wait_from, &tile_wait);
    const uint32_t kv = kv_addr + stage * kMatBytes;
    if constexpr (kTma) {
      if (threadIdx.x == 0 && t0 + kTile < item.kv_end) {
        IssueCachePage(&cache_map, kv_addr + (stage ^ 1) * kMatBytes, bar_addr + 8 * (stage ^ 1),
                       table[(t0 + kTile) / kTile]);
      }
    }

    // S = Q K^T over this warpgroup's 32 positions: the descriptors step 256
    // bytes (two core matrices, 16 latent values) per k-step (kTma: K steps
    // 32 bytes in a box's rows, then the next box). The next tile's
    // copies go out between the mmas, one after every second (they fill the
    // other stage, which no mma in flight reads): issued all at once, the 18
    // cp.async a thread filled the load/store queue (Nsight Compute on an
    // H200: "LG throttle", the largest stall, 1.7 cycles per instruction).
    const bool load_next = !kTma && t0 + kTile < item.kv_end;
    const int32_t block = next_block;
    if constexpr (!kTma) next_block = row_block(t0 + 2 * kTile);
    const bf16* src = row_src(t0 + kTile, block);
    const uint32_t dst = kv_addr + (stage ^ 1) * kMatBytes + my_offset;
    float s[kScoreN / 2];
    const uint64_t q_desc = WgmmaDesc(q_addr, 128, kGroupBytes);
    const uint64_t k_desc = WgmmaDesc(kv + wg * (kScoreN / 8) * kGroupBytes, 128, kGroupBytes);
    WgmmaFence();
#pragma unroll
    for (int ks = 0; ks < kLatent / 16; ++ks) {
      const uint64_t b_desc =
          kTma ? WgmmaDescSw128(kv + (ks / 4) * kBoxBytes + wg * kScoreN * 128 + (ks % 4) * 32, 1024, 1024)
               : k_desc + (256 >> 4) * ks;
      WgmmaBf16<kScoreN, false, false>(s, q_desc + (256 >> 4) * ks, b_desc, ks > 0);
      if (ks % 2 == 1 && load_next) copy_piece(dst, src, block, ks / 2);
    }
    static_assert(kLatent / 16 == 2 * kPieces, "a piece after every second k-step covers the tile");
    WgmmaCommit();
    CpAsyncCommit();
    if (prefetcher) PrefetchPositionsL2(p, table, kLatent, t0 + 2 * kTile, min(t0 + 3 * kTile, item.kv_end));
    WgmmaWait<0>();
    WgmmaFenceOperand(s);

    // Scale, mask and this warpgroup's row maxima (over a row's 4 lanes).
    // s[4j + e] is at position t0 + 32 wg + 8 j + 2 t + (e & 1).
    const int pos0 = t0 + wg * kScoreN + 2 * t;
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int j = 0; j < kScoreN / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[4 * j + e] = pos0 + 8 * j + (e & 1) < item.kv_end ? s[4 * j + e] * scale_log2 : -INFINITY;
      }
      mx0 = fmaxf(mx0, fmaxf(s[4 * j], s[4 * j + 1]));
      mx1 = fmaxf(mx1, fmaxf(s[4 * j + 2], s[4 * j + 3]));
    }
#pragma unroll
    for (int off = 1; off <= 2; off <<= 1) {
      mx0 = fmaxf(mx0, __shfl_xor_sync(kFullMask, mx0, off));
      mx1 = fmaxf(mx1, __shfl_xor_sync(kFullMask, mx1, off));
    }
    if (t == 0) {
      red[wg * kRows + r0] = mx0;
      red[wg * kRows + r1] = mx1;
    }
    __syncthreads();

    // Tile maxima (every tile holds a valid position: finite), rescale
    // factors, P = 2^(s - m) into shared memory as BF16, and this
    // warpgroup's softmax sums.
    float corr[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = h == 0 ? r0 : r1;
      const float m_new = fmaxf(m_run[h], fmaxf(red[row], red[kRows + row]));
      corr[h] = exp2f(m_run[h] - m_new);  // 0 on the first tile (m_run -inf)
      m_run[h] = m_new;
    }
    float sum0 = 0.0f, sum1 = 0.0f;
    // P's core matrix (row group 2w (+1 for r1), position group 4 wg + j):
    // this lane's pair at byte g * 16 + t * 4 of it.
    unsigned char* p_row = smem + 3 * kMatBytes + (2 * w) * kPGroupBytes + g * 16 + t * 4;
#pragma unroll
    for (int j = 0; j < kScoreN / 8; ++j) {
      const float p0 = exp2f(s[4 * j] - m_run[0]), p1 = exp2f(s[4 * j + 1] - m_run[0]);
      const float p2 = exp2f(s[4 * j + 2] - m_run[1]), p3 = exp2f(s[4 * j + 3] - m_run[1]);
      sum0 += p0 + p1;
      sum1 += p2 + p3;
      unsigned char* cm = p_row + (4 * wg + j) * 128;
      *reinterpret_cast<uint32_t*>(cm) = PackBf16(p0, p1);
      *reinterpret_cast<uint32_t*>(cm + kPGroupBytes) = PackBf16(p2, p3);
    }
#pragma unroll
    for (int off = 1; off <= 2; off <<= 1) {
      sum0 += __shfl_xor_sync(kFullMask, sum0, off);
      sum1 += __shfl_xor_sync(kFullMask, sum1, off);
    }
    l_run[0] = l_run[0] * corr[0] + sum0;
    l_run[1] = l_run[1] * corr[1] + sum1;
#pragma unroll
    for (int j = 0; j < kOutN / 8; ++j) {
      o[4 * j] *= corr[0];
      o[4 * j + 1] *= corr[0];
      o[4 * j + 2] *= corr[1];
      o[4 * j + 3] *= corr[1];
    }
    FenceProxyAsync();  // P's generic-proxy stores before the wgmma that reads them
    __syncthreads();

    // O += P V: k-steps of 16 positions (P: two core matrices along K, 256
    // bytes; V: two row groups, 2 kGroupBytes), this warpgroup's 32 column
    // core matrices starting at piece 32 wg. kTma: V's 16 positions are rows
    // 16 kk of boxes 4 wg .. 4 wg + 3 (2048 bytes a k-step), LBO the next box
    // (the next 64 columns), SBO the next 8 positions.
    const uint64_t p_desc = WgmmaDesc(p_addr, 128, kPGroupBytes);
    const uint64_t v_desc = WgmmaDesc(kv + wg * (kOutN / 8) * 128, kGroupBytes, 128);
    WgmmaFence();
#pragma unroll
    for (int kk = 0; kk < kTile / 16; ++kk) {
      const uint64_t b_desc = kTma ? WgmmaDescSw128(kv + 4 * wg * kBoxBytes + kk * 2048, kBoxBytes, 1024)
                                   : v_desc + ((2 * kGroupBytes) >> 4) * kk;
      WgmmaBf16<kOutN, false, true>(o, p_desc + (256 >> 4) * kk, b_desc, true);
    }
    WgmmaCommit();
    WgmmaWait<0>();
    WgmmaFenceOperand(o);
  }
  TraceLoopEnd(p, tile_wait);
  CpAsyncWait<0>();  // an empty item still has Q in flight

  // Softmax sums: both warpgroups' halves.
  __syncthreads();  // every thread is past its last read of red
  if (t == 0) {
    red[wg * kRows + r0] = l_run[0];
    red[wg * kRows + r1] = l_run[1];
  }
  __syncthreads();
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int row = h == 0 ? r0 : r1;
    if (row >= heads_here) continue;
    const float l = red[row] + red[kRows + row];
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;  // l == 0 only for kv_len 0: zeros
    const int col0 = wg * kOutN + 2 * t;
    if (item.partial < 0) {
      bf16* out =
          p.out_latent + (static_cast<int64_t>(item.seq) * p.num_heads + item.head_begin + row) * kKvLora + col0;
#pragma unroll
      for (int j = 0; j < kOutN / 8; ++j) {
        *reinterpret_cast<__nv_bfloat162*>(out + 8 * j) =
            __floats2bfloat162_rn(o[4 * j + 2 * h] * inv, o[4 * j + 2 * h + 1] * inv);
      }
    } else {
      const int64_t slot_row = static_cast<int64_t>(item.partial) * kRows + row;
      float* out = p.partial_out + slot_row * kKvLora + col0;
#pragma unroll
      for (int j = 0; j < kOutN / 8; ++j) {
        *reinterpret_cast<float2*>(out + 8 * j) = make_float2(o[4 * j + 2 * h] * inv, o[4 * j + 2 * h + 1] * inv);
      }
      if (wg == 0 && t == 0) p.partial_lse[slot_row] = m_run[h] + log2f(l);
    }
  }
  // The last item of a split merges it (p.merge_counters); its flag in the
  // cache stages, read by no one now.
  TraceStamp(p, kTraceWrittenClk);
  MergeIfLastOfSplit<kThreads>(p, item, reinterpret_cast<int*>(smem + kMatBytes));
  TraceEnd(p);
}

template <bool kTma>
cudaError_t Launch(const MlaDecodeParams& p, const CUtensorMap& map, cudaStream_t stream) {
  constexpr size_t kBytes = kTma ? kTmaSharedBytes : kSharedBytes;
  const cudaError_t err = OptIntoDynamicShared<&MlaDecodeWgmmaKernel<kTma>>(static_cast<int>(kBytes));
  if (err != cudaSuccess) return err;
  LaunchKernelPdl(MlaDecodeWgmmaKernel<kTma>, p.num_work_items, kThreads, kBytes, stream, p.pdl, p, map);
  return cudaGetLastError();
}

}  // namespace

bool MlaDecodeWgmmaTakes(int kv_lora, int qk_rope, int heads_per_block) {
  static_assert(kMlaDecodeWgmmaKvLora == 512 && kMlaDecodeWgmmaRope == 64, "MlaDecodeUsesWgmma's shape");
  return MlaDecodeUsesWgmma(kv_lora, qk_rope) && heads_per_block == kMlaDecodeWgmmaHeads;
}

cudaError_t LaunchMlaDecodeWgmma(const MlaDecodeParams& p, cudaStream_t stream) {
  if (!MlaDecodeWgmmaTakes(p.kv_lora, p.qk_rope, p.heads_per_block) || p.num_work_items <= 0) {
    return cudaErrorInvalidValue;
  }
  if (MlaDecodeStagesByTma(p)) {
    CUtensorMap map;
    const cudaError_t err = MlaDecodeCacheMap(p, &map);
    if (err != cudaSuccess) return err;
    return Launch<true>(p, map, stream);
  }
  const CUtensorMap unused{};
  return Launch<false>(p, unused, stream);
}

}  // namespace mla::cuda::detail
