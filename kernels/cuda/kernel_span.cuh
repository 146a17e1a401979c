// A kernel's span on the GPU's one clock (%globaltimer, ns), for
// mla-bench-decode --trace's pipeline line: span[0] the earliest block start,
// span[1] the latest block end, by thread 0 of each (1-D) block with
// atomicMin / atomicMax; the caller sets them to {UINT64_MAX, 0} first. A null
// span (every timed launch) costs a uniform branch. Internal to kernels/cuda.
#pragma once

#include <cstdint>

#include "kernels/cuda/warp_mma.cuh"

namespace mla::cuda::detail {

__device__ __forceinline__ void SpanStart(uint64_t* span) {
  if (span == nullptr || threadIdx.x != 0) return;
  atomicMin(reinterpret_cast<unsigned long long*>(span), static_cast<unsigned long long>(GlobalTimerNs()));
}

__device__ __forceinline__ void SpanEnd(uint64_t* span) {
  if (span == nullptr || threadIdx.x != 0) return;
  atomicMax(reinterpret_cast<unsigned long long*>(span) + 1, static_cast<unsigned long long>(GlobalTimerNs()));
}

}  // namespace mla::cuda::detail
