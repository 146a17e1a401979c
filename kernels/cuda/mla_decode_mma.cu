#include "kernels/cuda/mla_decode_mma.cuh"

#include <cuda_bf16.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/kernel_span.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/mla_decode_merge.cuh"
#include "kernels/cuda/mla_decode_prefetch.cuh"
#include "kernels/cuda/mla_decode_trace.cuh"
#include "kernels/cuda/mla_decode_wgmma.cuh"
#include "kernels/cuda/mla_decode_wgmma16.cuh"
#include "kernels/cuda/warp_mma.cuh"

namespace mla::cuda::detail {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kTokenGroups = 4;  // of 16 positions per tile; two warps (k halves) each
constexpr int kTile = kMlaDecodeTileTokens;  // cached positions per stage
// Shared-memory rows are padded by 8 BF16 (16 bytes): with latent % 16 == 0
// the row pitch is an odd number of 16-byte units, so the 8 row addresses of
// an ldmatrix fall in different banks.
constexpr int kPad = 8;
constexpr int kPStride = kTile + kPad;  // BF16 per probability row
constexpr int kMaxColTiles = 8;         // output tiles of 8 columns per warp: kv_lora <= 8 warps x 64
constexpr size_t kMaxSharedBytes = 227 * 1024;  // opt-in limit per block on sm_90
// The query-in-registers variant: warps split a tile as 2 token halves (32
// positions, 4 MMA n-tiles) x 4 k-quarters, each warp holding its quarter of
// the query as MMA fragments for the whole item; the softmax then works in 8
// groups of 8 positions, one per warp.
constexpr int kQuarters = 4;
constexpr int kMaxQuarterSteps = 10;  // k-steps of 16 per quarter: latent <= 640
constexpr int kFineGroups = kWarps;   // softmax groups of 8 positions
constexpr size_t kBarBytes = 16;      // two 8-byte mbarriers, one per stage (bulk copies)

// Bytes of the first region of a work item's shared memory: the query rows;
// with the query in registers (staged there for the fragments, then dead) also
// the four k-quarters' partial scores [kWarps][MT][4 n][32 lanes] float4s that
// take their place: the larger of the two.
__host__ __device__ size_t QueryRegionBytes(int latent, int heads_per_block, bool query_in_registers) {
  const size_t q_bytes = sizeof(bf16) * heads_per_block * (static_cast<size_t>(latent) + kPad);
  const size_t partial_bytes = sizeof(float) * kWarps * (heads_per_block / 16) * 16 * 32;
  return query_in_registers && partial_bytes > q_bytes ? partial_bytes : q_bytes;
}

// Dynamic shared memory of one work item (bytes): the two stages' mbarriers
// (bulk copies; kBarBytes either way, so the layout is one), the query
// region, two stages of kMlaDecodeTileTokens cache rows, the BF16
// probabilities, the row statistics of the position groups (4, or 8 with the
// query in registers) and, with the query in shared memory, the score
// hand-over between k halves.
size_t MlaDecodeMmaSharedBytes(int latent, int heads_per_block, bool query_in_registers) {
  const size_t stride = static_cast<size_t>(latent) + kPad;
  const size_t rows = static_cast<size_t>(heads_per_block);
  const size_t stats =
      query_in_registers ? kFineGroups * rows : kTokenGroups * rows + kTokenGroups * (rows / 16) * 8 * 32;
  return kBarBytes + QueryRegionBytes(latent, heads_per_block, query_in_registers) +
         sizeof(bf16) * (2 * kTile * stride + rows * kPStride) + sizeof(float) * stats;
}

// One work item (MlaDecodeWorkItem) per block: 16 * MT heads of one sequence
// over its cached positions [kv_begin, kv_end), in tiles of 64 positions,
// double-buffered with cp.async. Per tile:
//   S = Q K^T   [16 MT heads x 64 positions], K = the cached rows (kv_lora
//               and rope parts alike). Query in shared memory (kQRegs
//               false): warp w takes positions 16 (w % 4) + [0, 16) over half
//               (w / 4) of the latent's k-steps, and the upper half hands its
//               partial sums over through shared memory; each Q fragment is
//               read from shared memory every tile and serves two MMAs.
//               Query in registers (kQRegs, the default): warp w takes
//               positions 32 (w % 2) + [0, 32) over quarter w / 2 of the
//               k-steps with its Q fragments loaded once per item; the four
//               quarters' partial sums meet in shared memory, where warp w
//               sums positions 8 w + [0, 8). On an H200 neither is bound by
//               shared memory or the MMAs: the kernel is issue- and
//               latency-bound at 8 warps per SM (bench/RESULTS.md).
//   online softmax in base 2: row maxima across the position groups through
//               shared memory; the warps holding a group's scores keep its
//               softmax sums.
//   O += P V    [16 MT x kv_lora]: P (BF16) through shared memory, V = the
//               kv_lora columns of the same cached rows; warp w owns output
//               columns [64w, 64w + 64) (fewer for small kv_lora).
// Four barriers per tile. Positions past kv_end are zero-filled in shared
// memory (never read from the cache: NaN there must not reach 0 * NaN) and
// score -inf. The result goes to out_latent (BF16) for a whole sequence, or
// to its partial slot (FP32, normalised, plus the base-2 log-sum-exp), which
// with p.merge_counters the split's last item merges (mla_decode_merge.cuh).
template <int MT, bool kQRegs, bool kBulk>
__global__ void __launch_bounds__(kThreads, 1) MlaDecodeMmaKernel(MlaDecodeParams p) {
  constexpr int kRows = 16 * MT;
  constexpr int kGroups = kQRegs ? kFineGroups : kTokenGroups;  // softmax position groups (red's columns)
  MLA_DYNAMIC_SHARED(smem_bars);
  const uint32_t bars = SharedAddress(smem_bars);  // stage s's mbarrier at bars + 8 s (bulk copies)
  unsigned char* smem_raw = smem_bars + kBarBytes;
  const int latent = p.kv_lora + p.qk_rope;
  const int stride = latent + kPad;  // BF16 per cached / query row in shared memory
  bf16* q_s = reinterpret_cast<bf16*>(smem_raw);  // [kRows, stride]
  // Query in registers: q_s is dead once the fragments are loaded, and the
  // quarters' partial scores [kWarps][MT][4 n][32 lanes] float4s take its place.
  bf16* kv_s = reinterpret_cast<bf16*>(smem_raw + QueryRegionBytes(latent, kRows, kQRegs));  // [2, kTile, stride]
  bf16* p_s = kv_s + 2 * kTile * stride;                      // [kRows, kPStride]
  // Row statistics [kRows, kGroups]: a row's groups are read as float4s.
  float* red = reinterpret_cast<float*>(p_s + kRows * kPStride);
  // Partial scores, a lane's four of an n-tile as one float4: query in shared
  // memory [kTokenGroups, MT, 2 n, 32 lanes]; in registers [kWarps, MT, 4 n,
  // 32 lanes] over q_s. (Every region is a multiple of 16 bytes: aligned.)
  float4* sx4 = reinterpret_cast<float4*>(kQRegs ? reinterpret_cast<float*>(smem_raw) : red + kGroups * kRows);

  // Programmatic dependent launch (p.pdl): let the next kernel's blocks be
  // scheduled now, ask L2 for the item's first tiles while the kernel ahead
  // finishes, and read nothing the kernels ahead wrote before they end.
  TraceStart(p);
  GridDependentsLaunch();
  if (p.pdl && threadIdx.x == 0) PrefetchItemStartL2(p, latent);
  GridDependencyWait();
  TraceStamp(p, kTraceReadyClk);
  const MlaDecodeWorkItem item = p.work_items[blockIdx.x];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const int tg = warp % kTokenGroups, kh = warp / kTokenGroups;  // token group, k half (query in shared memory)
  const int th = warp & 1, kq = warp >> 1;                         // token half, k quarter (query in registers)
  const int heads_here = min(kRows, p.num_heads - item.head_begin);
  const int chunks = latent / 8;  // 16-byte pieces of a row
  const int kv_chunks = p.kv_lora / 8;

  // Q rows: q_latent then q_pe of each head; rows past the last head are zero.
  for (int c = threadIdx.x; c < kRows * chunks; c += kThreads) {
    const int r = c / chunks, k = c - r * chunks;
    const bf16* src = p.q_latent;
    int bytes = 0;
    if (r < heads_here) {
      const int64_t qh = static_cast<int64_t>(item.seq) * p.num_heads + item.head_begin + r;
      src = k < kv_chunks ? p.q_latent + qh * p.kv_lora + k * 8 : p.q_pe + qh * p.qk_rope + (k - kv_chunks) * 8;
      bytes = 16;
    }
    CpAsync16(SharedAddress(q_s + r * stride + k * 8), src, bytes);
  }
  if constexpr (kQRegs) CpAsyncCommit();  // Q alone: its fragments are loaded before the first tile lands
  const int32_t* table = p.block_tables + static_cast<int64_t>(item.seq) * p.max_blocks_per_seq;
  // Staging a tile. Items start at tile boundaries, so where block_size is a
  // multiple of kTile (64 in practice) a tile lies in one cache block: its
  // rows are kTile * latent contiguous BF16. Thread i then copies 16-byte
  // pieces c = i + kThreads j, piece c going to row c / chunks of the padded
  // stage, i.e. to BF16 offset 8 (c + c / chunks). The division is a multiply
  // by ceil-ish 2^20 / chunks and a shift, exact for c < kTile * chunks (<= 64
  // * 80: the rounding adds under 5120 / 2^20 < 1 / chunks). Before, each warp
  // walked its 8 rows with a runtime-length loop over a row's 72 pieces and a
  // table load per row: about 1000 issued instructions per warp per tile,
  // most of the kernel's (Nsight Compute: the kernel is issue- and
  // latency-bound at 2 warps per scheduler). Other block sizes: warp w stages
  // rows w + 8 j, one table load per row.
  // The cache row of one of the sequence's positions.
  auto cache_row = [&](int pos) {
    return p.cache + (static_cast<int64_t>(table[pos / p.block_size]) * p.block_size + pos % p.block_size) * latent;
  };
  const bool contiguous = p.block_size % kTile == 0;
  const uint32_t magic = (1u << 20) / static_cast<uint32_t>(chunks) + 1u;
  const int tile_pieces = kTile * chunks;
  auto load_tile = [&](int t0, int stage) {
    bf16* dst = kv_s + stage * kTile * stride;
    const int valid_rows = min(kTile, item.kv_end - t0);
    if constexpr (kBulk) {
      // Bulk copies (the TMA engine), a whole row per copy: warp w's lanes j
      // < 8 copy rows w + 8 j, about 8 issued copies a warp instead of 18
      // cp.async a thread. (A copy's addresses go through uniform registers,
      // so a warp issues its lanes' copies one after another: spread over the
      // warps, none lags at the next barrier.) Each warp's lane 0 first tells
      // the stage's mbarrier (kWarps arrivals a phase) the bytes its lanes
      // will land; rows past kv_end are zeroed by plain stores instead (the
      // top-of-tile barrier orders them before any read).
      const int row_bytes = latent * static_cast<int>(sizeof(bf16));
      const uint32_t bar = bars + 8 * stage;
      const int r = warp + kWarps * lane;  // this lane's row (lanes < kTile / kWarps)
      const int warp_rows = max(0, min(kTile / kWarps, (valid_rows - warp + kWarps - 1) / kWarps));
      if (lane == 0) MbarArriveExpectTx(bar, warp_rows * row_bytes);
      __syncwarp();
      if (lane < kTile / kWarps) {
        if (r < valid_rows) {
          FenceProxyAsync();  // this thread's earlier accesses to the stage come first
          BulkCopyG2S(SharedAddress(dst + r * stride), cache_row(t0 + r), row_bytes, bar);
        } else {
          for (int k = 0; k < chunks; ++k) *reinterpret_cast<uint4*>(dst + r * stride + k * 8) = make_uint4(0, 0, 0, 0);
        }
      }
      return;
    }
    if (contiguous) {
      // Rows past kv_end are zero-filled; their source addresses stay inside
      // the tile's block, so no select is needed (nothing is read).
      const uint32_t dst_addr = SharedAddress(dst);
      const bf16* src = cache_row(t0) + 8 * threadIdx.x;
      uint32_t cm = threadIdx.x * magic;
      for (int c = threadIdx.x; c < tile_pieces; c += kThreads, src += 8 * kThreads, cm += kThreads * magic) {
        const int r = static_cast<int>(cm >> 20);
        CpAsync16(dst_addr + 16 * (c + r), src, r < valid_rows ? 16 : 0);
      }
      return;
    }
    for (int r = warp; r < kTile; r += kWarps) {
      const bool valid = r < valid_rows;
      const bf16* row = valid ? cache_row(t0 + r) : p.cache;
      for (int k = lane; k < chunks; k += 32) {
        CpAsync16(SharedAddress(dst + r * stride + k * 8), valid ? row + k * 8 : row, valid ? 16 : 0);
      }
    }
  };
  if constexpr (kBulk) {
    if (threadIdx.x == 0) {
      MbarInit(bars, kWarps);  // an arrival a phase from each warp's lane 0, with its bytes
      MbarInit(bars + 8, kWarps);
      FenceMbarInit();
    }
    __syncthreads();
  }
  if (item.kv_begin < item.kv_end) load_tile(item.kv_begin, 0);
  CpAsyncCommit();  // empty with bulk copies
  // L2 prefetch (p.prefetch_l2): the tile after the one being staged.
  const bool prefetcher = p.prefetch_l2 && threadIdx.x == 0;
  if (prefetcher) {
    PrefetchPositionsL2(p, table, latent, min(item.kv_begin + kTile, item.kv_end),
                        min(item.kv_begin + 2 * kTile, item.kv_end));
  }

  // This warp's output column tiles: [col0, col0 + cols), 8 columns each.
  const int per_warp = (kv_chunks + kWarps - 1) / kWarps;
  const int col0 = warp * per_warp;
  const int cols = max(0, min(per_warp, kv_chunks - col0));

  // Per m-tile, rows g (index 0) and g + 8 (index 1) of this lane.
  float m_run[MT][2], l_run[MT][2];
  float acc[MT][kMaxColTiles][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    m_run[mt][0] = m_run[mt][1] = -INFINITY;
    l_run[mt][0] = l_run[mt][1] = 0.0f;
#pragma unroll
    for (int i = 0; i < kMaxColTiles; ++i) acc[mt][i][0] = acc[mt][i][1] = acc[mt][i][2] = acc[mt][i][3] = 0.0f;
  }
  const float scale_log2 = p.scale * 1.4426950408889634f;  // scores in log2 units: exp2 below
  const int k_steps = latent / 16, k_half = (k_steps + 1) / 2;
  const int ks_begin = kh == 0 ? 0 : k_half, ks_end = kh == 0 ? k_half : k_steps;

  // ldmatrix row addresses of this lane (see warp_mma.cuh): A tiles (Q, P) by
  // row (lane & 15) and column half (lane >> 4); K for the scores by position
  // (lane & 7) + 8 (lane >> 4) and column half ((lane >> 3) & 1); V by
  // position (lane & 15) and column half (lane >> 4).
  const int a_r = (lane & 7) + ((lane >> 3) & 1) * 8, a_c = (lane >> 4) * 8;
  const bf16* q_lane = q_s + a_r * stride + a_c;
  const bf16* p_lane = p_s + a_r * kPStride + a_c;

  // Query in registers: this warp's k-quarter [kq_begin, kq_begin + kq_len)
  // of the k-steps, as A fragments, loaded once. Every warp loads before any
  // passes the first tile's barrier, after which q_s holds partial scores.
  const int quarter = (k_steps + kQuarters - 1) / kQuarters;
  const int kq_begin = min(k_steps, kq * quarter), kq_len = min(quarter, k_steps - kq_begin);
  uint32_t qf[kQRegs ? MT : 1][kQRegs ? kMaxQuarterSteps : 1][4];
  if constexpr (kQRegs) {
    CpAsyncWait<1>();  // Q's group (the first tile's may still be in flight)
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kMaxQuarterSteps; ++j) {
      if (j < kq_len) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) LdMatrixX4(qf[mt][j], SharedAddress(q_lane + mt * 16 * stride + (kq_begin + j) * 16));
      }
    }
  }

  int stage = 0;
  uint32_t tile_wait = 0;  // p.trace: thread 0's cycles in the waits for tiles after the first
  for (int t0 = item.kv_begin, tile = 0; t0 < item.kv_end; t0 += kTile, stage ^= 1, ++tile) {
    const uint32_t wait_from = TraceClock32(p);
    // Bulk copies: a stage's k-th tile completes its mbarrier's phase k, of
    // parity k & 1 (stage = tile & 1, k = tile >> 1).
    if constexpr (kBulk) MbarWaitParity(bars + 8 * stage, (tile >> 1) & 1);
    CpAsyncWait<0>();
    // Tile t0 (and Q) are in; every warp is done with the other stage, p_s and red.
    __syncthreads();
    TraceTileIn(p, tile == 0, wait_from, &tile_wait);
    if (t0 + kTile < item.kv_end) load_tile(t0 + kTile, stage ^ 1);
    CpAsyncCommit();
    if (prefetcher) PrefetchPositionsL2(p, table, latent, t0 + 2 * kTile, min(t0 + 3 * kTile, item.kv_end));
    const bf16* kv = kv_s + stage * kTile * stride;

    // Scores of this lane's C fragments: [mt][n-tile][e]; the first position
    // of n-tile 0 (pos0), and who keeps them through the softmax (keep).
    float s[MT][kQRegs ? 1 : 2][4];
    int pos0;
    bool keep;
    if constexpr (kQRegs) {
      // Positions t0 + 32 th + [0, 32) (four n-tiles, two x4 loads of K per
      // k-step) over this warp's quarter, Q from registers.
      float part[MT][4][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int n = 0; n < 4; ++n) part[mt][n][0] = part[mt][n][1] = part[mt][n][2] = part[mt][n][3] = 0.0f;
      }
      const bf16* k_lane = kv + (th * 32 + (lane & 7) + (lane >> 4) * 8) * stride + ((lane >> 3) & 1) * 8;
      // K fragments one k-step ahead: step j + 1's loads issue before step
      // j's MMAs (each step sits in a branch on kq_len, which would otherwise
      // leave every step waiting for its own ldmatrix).
      uint32_t b[2][2][4];  // [buffer][n-tile pair][regs]
      if (kq_len > 0) {
        LdMatrixX4(b[0][0], SharedAddress(k_lane + kq_begin * 16));
        LdMatrixX4(b[0][1], SharedAddress(k_lane + 16 * stride + kq_begin * 16));
      }
#pragma unroll
      for (int j = 0; j < kMaxQuarterSteps; ++j) {
        const int cur = j & 1;
        if (j + 1 < kq_len) {
          const int ks = kq_begin + j + 1;
          LdMatrixX4(b[cur ^ 1][0], SharedAddress(k_lane + ks * 16));
          LdMatrixX4(b[cur ^ 1][1], SharedAddress(k_lane + 16 * stride + ks * 16));
        }
        if (j < kq_len) {
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            MmaBf16(part[mt][0], qf[mt][j], b[cur][0][0], b[cur][0][1]);
            MmaBf16(part[mt][1], qf[mt][j], b[cur][0][2], b[cur][0][3]);
            MmaBf16(part[mt][2], qf[mt][j], b[cur][1][0], b[cur][1][1]);
            MmaBf16(part[mt][3], qf[mt][j], b[cur][1][2], b[cur][1][3]);
          }
        }
      }
      // A lane's four scores of an n-tile travel as one float4 (one 16-byte
      // shared-memory access instead of four): sx4[warp][mt][n][lane].
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int n = 0; n < 4; ++n) {
          sx4[((warp * MT + mt) * 4 + n) * 32 + lane] =
              make_float4(part[mt][n][0], part[mt][n][1], part[mt][n][2], part[mt][n][3]);
        }
      }
      __syncthreads();
      // Warp w sums n-tile kq of token half th over the four quarters (in
      // quarter order: the same sums on every run): positions 8 w + [0, 8).
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        s[mt][0][0] = s[mt][0][1] = s[mt][0][2] = s[mt][0][3] = 0.0f;
#pragma unroll
        for (int q = 0; q < kQuarters; ++q) {
          const float4 v = sx4[(((th + 2 * q) * MT + mt) * 4 + kq) * 32 + lane];
          s[mt][0][0] += v.x;
          s[mt][0][1] += v.y;
          s[mt][0][2] += v.z;
          s[mt][0][3] += v.w;
        }
      }
      pos0 = t0 + (th * 4 + kq) * 8 + 2 * t;
      keep = true;
    } else {
      // Positions t0 + 16 tg + [0, 16) (two MMA n-tiles), over this warp's
      // half of the latent's k-steps. Each x4 load of K serves both n-tiles:
      // matrices (n-tile 0, k lo), (0, k hi), (1, k lo), (1, k hi).
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int n = 0; n < 2; ++n) s[mt][n][0] = s[mt][n][1] = s[mt][n][2] = s[mt][n][3] = 0.0f;
      }
      const bf16* k_lane = kv + (tg * 16 + (lane & 7) + (lane >> 4) * 8) * stride + ((lane >> 3) & 1) * 8;
      // Odd k-steps accumulate into s_odd: two independent MMA chains per
      // C fragment, and the next k-step's fragments load while these run.
      float s_odd[MT][2][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int n = 0; n < 2; ++n) s_odd[mt][n][0] = s_odd[mt][n][1] = s_odd[mt][n][2] = s_odd[mt][n][3] = 0.0f;
      }
#pragma unroll 2
      for (int ks = ks_begin; ks < ks_end; ks += 2) {
        const bool second = ks + 1 < ks_end;
        uint32_t b[2][4], a[2][MT][4];
        LdMatrixX4(b[0], SharedAddress(k_lane + ks * 16));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) LdMatrixX4(a[0][mt], SharedAddress(q_lane + mt * 16 * stride + ks * 16));
        if (second) {
          LdMatrixX4(b[1], SharedAddress(k_lane + (ks + 1) * 16));
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            LdMatrixX4(a[1][mt], SharedAddress(q_lane + mt * 16 * stride + (ks + 1) * 16));
          }
        }
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          MmaBf16(s[mt][0], a[0][mt], b[0][0], b[0][1]);
          MmaBf16(s[mt][1], a[0][mt], b[0][2], b[0][3]);
        }
        if (second) {
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            MmaBf16(s_odd[mt][0], a[1][mt], b[1][0], b[1][1]);
            MmaBf16(s_odd[mt][1], a[1][mt], b[1][2], b[1][3]);
          }
        }
      }
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int n = 0; n < 2; ++n) {
#pragma unroll
          for (int e = 0; e < 4; ++e) s[mt][n][e] += s_odd[mt][n][e];
        }
      }
      // The upper k-half's warps hand their partial scores to the lower half's
      // (same token group); from here on only those hold S.
      if (kh == 1) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
          for (int n = 0; n < 2; ++n) {
            sx4[((tg * MT + mt) * 2 + n) * 32 + lane] = make_float4(s[mt][n][0], s[mt][n][1], s[mt][n][2], s[mt][n][3]);
          }
        }
      }
      __syncthreads();
      if (kh == 0) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
          for (int n = 0; n < 2; ++n) {
            const float4 v = sx4[((tg * MT + mt) * 2 + n) * 32 + lane];
            s[mt][n][0] += v.x;
            s[mt][n][1] += v.y;
            s[mt][n][2] += v.z;
            s[mt][n][3] += v.w;
          }
        }
      }
      pos0 = t0 + tg * 16 + 2 * t;
      keep = kh == 0;
    }
    constexpr int kN = kQRegs ? 1 : 2;  // n-tiles of s per lane
    const int group = kQRegs ? warp : tg;  // this warp's row of red

    // Scale, mask, and the group's row maxima (over the 4 lanes of a row).
    // s[.][n][0] and [2] are at pos0 + 8 n, [1] and [3] one after.
    if (keep) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int n = 0; n < kN; ++n) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            s[mt][n][e] = pos0 + 8 * n + (e & 1) < item.kv_end ? s[mt][n][e] * scale_log2 : -INFINITY;
          }
          mx0 = fmaxf(mx0, fmaxf(s[mt][n][0], s[mt][n][1]));
          mx1 = fmaxf(mx1, fmaxf(s[mt][n][2], s[mt][n][3]));
        }
#pragma unroll
        for (int o = 1; o <= 2; o <<= 1) {
          mx0 = fmaxf(mx0, __shfl_xor_sync(kFullMask, mx0, o));
          mx1 = fmaxf(mx1, __shfl_xor_sync(kFullMask, mx1, o));
        }
        if (t == 0) {
          red[(mt * 16 + g) * kGroups + group] = mx0;
          red[(mt * 16 + g + 8) * kGroups + group] = mx1;
        }
      }
    }
    __syncthreads();

    // Tile maxima (every tile holds a valid position: finite) and rescale
    // factors in every warp; P = 2^(s - m) into shared memory as BF16 and the
    // softmax sums of each group in the warps that keep its scores.
    float corr[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = mt * 16 + g + 8 * h;
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < kGroups / 4; ++j) {
          const float4 v = reinterpret_cast<const float4*>(red + row * kGroups)[j];
          mx = fmaxf(mx, fmaxf(fmaxf(v.x, v.y), fmaxf(v.z, v.w)));
        }
        const float m_new = fmaxf(m_run[mt][h], mx);
        corr[mt][h] = exp2f(m_run[mt][h] - m_new);  // 0 on the first tile (m_run -inf)
        m_run[mt][h] = m_new;
      }
      if (keep) {
        float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
        for (int n = 0; n < kN; ++n) {
          const float p0 = exp2f(s[mt][n][0] - m_run[mt][0]), p1 = exp2f(s[mt][n][1] - m_run[mt][0]);
          const float p2 = exp2f(s[mt][n][2] - m_run[mt][1]), p3 = exp2f(s[mt][n][3] - m_run[mt][1]);
          sum0 += p0 + p1;
          sum1 += p2 + p3;
          bf16* prow = p_s + (mt * 16 + g) * kPStride + (pos0 - t0) + n * 8;
          *reinterpret_cast<uint32_t*>(prow) = PackBf16(p0, p1);
          *reinterpret_cast<uint32_t*>(prow + 8 * kPStride) = PackBf16(p2, p3);
        }
#pragma unroll
        for (int o = 1; o <= 2; o <<= 1) {
          sum0 += __shfl_xor_sync(kFullMask, sum0, o);
          sum1 += __shfl_xor_sync(kFullMask, sum1, o);
        }
        l_run[mt][0] = l_run[mt][0] * corr[mt][0] + sum0;
        l_run[mt][1] = l_run[mt][1] * corr[mt][1] + sum1;
      }
#pragma unroll
      for (int i = 0; i < kMaxColTiles; ++i) {
        acc[mt][i][0] *= corr[mt][0];
        acc[mt][i][1] *= corr[mt][0];
        acc[mt][i][2] *= corr[mt][1];
        acc[mt][i][3] *= corr[mt][1];
      }
    }
    __syncthreads();

    // O += P V over this warp's columns, 16 positions per k-step. With all
    // kMaxColTiles column tiles (kv_lora 512: every warp) the loop has no
    // branches, so each k-step's four V loads issue before its MMAs; the
    // general loop's per-tile branches made every ldmatrix wait alone.
    const bf16* v_lane = kv + a_r * stride + col0 * 8 + a_c;
    if (cols == kMaxColTiles) {
#pragma unroll
      for (int kk = 0; kk < kTile / 16; ++kk) {
        uint32_t a[MT][4], b[kMaxColTiles / 2][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) LdMatrixX4(a[mt], SharedAddress(p_lane + mt * 16 * kPStride + kk * 16));
#pragma unroll
        for (int i = 0; i < kMaxColTiles / 2; ++i) {
          LdMatrixX4Trans(b[i], SharedAddress(v_lane + kk * 16 * stride + i * 16));
        }
#pragma unroll
        for (int i = 0; i < kMaxColTiles / 2; ++i) {
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            MmaBf16(acc[mt][2 * i], a[mt], b[i][0], b[i][1]);
            MmaBf16(acc[mt][2 * i + 1], a[mt], b[i][2], b[i][3]);
          }
        }
      }
    } else {
#pragma unroll
      for (int kk = 0; kk < kTile / 16; ++kk) {
        uint32_t a[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) LdMatrixX4(a[mt], SharedAddress(p_lane + mt * 16 * kPStride + kk * 16));
#pragma unroll
        for (int i = 0; i < kMaxColTiles; i += 2) {
          const bf16* v = v_lane + kk * 16 * stride + i * 8;
          if (i + 1 < cols) {  // column tiles i and i + 1 in one x4
            uint32_t b[4];
            LdMatrixX4Trans(b, SharedAddress(v));
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
              MmaBf16(acc[mt][i], a[mt], b[0], b[1]);
              MmaBf16(acc[mt][i + 1], a[mt], b[2], b[3]);
            }
          } else if (i < cols) {
            uint32_t b0, b1;
            LdMatrixX2Trans(b0, b1, SharedAddress(v));
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) MmaBf16(acc[mt][i], a[mt], b0, b1);
          }
        }
      }
    }
  }
  TraceLoopEnd(p, tile_wait);
  CpAsyncWait<0>();  // an empty item still has Q in flight

  // Softmax sums over the groups (the warps that kept each group's scores hold them).
  __syncthreads();  // every warp is past its last read of red
  const bool keeps_sums = kQRegs || kh == 0;
  if (keeps_sums && t == 0) {
    const int group = kQRegs ? warp : tg;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      red[(mt * 16 + g) * kGroups + group] = l_run[mt][0];
      red[(mt * 16 + g + 8) * kGroups + group] = l_run[mt][1];
    }
  }
  __syncthreads();
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = mt * 16 + g + 8 * h;
      if (row >= heads_here) continue;
      float l = 0.0f;
#pragma unroll
      for (int w = 0; w < kGroups; ++w) l += red[row * kGroups + w];
      const float inv = l > 0.0f ? 1.0f / l : 0.0f;  // l == 0 only for kv_len 0: zeros
      if (item.partial < 0) {
        bf16* o = p.out_latent + (static_cast<int64_t>(item.seq) * p.num_heads + item.head_begin + row) * p.kv_lora;
#pragma unroll
        for (int i = 0; i < kMaxColTiles; ++i) {
          if (i < cols) {
            *reinterpret_cast<__nv_bfloat162*>(o + (col0 + i) * 8 + 2 * t) =
                __floats2bfloat162_rn(acc[mt][i][2 * h] * inv, acc[mt][i][2 * h + 1] * inv);
          }
        }
      } else {
        const int64_t slot_row = static_cast<int64_t>(item.partial) * kRows + row;
        float* o = p.partial_out + slot_row * p.kv_lora;
#pragma unroll
        for (int i = 0; i < kMaxColTiles; ++i) {
          if (i < cols) {
            *reinterpret_cast<float2*>(o + (col0 + i) * 8 + 2 * t) =
                make_float2(acc[mt][i][2 * h] * inv, acc[mt][i][2 * h + 1] * inv);
          }
        }
        if (warp == 0 && t == 0) p.partial_lse[slot_row] = m_run[mt][h] + log2f(l);
      }
    }
  }
  // The last item of a split merges it (p.merge_counters); its flag in the
  // cache stages, read by no one now.
  TraceStamp(p, kTraceWrittenClk);
  MergeIfLastOfSplit<kThreads>(p, item, reinterpret_cast<int*>(kv_s));
  TraceEnd(p);
}

constexpr int kMergeThreads = 128;
constexpr int kMergeRows = kMergeThreads / 32;  // head rows per block: a warp each

// Head rows [kMergeRows y, + kMergeRows) of split x (mla_decode_merge.cuh).
// With p.trace, the kernel's span in the row after the items' (mla_decode_trace.h).
__global__ void __launch_bounds__(kMergeThreads) MlaDecodeMergeKernel(MlaDecodeParams p) {
  uint64_t* span = p.trace != nullptr ? p.trace + static_cast<int64_t>(p.num_work_items) * kMlaDecodeTraceWords : nullptr;
  SpanStart(span);
  GridDependentsLaunch();  // as in MlaDecodeMmaKernel
  GridDependencyWait();
  const MlaDecodeMergeItem m = p.merge_items[blockIdx.x];
  const int row = blockIdx.y * kMergeRows + threadIdx.x / 32;
  // No early return for rows past the heads: thread 0 stamps the span's end.
  if (row < p.heads_per_block && m.head_begin + row < p.num_heads) MergeHeadRowByWarp(p, m, row, threadIdx.x % 32);
  SpanEnd(span);
}

template <int MT, bool kQRegs, bool kBulk>
cudaError_t Launch(const MlaDecodeParams& p, size_t smem, cudaStream_t stream) {
  const cudaError_t err =
      OptIntoDynamicShared<&MlaDecodeMmaKernel<MT, kQRegs, kBulk>>(static_cast<int>(kMaxSharedBytes));
  if (err != cudaSuccess) return err;
  detail::LaunchKernelPdl(MlaDecodeMmaKernel<MT, kQRegs, kBulk>, p.num_work_items, kThreads, smem, stream, p.pdl, p);
  return cudaGetLastError();
}

template <int MT>
cudaError_t LaunchFor(bool q_regs, bool bulk, const MlaDecodeParams& p, size_t smem, cudaStream_t stream) {
  if (q_regs) return bulk ? Launch<MT, true, true>(p, smem, stream) : Launch<MT, true, false>(p, smem, stream);
  return bulk ? Launch<MT, false, true>(p, smem, stream) : Launch<MT, false, false>(p, smem, stream);
}

}  // namespace

cudaError_t LaunchMlaDecodeMma(const MlaDecodeParams& p, cudaStream_t stream) {
  const int latent = p.kv_lora + p.qk_rope;
  // kAuto: the query in registers, 1-5% faster than in shared memory on
  // every benchmark shape on an H200 (bench/RESULTS.md, 2026-11-28).
  const bool q_regs = p.query != MlaDecodeQuery::kShared;
  const bool wgmma = MlaDecodeWgmmaTakes(p.kv_lora, p.qk_rope, p.heads_per_block);
  const bool wgmma16 = MlaDecodeWgmma16Takes(p.kv_lora, p.qk_rope, p.heads_per_block, p.mma);
  const size_t smem = wgmma || wgmma16 ? 0 : MlaDecodeMmaSharedBytes(latent, p.heads_per_block, q_regs);
  if (!MlaDecodeUsesTensorCores(p.kv_lora, p.qk_rope) ||
      (p.heads_per_block != 16 && p.heads_per_block != 32 && !wgmma) || smem > kMaxSharedBytes ||
      p.num_work_items <= 0 || p.num_merge_items < 0 ||
      (p.num_merge_items > 0 && (p.partial_out == nullptr || p.partial_lse == nullptr))) {
    return cudaErrorInvalidValue;
  }
  // kAuto: cp.async (the bulk copies were no faster on an H200, session 5).
  const bool bulk = p.copy == MlaDecodeCopy::kBulk;
  cudaError_t err = wgmma                    ? LaunchMlaDecodeWgmma(p, stream)
                    : wgmma16                 ? LaunchMlaDecodeWgmma16(p, stream)
                    : p.heads_per_block == 16 ? LaunchFor<1>(q_regs, bulk, p, smem, stream)
                                              : LaunchFor<2>(q_regs, bulk, p, smem, stream);
  // Merged by the decode kernel's last item of each split (merge_counters), or by the merge kernel.
  if (err != cudaSuccess || p.num_merge_items == 0 || p.merge_counters != nullptr) return err;
  const dim3 grid(static_cast<unsigned>(p.num_merge_items),
                  static_cast<unsigned>(CeilDiv(p.heads_per_block, kMergeRows)));
  detail::LaunchKernelPdl(MlaDecodeMergeKernel, grid, kMergeThreads, 0, stream, p.pdl, p);
  return cudaGetLastError();
}

}  // namespace mla::cuda::detail
