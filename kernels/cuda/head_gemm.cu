#include "kernels/cuda/head_gemm.cuh"

#include <cuda_bf16.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/kernel_span.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/warp_mma.cuh"

namespace mla::cuda {
namespace {

using bf16 = __nv_bfloat16;
using detail::CpAsync16;
using detail::CpAsyncCommit;
using detail::CpAsyncWait;
using detail::LdMatrixX4;
using detail::LdMatrixX4Trans;
using detail::MmaBf16;

constexpr int kBm = 32;                // output rows per block: two warps of 16
constexpr int kBk = 64;                // k per stage
constexpr int kThreads = 128;          // 2 x 2 warps
constexpr int kPad = 8;                // BF16 per shared row: odd 16-byte pitch, no ldmatrix bank conflicts
constexpr int kXStride = kBk + kPad;   // x tile [kBm, kBk]

// BF16 per W tile in shared memory: [64 k, BN n] or [BN n, 64 k], rows padded.
__host__ __device__ constexpr int WTileElems(int bn, bool k_by_n) { return k_by_n ? kBk * (bn + kPad) : bn * (kBk + kPad); }

// Up to this many k-stages (k <= 512) a block requests all of them at once,
// each in its own slot, and waits once: the GEMMs here have a few k-steps of
// almost no math each, so double-buffering them costs a memory latency a step
// (W_UV's k of 512: 8 latencies a block). Longer k (the MoE gate_up's k of
// 7168, hidden) runs through a ring of as many slots: stage s + 8 is
// requested as soon as stage s is consumed, so 8 stages stay in flight (64
// KiB of W a block at 64 columns), where double-buffering kept one: a memory
// latency a stage, far below the memory's rate at decode, where the blocks
// of the few experts in use are all there is.
constexpr int kMaxWholeStages = 8;
constexpr int kRingSlots = kMaxWholeStages;

__host__ __device__ constexpr int KStages(int k) { return (k + kBk - 1) / kBk; }
__host__ __device__ constexpr int SharedSlots(int k) {
  return KStages(k) <= kMaxWholeStages ? KStages(k) : kRingSlots;
}

// Dynamic shared memory: `slots` stages of the x tile, then as many of the W
// tile (at most 8 x 13.5 KiB: 108 KiB).
constexpr size_t HeadGemmSharedBytes(int bn, bool k_by_n, int slots) {
  return static_cast<size_t>(slots) * sizeof(bf16) * (static_cast<size_t>(kBm) * kXStride + WTileElems(bn, k_by_n));
}
constexpr size_t kMaxHeadGemmSharedBytes = HeadGemmSharedBytes(64, false, kMaxWholeStages);

// One block: rows [32 by, +32) x columns [BN bx, +BN) of head bz (grouped:
// of the head's own rows, p.group_rows), over k in
// stages of 64 by cp.async (zero-filled past rows, n and k): all requested at
// once up to kMaxWholeStages, else through a ring of kRingSlots.
// Warp (wm, wn) computes rows 16 wm + [0, 16) x columns BN / 2 wn + [0, BN / 2)
// with mma.sync m16n8k16: A = the x tile; B = the W tile, stored as it lies in
// memory ([k, n]: read with ldmatrix .trans; [n, k]: plain ldmatrix).
// Output BF16 (p.out) or, kF32Out, FP32 (p.out_f32).
template <int BN, bool kKByN, bool kF32Out>
__global__ void __launch_bounds__(kThreads) HeadGemmKernel(HeadGemmParams p) {
  constexpr int kNt = BN / 16;  // n-tiles of 8 per warp
  constexpr int kWRows = kKByN ? kBk : BN, kWCols = kKByN ? BN : kBk;
  constexpr int kWStride = kWCols + kPad;
  static_assert(kWRows * kWStride == WTileElems(BN, kKByN));
  // HeadGemmSharedBytes(BN, kKByN, slots): x_s [slots][kBm * kXStride], then
  // w_s [slots][kWRows * kWStride].
  const int stages = KStages(p.k), slots = SharedSlots(p.k);
  const bool whole = stages <= kMaxWholeStages;
  MLA_DYNAMIC_SHARED(smem);
  bf16 (*x_s)[kBm * kXStride] = reinterpret_cast<bf16 (*)[kBm * kXStride]>(smem);
  bf16 (*w_s)[kWRows * kWStride] = reinterpret_cast<bf16 (*)[kWRows * kWStride]>(x_s + slots);

  const int h = blockIdx.z;
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kBm;
  const int col0 = blockIdx.x * BN;
  const bf16* x = p.x + h * p.x_head_stride;
  const bf16* w = p.w + h * p.w_head_stride;
  int64_t rows = p.rows, out_offset = h * p.out_head_stride;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int wm = warp / 2, wn = warp % 2;

  auto load_x = [&](int k0, int stage) {
    for (int c = threadIdx.x; c < kBm * (kBk / 8); c += kThreads) {
      const int r = c / (kBk / 8), kc = (c % (kBk / 8)) * 8;
      const bool valid = row0 + r < rows && k0 + kc < p.k;
      const bf16* src = valid ? x + (row0 + r) * p.x_ld + k0 + kc : p.x;
      CpAsync16(detail::SharedAddress(&x_s[stage][r * kXStride + kc]), src, valid ? 16 : 0);
    }
  };
  auto load_w = [&](int k0, int stage) {
    for (int c = threadIdx.x; c < kWRows * (kWCols / 8); c += kThreads) {
      const int r = c / (kWCols / 8), cc = (c % (kWCols / 8)) * 8;
      const int kk = kKByN ? k0 + r : k0 + cc, nn = kKByN ? col0 + cc : col0 + r;
      const bool valid = kk < p.k && nn < p.n;
      const bf16* src = !valid ? p.w : kKByN ? w + static_cast<int64_t>(kk) * p.w_ld + nn : w + static_cast<int64_t>(nn) * p.w_ld + kk;
      CpAsync16(detail::SharedAddress(&w_s[stage][r * kWStride + cc]), src, valid ? 16 : 0);
    }
  };

  float acc[kNt][4] = {};
  // ldmatrix lane addresses (warp_mma.cuh): A by row (lane & 15) and k half
  // (lane >> 4); B from [k, n] (.trans) likewise by k row and n half; B from
  // [n, k] by n row (lane & 7) + 8 (lane >> 4) and k half ((lane >> 3) & 1).
  const int a_r = (lane & 7) + ((lane >> 3) & 1) * 8, a_c = (lane >> 4) * 8;
  const int b_n = (lane & 7) + (lane >> 4) * 8, b_k = ((lane >> 3) & 1) * 8;
  // Programmatic dependent launch (p.pdl): let the next kernel's blocks be
  // scheduled now, and request W (weights: never written by the kernels
  // ahead, see HeadGemmParams.pdl) while the kernel ahead finishes; x only
  // once the kernel that wrote it has ended.
  detail::SpanStart(p.span);
  detail::GridDependentsLaunch();
  if (p.group_rows != nullptr) {
    // Grouped: the head's rows come from the kernel ahead, and a block past
    // them must not request W at all (most experts have no rows at decode).
    detail::GridDependencyWait();
    const int64_t first = p.group_rows[h];
    const int64_t own = p.group_rows[h + 1] - first;
    rows = own < p.rows ? own : p.rows;
    if (row0 >= rows) {
      detail::SpanEnd(p.span);
      return;  // the whole block: no barrier ahead
    }
    x = p.x + first * p.x_ld;
    out_offset = first * p.out_ld;
  }
  // Commit group 0: the first `slots` stages (whole: all of them). In the
  // ring, iteration s then commits one group, stage s + kRingSlots (empty
  // past the last stage), so at the top of iteration s >= kRingSlots the
  // group holding stage s has exactly kRingSlots - 1 groups after it.
  for (int s = 0; s < slots; ++s) load_w(s * kBk, s);
  detail::GridDependencyWait();  // a second wait returns at once
  for (int s = 0; s < slots; ++s) load_x(s * kBk, s);
  CpAsyncCommit();
  for (int s = 0; s < stages; ++s) {
    if (s == 0) {
      CpAsyncWait<0>();
      __syncthreads();  // the first `slots` stages are in
    } else if (!whole && s >= kRingSlots) {
      CpAsyncWait<kRingSlots - 1>();
      __syncthreads();  // stage s is in
    }
    const int slot = s % kRingSlots;  // whole: s
    const bf16* xs = x_s[slot];
    const bf16* ws = w_s[slot];
#pragma unroll
    for (int kk = 0; kk < kBk / 16; ++kk) {
      uint32_t a[4];
      LdMatrixX4(a, detail::SharedAddress(xs + (16 * wm + a_r) * kXStride + kk * 16 + a_c));
#pragma unroll
      for (int j = 0; j < kNt; j += 2) {
        const int n0 = wn * (BN / 2) + 8 * j;  // n-tiles j and j + 1
        uint32_t b[4];
        if constexpr (kKByN) {
          LdMatrixX4Trans(b, detail::SharedAddress(ws + (kk * 16 + a_r) * kWStride + n0 + a_c));
        } else {
          LdMatrixX4(b, detail::SharedAddress(ws + (n0 + b_n) * kWStride + kk * 16 + b_k));
        }
        MmaBf16(acc[j], a, b[0], b[1]);
        MmaBf16(acc[j + 1], a, b[2], b[3]);
      }
    }
    if (!whole) {
      __syncthreads();  // every warp is done with this slot: refill it
      if (s + kRingSlots < stages) {
        load_x((s + kRingSlots) * kBk, slot);
        load_w((s + kRingSlots) * kBk, slot);
      }
      CpAsyncCommit();
    }
  }
  CpAsyncWait<0>();

#pragma unroll
  for (int j = 0; j < kNt; ++j) {
    const int n = col0 + wn * (BN / 2) + 8 * j + 2 * t;
    if (n >= p.n) continue;  // n % 8 == 0: a pair is all in or all out
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const int64_t m = row0 + 16 * wm + g + 8 * hh;
      if (m >= rows) continue;
      const int64_t at = out_offset + m * p.out_ld + n;
      if constexpr (kF32Out) {
        *reinterpret_cast<float2*>(p.out_f32 + at) = make_float2(acc[j][2 * hh], acc[j][2 * hh + 1]);
      } else {
        *reinterpret_cast<__nv_bfloat162*>(p.out + at) = __floats2bfloat162_rn(acc[j][2 * hh], acc[j][2 * hh + 1]);
      }
    }
  }
  detail::SpanEnd(p.span);
}

using detail::kMaxDevices;

int SmCount() {
  static std::atomic<int> sms[kMaxDevices];
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) return 132;
  int n = sms[device].load(std::memory_order_relaxed);
  if (n == 0) {
    if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || n <= 0) n = 132;
    sms[device].store(n, std::memory_order_relaxed);
  }
  return n;
}

template <int BN, bool kKByN, bool kF32Out>
cudaError_t Launch(const HeadGemmParams& p, dim3 grid, cudaStream_t stream) {
  const cudaError_t err =
      detail::OptIntoDynamicShared<&HeadGemmKernel<BN, kKByN, kF32Out>>(static_cast<int>(kMaxHeadGemmSharedBytes));
  if (err != cudaSuccess) return err;
  detail::LaunchKernelPdl(HeadGemmKernel<BN, kKByN, kF32Out>, grid, kThreads,
                          HeadGemmSharedBytes(BN, kKByN, SharedSlots(p.k)), stream, p.pdl, p);
  return cudaGetLastError();
}

template <int BN, bool kKByN>
cudaError_t Launch(const HeadGemmParams& p, dim3 grid, cudaStream_t stream) {
  return p.out_f32 != nullptr ? Launch<BN, kKByN, true>(p, grid, stream) : Launch<BN, kKByN, false>(p, grid, stream);
}

template <int BN>
cudaError_t Launch(const HeadGemmParams& p, dim3 grid, cudaStream_t stream) {
  return p.w_is_k_by_n ? Launch<BN, true>(p, grid, stream) : Launch<BN, false>(p, grid, stream);
}

}  // namespace

bool HeadGemmTakes(const HeadGemmParams& p) {
  auto aligned = [](const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; };
  const int64_t strides[] = {p.x_ld, p.x_head_stride, p.w_ld, p.w_head_stride, p.out_ld, p.out_head_stride};
  for (int64_t s : strides) {
    if (s < 0 || s % 8 != 0) return false;
  }
  const void* out = p.out != nullptr ? static_cast<const void*>(p.out) : p.out_f32;
  const bool one_out = (p.out != nullptr) != (p.out_f32 != nullptr);
  const bool grouping = p.group_rows == nullptr || (p.x_head_stride == 0 && p.out_head_stride == 0);
  return p.rows >= 0 && p.n > 0 && p.k > 0 && p.heads > 0 && p.heads <= 65535 && p.n % 8 == 0 && p.k % 8 == 0 &&
         p.x != nullptr && p.w != nullptr && one_out && grouping && aligned(p.x) && aligned(p.w) && aligned(out) &&
         (p.rows + kBm - 1) / kBm <= 65535;
}

cudaError_t LaunchHeadGemm(const HeadGemmParams& p, cudaStream_t stream) {
  if (!HeadGemmTakes(p)) return cudaErrorInvalidValue;
  if (p.rows == 0) return cudaSuccess;
  // 64-column tiles where they make at least a wave of blocks, else 32 (the
  // per-head W_UV GEMM has n = 128: 64-column tiles would leave most SMs idle
  // at small batches).
  const unsigned row_tiles = static_cast<unsigned>((p.rows + kBm - 1) / kBm);
  const int64_t wide_blocks = static_cast<int64_t>((p.n + 63) / 64) * row_tiles * p.heads;
  if (wide_blocks >= SmCount()) return Launch<64>(p, dim3((p.n + 63) / 64, row_tiles, p.heads), stream);
  return Launch<32>(p, dim3((p.n + 31) / 32, row_tiles, p.heads), stream);
}

}  // namespace mla::cuda
