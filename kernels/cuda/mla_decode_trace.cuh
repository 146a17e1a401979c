// The device side of MlaDecodeParams.trace (mla_decode_trace.h): thread 0 of
// a tensor-core decode block stamps its item's row. With trace null (every
// timed launch) a stamp is one uniform branch on a kernel parameter.
// Internal to kernels/cuda.
#pragma once

#include <cstdint>

#include "kernels/cuda/mla_decode.cuh"
#include "kernels/cuda/mla_decode_trace.h"
#include "kernels/cuda/warp_mma.cuh"

#if defined(__CUDACC__)
namespace mla::cuda::detail {

// The SM's cycle counter, and which SM this block runs on. (In a host build
// the emulator has defined both: a steady clock in ns, a made-up SM.)
__device__ __forceinline__ uint64_t SmClock() { return static_cast<uint64_t>(clock64()); }
__device__ __forceinline__ uint32_t SmId() {
  uint32_t id;
  asm volatile("mov.u32 %0, %%smid;\n" : "=r"(id));
  return id;
}

}  // namespace mla::cuda::detail
#endif  // __CUDACC__

namespace mla::cuda::detail {

// Word `word` of this block's row (a *Clk word), if tracing.
__device__ __forceinline__ void TraceStamp(const MlaDecodeParams& p, MlaDecodeTraceWord word) {
  if (p.trace == nullptr || threadIdx.x != 0) return;
  p.trace[static_cast<int64_t>(blockIdx.x) * kMlaDecodeTraceWords + word] = SmClock();
}

// The low 32 bits of the SM clock where thread 0 traces, else 0: taken at
// the top of each tile, before its wait (a tile's wait is far under 2^32
// cycles).
__device__ __forceinline__ uint32_t TraceClock32(const MlaDecodeParams& p) {
  return p.trace != nullptr && threadIdx.x == 0 ? static_cast<uint32_t>(SmClock()) : 0u;
}

// Past a tile's wait and barrier (wait_from: TraceClock32 before them): the
// first tile's stamp, or this wait's cycles added to *tile_wait.
__device__ __forceinline__ void TraceTileIn(const MlaDecodeParams& p, bool first, uint32_t wait_from,
                                            uint32_t* tile_wait) {
  if (p.trace == nullptr || threadIdx.x != 0) return;
  if (first) {
    p.trace[static_cast<int64_t>(blockIdx.x) * kMlaDecodeTraceWords + kTraceFirstTileClk] = SmClock();
  } else {
    *tile_wait += static_cast<uint32_t>(SmClock()) - wait_from;
  }
}

// After the loop over the tiles: its end, and the summed waits.
__device__ __forceinline__ void TraceLoopEnd(const MlaDecodeParams& p, uint32_t tile_wait) {
  if (p.trace == nullptr || threadIdx.x != 0) return;
  uint64_t* row = p.trace + static_cast<int64_t>(blockIdx.x) * kMlaDecodeTraceWords;
  row[kTraceLoopEndClk] = SmClock();
  row[kTraceTileWaitClk] = tile_wait;
}

// At entry: the start in both clocks and the SM.
__device__ __forceinline__ void TraceStart(const MlaDecodeParams& p) {
  if (p.trace == nullptr || threadIdx.x != 0) return;
  uint64_t* row = p.trace + static_cast<int64_t>(blockIdx.x) * kMlaDecodeTraceWords;
  row[kTraceStartNs] = GlobalTimerNs();
  row[kTraceStartClk] = SmClock();
  row[kTraceSm] = SmId();
}

// At exit: the end in both clocks.
__device__ __forceinline__ void TraceEnd(const MlaDecodeParams& p) {
  if (p.trace == nullptr || threadIdx.x != 0) return;
  uint64_t* row = p.trace + static_cast<int64_t>(blockIdx.x) * kMlaDecodeTraceWords;
  row[kTraceEndClk] = SmClock();
  row[kTraceEndNs] = GlobalTimerNs();
}

}  // namespace mla::cuda::detail
