#include "kernels/cuda/mla_decode_wgmma16.cuh"

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
constexpr int kKvLora = 512;
constexpr int kRope = 64;
constexpr int kLatent = kKvLora + kRope;
constexpr int kChunks = kLatent / 8;          // 16-byte pieces of a row: 72
constexpr int kHeads = kMlaDecodeWgmma16Heads;  // heads per work item: the wgmma N of 16
constexpr int kTile = kMlaDecodeTileTokens;   // cached positions per stage: the wgmma M of 64
constexpr int kThreads = 128;                 // one warpgroup
constexpr int kWarps = kThreads / 32;
constexpr int kOutBlocks = kKvLora / 64;      // O^T's 64-row (latent) blocks: 8

// Shared memory in core matrices of 8 rows x 16 bytes (wgmma.cuh), no padding,
// as in the 64-head kernel (mla_decode_wgmma.cu): a matrix of `rows` x
// kLatent (Q, a cache stage) keeps row r's 16-byte piece c at byte
//   (r / 8) * kGroupBytes + c * 128 + (r % 8) * 16.
// As K-major operands along the latent (a stage as A and Q as B of S^T = K
// Q^T) LBO is 128 and SBO kGroupBytes; a stage read as V^T (A of O^T += V^T
// P^T, MN-major: M = latent, K = positions) has LBO kGroupBytes and SBO 128.
constexpr uint32_t kGroupBytes = 128 * kChunks;              // 8 rows: 9216
constexpr uint32_t kQBytes = kGroupBytes * (kHeads / 8);     // 18432
constexpr uint32_t kStageBytes = kGroupBytes * (kTile / 8);  // 73728
// P^T [kTile positions x kHeads heads] as the MN-major B of O^T += V^T P^T:
// element (position k, head n) at (n / 8) * kPHeadBytes + (k / 8) * 128 +
// (k % 8) * 16 + (n % 8) * 2 (LBO 128, SBO kPHeadBytes).
constexpr uint32_t kPHeadBytes = 128 * (kTile / 8);          // 8 heads: 1024
constexpr uint32_t kPBytes = kPHeadBytes * (kHeads / 8);     // 2048
// Per-warp statistics (tile maxima, then the softmax sums): [kWarps][kHeads] floats.
constexpr uint32_t kRedBytes = sizeof(float) * kWarps * kHeads;
constexpr uint32_t kPOffset = kQBytes + 2 * kStageBytes;
constexpr size_t kSharedBytes = kPOffset + kPBytes + kRedBytes;  // 168192
static_assert(kSharedBytes <= 227 * 1024, "query, two stages, P and the statistics fit sm_90's 227 KiB");
// Staged by TMA (kTma: MlaDecodeCopy::kBulk): a stage is mla_decode_tma.cuh's
// 9 boxes of 64 positions x 64 latent values (128-byte swizzled); then two
// mbarriers, one a stage; and 1 KiB of slack to align the stages' 1024-byte
// atoms (the query before them is 18 KiB).
constexpr uint32_t kBoxBytes = kTmaBoxBytes;
static_assert(kTmaStageBytes == kStageBytes && kQBytes % 1024 == 0, "boxes tile the stage, 1024-aligned");
constexpr uint32_t kBarOffset = static_cast<uint32_t>(kSharedBytes);  // a multiple of 8
constexpr size_t kTmaSharedBytes = kSharedBytes + kTmaSharedExtraBytes;
static_assert(kTile == 64 && kHeads == 16 && kChunks == 72, "the layouts below assume DeepSeek-V3's shape");

// One work item (MlaDecodeWorkItem) per block: 16 heads of one sequence over
// its cached positions [kv_begin, kv_end) in tiles of 64, double-buffered with
// cp.async, on warpgroup MMAs (wgmma) from shared memory. At 16 heads the
// 64-head kernel wastes 48 of its 64 rows and holds a 72 KiB query; here the
// positions are the M of every mma, so the query is 18 KiB and nothing is
// padded. One warpgroup; per tile:
//   S^T = K Q^T   36 wgmma m64n16k16: A the stage (64 positions, K-major),
//                 B the query (16 heads, K-major);
//   softmax       online, base 2, per head (a column of S^T): maxima over a
//                 warp's 16 positions by shuffles, over the 4 warps through
//                 shared memory; P^T to shared memory as BF16;
//   O^T += V^T P^T  32 wgmma m64n16k16 (8 blocks of 64 latent rows x 4
//                 k-steps of 16 positions): A the same stage read MN-major,
//                 B P^T; O^T is 64 FP32 registers a thread.
// How the cache tiles are staged (kTma: MlaDecodeParams.copy kBulk):
//   false  16-byte cp.async from every thread into the no-swizzle layout;
//   true   one thread issues a tile's 9 TMA tensor copies (cache_map: the
//          cache as [rows, 576] BF16, 64 x 64 boxes, 128-byte swizzle) on
//          the stage's mbarrier; a tile is one 64-token page. Rows past
//          kv_end of the last page are zeroed once it lands (the page's
//          stale values could be NaN, and 0 x NaN is NaN).
// When the cache tiles are requested (kAhead: MlaDecodeParams.issue_ahead):
//   false  tile i + 1's 36 cp.async a thread go out one after each of tile
//          i's score mmas (the 64-head kernel's lesson: in one burst they
//          fill the load/store queue); one tile in flight while waiting;
//   true   tile i + 2's go out in one burst as soon as every warp's P V of
//          tile i is done with its stage, before the wait for tile i + 1:
//          two tiles in flight while waiting, for a fourth barrier a tile.
// Three barriers per tile (four with kAhead). Positions past kv_end are
// zero-filled and score -inf; the result goes to out_latent (BF16) or the
// item's partial slot (FP32 normalised, plus the base-2 log-sum-exp), as in
// the other decode kernels (and the split's last item merges, with
// p.merge_counters).
template <bool kAhead, bool kTma>
__global__ void __launch_bounds__(kThreads, 1)
    MlaDecodeWgmma16Kernel(MlaDecodeParams p, const __grid_constant__ CUtensorMap cache_map) {
  MLA_DYNAMIC_SHARED(smem_raw);
  unsigned char* smem = smem_raw;
  if constexpr (kTma) smem = AlignToAtom(smem_raw);
  const uint32_t q_addr = SharedAddress(smem);
  const uint32_t bar_addr = q_addr + kBarOffset;  // kTma: stage s's mbarrier at bar_addr + 8 s
  const uint32_t kv_addr = q_addr + kQBytes;  // stage s at kv_addr + s * kStageBytes
  const uint32_t p_addr = q_addr + kPOffset;
  unsigned char* p_smem = smem + kPOffset;
  float* red = reinterpret_cast<float*>(smem + kPOffset + kPBytes);  // [kWarps][kHeads]

  // Programmatic dependent launch (p.pdl), as in the other decode kernels.
  TraceStart(p);
  GridDependentsLaunch();
  if (p.pdl && threadIdx.x == 0) PrefetchItemStartL2(p, kLatent);
  GridDependencyWait();
  TraceStamp(p, kTraceReadyClk);
  const MlaDecodeWorkItem item = p.work_items[blockIdx.x];
  const int w = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int heads_here = min(kHeads, p.num_heads - item.head_begin);
  // This thread's 4 heads (accumulator columns): slot hs = 2 j + c is head
  // 8 j + 2 t + c, in d[4 j + c] and d[4 j + 2 + c] of an m64n16 fragment.
  auto head_of = [&](int hs) { return 8 * (hs / 2) + 2 * t + hs % 2; };

  // The query: 16 rows x 72 pieces, 9 a thread. Thread i copies row (i / 4) %
  // 16's pieces i % 4 + 4 (i / 64) + 8 q, q < 9: a warp's 32 pieces are 4
  // consecutive pieces of 8 rows, 512 contiguous bytes of shared memory.
  // Pieces < 64 come from q_latent, the rest from q_pe; rows past the last
  // head are zero.
  {
    const int row = (threadIdx.x / 4) % kHeads, piece0 = threadIdx.x % 4 + 4 * (threadIdx.x / 64);
    const bool valid = row < heads_here;
    const int64_t qh = static_cast<int64_t>(item.seq) * p.num_heads + item.head_begin + (valid ? row : 0);
    const uint32_t row_offset = (row / 8) * kGroupBytes + (row % 8) * 16;
#pragma unroll
    for (int q = 0; q < kChunks / 8; ++q) {
      const int piece = piece0 + 8 * q;
      const bf16* src = piece < kKvLora / 8 ? p.q_latent + qh * kKvLora + piece * 8
                                            : p.q_pe + qh * kRope + (piece - kKvLora / 8) * 8;
      CpAsync16(q_addr + row_offset + piece * 128, src, valid ? 16 : 0);
    }
  }

  // A cache tile: thread i copies rows my_row and my_row + 32, pieces my_piece
  // + 4 j, j < 18 each (a warp: 4 consecutive pieces of 8 rows, as for Q).
  // Each row's block-table entry (-1 past kv_end: the row is zero-filled and
  // nothing is read) is looked up a tile before its copies go out.
  constexpr int kPieces = kChunks / 4;  // per row: 18
  const int my_row = threadIdx.x / 4, my_piece = threadIdx.x % 4;
  const uint32_t my_offset = (my_row / 8) * kGroupBytes + my_piece * 128 + (my_row % 8) * 16;
  static_assert(kThreads / 4 * 2 == kTile, "two rows a thread");
  const int32_t* table = p.block_tables + static_cast<int64_t>(item.seq) * p.max_blocks_per_seq;
  auto row_block = [&](int t0, int half) {
    const int pos = t0 + my_row + 32 * half;
    return pos < item.kv_end ? table[pos / p.block_size] : -1;
  };
  auto row_src = [&](int t0, int half, int32_t block) {
    const int pos = t0 + my_row + 32 * half;
    return block < 0 ? p.cache
                     : p.cache + (static_cast<int64_t>(block) * p.block_size + pos % p.block_size) * kLatent +
                           my_piece * 8;
  };
  // Piece j of this thread's row `half` of a tile into the stage at `stage_addr`.
  auto copy_piece = [&](uint32_t stage_addr, const bf16* src, int32_t block, int half, int j) {
    CpAsync16(stage_addr + my_offset + half * 4 * kGroupBytes + 512 * j, block >= 0 ? src + 32 * j : src,
              block >= 0 ? 16 : 0);
  };
  // The whole tile at t0 (whose rows' entries are `block`) into a stage, in one burst.
  auto copy_tile = [&](uint32_t stage_addr, int t0, const int32_t (&block)[2]) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const bf16* src = row_src(t0, half, block[half]);
#pragma unroll
      for (int j = 0; j < kPieces; ++j) copy_piece(stage_addr, src, block[half], half, j);
    }
  };
  auto lookup = [&](int t0, int32_t (&block)[2]) {
    block[0] = row_block(t0, 0);
    block[1] = row_block(t0, 1);
  };
  // kTma: tile t0 (a whole page) into `stage` by one thread, on the stage's mbarrier.
  auto issue_tile = [&](int stage, int t0) {
    IssueCachePage(&cache_map, kv_addr + stage * kStageBytes, bar_addr + 8 * stage, table[t0 / kTile]);
  };
  int32_t next_block[2] = {-1, -1};
  if constexpr (kTma) {
    CpAsyncCommit();  // Q's group
    if (threadIdx.x == 0) {
      InitStageBarriers(bar_addr);
      if (item.kv_begin < item.kv_end) issue_tile(0, item.kv_begin);
      if (kAhead && item.kv_begin + kTile < item.kv_end) issue_tile(1, item.kv_begin + kTile);
    }
    __syncthreads();  // the barriers are initialised before any thread waits on them
  } else {
    // Tile 0 with Q in the first group; with kAhead tile 1 in a second (empty
    // past kv_end: a group a tile keeps CpAsyncWait<1> counting right).
    lookup(item.kv_begin, next_block);
    if (item.kv_begin < item.kv_end) copy_tile(kv_addr, item.kv_begin, next_block);
    CpAsyncCommit();
    lookup(item.kv_begin + kTile, next_block);
    if constexpr (kAhead) {
      if (item.kv_begin + kTile < item.kv_end) copy_tile(kv_addr + kStageBytes, item.kv_begin + kTile, next_block);
      CpAsyncCommit();
      lookup(item.kv_begin + 2 * kTile, next_block);
    }
  }
  // L2 prefetch (p.prefetch_l2): the tile after the last one requested.
  const int ahead = kAhead ? 2 * kTile : kTile;
  const bool prefetcher = p.prefetch_l2 && threadIdx.x == 0;
  if (prefetcher) {
    PrefetchPositionsL2(p, table, kLatent, min(item.kv_begin + ahead, item.kv_end),
                        min(item.kv_begin + ahead + kTile, item.kv_end));
  }

  // O^T [512 latent x 16 heads]: block mb's fragment o[mb][4 j + e] is latent
  // row 64 mb + 16 w + g (+ 8 for e >= 2), head 8 j + 2 t + e % 2.
  float o[kOutBlocks][8];
#pragma unroll
  for (int mb = 0; mb < kOutBlocks; ++mb) {
#pragma unroll
    for (int i = 0; i < 8; ++i) o[mb][i] = 0.0f;
  }
  // Per head slot: the running maximum (the same in every thread of the
  // block) and this thread's share of the softmax sum (its 2 positions a tile).
  float m_run[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY}, l_part[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  const float scale_log2 = p.scale * 1.4426950408889634f;  // scores in log2 units: exp2 below

  int stage = 0;
  uint32_t phases = 0;  // kTma: bit s, the parity of stage s's next mbarrier phase
  uint32_t tile_wait = 0;  // p.trace: thread 0's cycles in the waits for tiles after the first
  for (int t0 = item.kv_begin; t0 < item.kv_end; t0 += kTile, stage ^= 1) {
    const uint32_t wait_from = TraceClock32(p);
    if constexpr (kTma) {
      // The page in this stage (and on the first tile the query).
      WaitCachePage<kThreads>(item, t0, stage, bar_addr, &phases, smem + kQBytes + stage * kStageBytes);
    } else {
      CpAsyncWait<kAhead ? 1 : 0>();  // kAhead: tile t0 + kTile's group stays in flight
    }
    // cp.async (and WaitCachePage's zeros) write through the generic proxy, wgmma
    // reads through the async proxy: this thread's writes are ordered before
    // the barrier.
    FenceProxyAsync();
    // Tile t0 (and Q) are in; the last V^T P^T mma (which read the other
    // stage and P^T) and every read of red are done.
    __syncthreads();
    TraceTileIn(p, t0 == item.kv_begin, wait_from, &tile_wait);
    const uint32_t kv = kv_addr + stage * kStageBytes;
    if constexpr (kTma && !kAhead) {
      if (threadIdx.x == 0 && t0 + kTile < item.kv_end) issue_tile(stage ^ 1, t0 + kTile);  // the other stage is free
    }

    // S^T = K Q^T: the descriptors step 16 latent values a k-step (no
    // swizzle: 256 bytes; kTma: 32 bytes in a box's rows, then the next box).
    const bool load_next = !kTma && !kAhead && t0 + kTile < item.kv_end;
    const int32_t block[2] = {next_block[0], next_block[1]};
    if constexpr (!kAhead && !kTma) lookup(t0 + 2 * kTile, next_block);
    const bf16* src[2] = {row_src(t0 + kTile, 0, block[0]), row_src(t0 + kTile, 1, block[1])};
    const uint32_t next_stage = kv_addr + (stage ^ 1) * kStageBytes;
    float s[8];
    const uint64_t k_desc = WgmmaDesc(kv, 128, kGroupBytes);
    const uint64_t q_desc = WgmmaDesc(q_addr, 128, kGroupBytes);
    WgmmaFence();
#pragma unroll
    for (int ks = 0; ks < kLatent / 16; ++ks) {
      const uint64_t a_desc = kTma ? WgmmaDescSw128(kv + (ks / 4) * kBoxBytes + (ks % 4) * 32, 1024, 1024)
                                   : k_desc + (256 >> 4) * ks;
      WgmmaBf16<kHeads, false, false>(s, a_desc, q_desc + (256 >> 4) * ks, ks > 0);
      if (load_next) copy_piece(next_stage, src[ks % 2], block[ks % 2], ks % 2, ks / 2);
    }
    static_assert(kLatent / 16 == 2 * kPieces, "a piece after every k-step covers the tile");
    WgmmaCommit();
    if constexpr (!kAhead) {
      CpAsyncCommit();
      if (prefetcher) PrefetchPositionsL2(p, table, kLatent, t0 + 2 * kTile, min(t0 + 3 * kTile, item.kv_end));
    }
    WgmmaWait<0>();
    WgmmaFenceOperand(s);

    // Scale, mask, and the tile's maxima per head: s[4 j + e] is position t0 +
    // 16 w + g (+ 8 for e >= 2), head slot 2 j + e % 2. Over this thread's 2
    // positions, the warp's 8 row groups (lanes g), then the 4 warps.
    const int pos0 = t0 + 16 * w + g;
    float mx[4];
#pragma unroll
    for (int e = 0; e < 8; ++e) s[e] = pos0 + ((e % 4) >= 2 ? 8 : 0) < item.kv_end ? s[e] * scale_log2 : -INFINITY;
#pragma unroll
    for (int hs = 0; hs < 4; ++hs) {
      const int j = hs / 2, c = hs % 2;
      mx[hs] = fmaxf(s[4 * j + c], s[4 * j + 2 + c]);
#pragma unroll
      for (int off = 4; off < 32; off <<= 1) mx[hs] = fmaxf(mx[hs], __shfl_xor_sync(kFullMask, mx[hs], off));
      if (g == 0) red[w * kHeads + head_of(hs)] = mx[hs];
    }
    __syncthreads();

    // New maxima (every tile holds a valid position: finite), rescale
    // factors, P^T = 2^(s - m) as BF16 (a pair of heads a 32-bit store) and
    // this thread's share of the sums.
    float corr[4];
#pragma unroll
    for (int hs = 0; hs < 4; ++hs) {
      float m_new = m_run[hs];
#pragma unroll
      for (int ww = 0; ww < kWarps; ++ww) m_new = fmaxf(m_new, red[ww * kHeads + head_of(hs)]);
      corr[hs] = exp2f(m_run[hs] - m_new);  // 0 on the first tile (m_run -inf)
      m_run[hs] = m_new;
    }
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const float p0 = exp2f(s[4 * j] - m_run[2 * j]), p1 = exp2f(s[4 * j + 1] - m_run[2 * j + 1]);
      const float p2 = exp2f(s[4 * j + 2] - m_run[2 * j]), p3 = exp2f(s[4 * j + 3] - m_run[2 * j + 1]);
      l_part[2 * j] = l_part[2 * j] * corr[2 * j] + p0 + p2;
      l_part[2 * j + 1] = l_part[2 * j + 1] * corr[2 * j + 1] + p1 + p3;
      // Positions 16 w + g and + 8: core matrices 2 w and 2 w + 1 along K.
      unsigned char* cm = p_smem + j * kPHeadBytes + (2 * w) * 128 + g * 16 + t * 4;
      *reinterpret_cast<uint32_t*>(cm) = PackBf16(p0, p1);
      *reinterpret_cast<uint32_t*>(cm + 128) = PackBf16(p2, p3);
    }
#pragma unroll
    for (int mb = 0; mb < kOutBlocks; ++mb) {
#pragma unroll
      for (int e = 0; e < 8; ++e) o[mb][e] *= corr[2 * (e / 4) + e % 2];
    }
    FenceProxyAsync();  // P^T's generic-proxy stores before the wgmma that reads them
    __syncthreads();

    // O^T += V^T P^T: k-steps of 16 positions (V^T: two row groups of the
    // stage, 2 kGroupBytes, or with kTma 16 rows of a box, 2048 bytes; P^T:
    // two core matrices, 256 bytes), latent block mb at piece 8 mb (1024
    // bytes; kTma: box mb). k-steps outside: the 8 mmas in a row write
    // different accumulators.
    const uint64_t v_desc = WgmmaDesc(kv, kGroupBytes, 128);
    const uint64_t pt_desc = WgmmaDesc(p_addr, 128, kPHeadBytes);
    WgmmaFence();
#pragma unroll
    for (int kk = 0; kk < kTile / 16; ++kk) {
#pragma unroll
      for (int mb = 0; mb < kOutBlocks; ++mb) {
        const uint64_t a_desc = kTma ? WgmmaDescSw128(kv + mb * kBoxBytes + kk * 2048, 1024, 1024)
                                     : v_desc + ((mb * 1024 + kk * 2 * kGroupBytes) >> 4);
        WgmmaBf16<kHeads, true, true>(o[mb], a_desc, pt_desc + ((kk * 256) >> 4), true);
      }
    }
    WgmmaCommit();
    WgmmaWait<0>();
#pragma unroll
    for (int mb = 0; mb < kOutBlocks; ++mb) WgmmaFenceOperand(o[mb]);
    if constexpr (kAhead) {
      // Every warp's mmas are done with this stage (each warp's part of an
      // mma reads its own rows of V^T): tile t0 + 2 kTile may fill it.
      __syncthreads();
      if constexpr (kTma) {
        if (threadIdx.x == 0 && t0 + 2 * kTile < item.kv_end) issue_tile(stage, t0 + 2 * kTile);
      } else {
        if (t0 + 2 * kTile < item.kv_end) copy_tile(kv, t0 + 2 * kTile, block);
        CpAsyncCommit();
        lookup(t0 + 3 * kTile, next_block);
      }
      if (prefetcher) PrefetchPositionsL2(p, table, kLatent, t0 + 3 * kTile, min(t0 + 4 * kTile, item.kv_end));
    }
  }
  TraceLoopEnd(p, tile_wait);
  CpAsyncWait<0>();  // an empty item still has Q in flight

  // Softmax sums: over the warp's row groups, then the 4 warps.
  float l[4];
#pragma unroll
  for (int hs = 0; hs < 4; ++hs) {
    l[hs] = l_part[hs];
#pragma unroll
    for (int off = 4; off < 32; off <<= 1) l[hs] += __shfl_xor_sync(kFullMask, l[hs], off);
  }
  __syncthreads();  // every thread is past its last read of red
  if (g == 0) {
#pragma unroll
    for (int hs = 0; hs < 4; ++hs) red[w * kHeads + head_of(hs)] = l[hs];
  }
  __syncthreads();
#pragma unroll
  for (int hs = 0; hs < 4; ++hs) {
    const int head = head_of(hs);
    if (head >= heads_here) continue;
    float sum = 0.0f;
#pragma unroll
    for (int ww = 0; ww < kWarps; ++ww) sum += red[ww * kHeads + head];
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;  // sum == 0 only for kv_len 0: zeros
    const int j = hs / 2, c = hs % 2;
    if (item.partial < 0) {
      bf16* out = p.out_latent + (static_cast<int64_t>(item.seq) * p.num_heads + item.head_begin + head) * kKvLora;
#pragma unroll
      for (int mb = 0; mb < kOutBlocks; ++mb) {
        const int r = 64 * mb + 16 * w + g;
        out[r] = __float2bfloat16_rn(o[mb][4 * j + c] * inv);
        out[r + 8] = __float2bfloat16_rn(o[mb][4 * j + 2 + c] * inv);
      }
    } else {
      const int64_t slot_row = static_cast<int64_t>(item.partial) * kHeads + head;
      float* out = p.partial_out + slot_row * kKvLora;
#pragma unroll
      for (int mb = 0; mb < kOutBlocks; ++mb) {
        const int r = 64 * mb + 16 * w + g;
        out[r] = o[mb][4 * j + c] * inv;
        out[r + 8] = o[mb][4 * j + 2 + c] * inv;
      }
      if (w == 0 && g == 0) p.partial_lse[slot_row] = m_run[hs] + log2f(sum);
    }
  }
  // The last item of a split merges it (p.merge_counters); its flag in the
  // cache stages (every copy into them has landed), read by no one now.
  TraceStamp(p, kTraceWrittenClk);
  MergeIfLastOfSplit<kThreads>(p, item, reinterpret_cast<int*>(smem + kQBytes));
  TraceEnd(p);
}

template <bool kAhead, bool kTma>
cudaError_t Launch(const MlaDecodeParams& p, const CUtensorMap& map, cudaStream_t stream) {
  constexpr size_t kBytes = kTma ? kTmaSharedBytes : kSharedBytes;
  const cudaError_t err = OptIntoDynamicShared<&MlaDecodeWgmma16Kernel<kAhead, kTma>>(static_cast<int>(kBytes));
  if (err != cudaSuccess) return err;
  LaunchKernelPdl(MlaDecodeWgmma16Kernel<kAhead, kTma>, p.num_work_items, kThreads, kBytes, stream, p.pdl, p, map);
  return cudaGetLastError();
}

}  // namespace

bool MlaDecodeWgmma16Takes(int kv_lora, int qk_rope, int heads_per_block, MlaDecodeMma mma) {
  return mma == MlaDecodeMma::kWarpgroup && kv_lora == kKvLora && qk_rope == kRope &&
         heads_per_block == kHeads && MlaDecodeUsesWgmma(kv_lora, qk_rope);
}

cudaError_t LaunchMlaDecodeWgmma16(const MlaDecodeParams& p, cudaStream_t stream) {
  if (!MlaDecodeWgmma16Takes(p.kv_lora, p.qk_rope, p.heads_per_block, p.mma) || p.num_work_items <= 0) {
    return cudaErrorInvalidValue;
  }
  // TMA staging (MlaDecodeCopy::kBulk) where a tile is one page.
  if (MlaDecodeStagesByTma(p)) {
    CUtensorMap map;
    const cudaError_t err = MlaDecodeCacheMap(p, &map);
    if (err != cudaSuccess) return err;
    return p.issue_ahead ? Launch<true, true>(p, map, stream) : Launch<false, true>(p, map, stream);
  }
  const CUtensorMap unused{};
  return p.issue_ahead ? Launch<true, false>(p, unused, stream) : Launch<false, false>(p, unused, stream);
}

}  // namespace mla::cuda::detail
