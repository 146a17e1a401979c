// One block around MbarWaitParity (warp_mma.cuh), for its test
// (tests/gpu/mbar_wait_gpu_test.cc): the block's mbarrier expects `expected`
// arrivals; threads 0 .. arrivals-1 arrive, thread 0 arming the phase with
// expect_bytes and bulk-copying copy_bytes of src into shared memory on it;
// then every thread waits for the phase, bounded by limit_ns, and writes what
// landed to dst and a 1 to passed[thread]. A phase that can never complete
// (too few arrivals, fewer bytes than expected) must end the launch with an
// error once limit_ns has passed, not hang.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/warp_mma.cuh"

namespace mla::cuda {

struct MbarWaitProbeParams {
  int threads = 32;  // one block of this many (a multiple of 32, at most 1024)
  int expected = 1;  // arrivals the phase waits for (1 or more)
  int arrivals = 1;  // threads that arrive (0 .. threads)
  int expect_bytes = 0;  // bytes thread 0's arrival expects (a multiple of 16, at most kMbarWaitProbeMaxBytes)
  int copy_bytes = 0;    // bytes thread 0 copies from src (the same bounds; 0: none)
  const void* src = nullptr;  // [copy_bytes], 16-byte aligned
  void* dst = nullptr;        // [copy_bytes]: what landed, after the wait
  int32_t* passed = nullptr;  // [threads]
  uint64_t limit_ns = detail::kMbarWaitLimitNs;  // MbarWaitParity's bound
};

inline constexpr int kMbarWaitProbeMaxBytes = 1024;

// cudaErrorInvalidValue for parameters outside the bounds above (or null
// buffers that are needed); else the launch's error.
cudaError_t LaunchMbarWaitProbe(const MbarWaitProbeParams& p, cudaStream_t stream);

}  // namespace mla::cuda
