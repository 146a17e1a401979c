#include "kernels/cuda/mbar_wait_probe.cuh"

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/warp_mma.cuh"

namespace mla::cuda {
namespace {

// Dynamic shared memory: the mbarrier (8 bytes, padded to 16), then the copy's landing area.
constexpr int kBarrierBytes = 16;

__global__ void MbarWaitProbeKernel(MbarWaitProbeParams p) {
  MLA_DYNAMIC_SHARED(smem);
  const uint32_t bar = detail::SharedAddress(smem);
  unsigned char* data = smem + kBarrierBytes;
  if (threadIdx.x == 0) {
    detail::MbarInit(bar, p.expected);
    detail::FenceMbarInit();
  }
  __syncthreads();
  if (static_cast<int>(threadIdx.x) < p.arrivals) {
    detail::MbarArriveExpectTx(bar, threadIdx.x == 0 ? p.expect_bytes : 0);
    if (threadIdx.x == 0 && p.copy_bytes > 0) {
      detail::BulkCopyG2S(detail::SharedAddress(data), p.src, p.copy_bytes, bar);
    }
  }
  detail::MbarWaitParity(bar, 0, p.limit_ns);
  for (int i = threadIdx.x; i < p.copy_bytes; i += blockDim.x) static_cast<unsigned char*>(p.dst)[i] = data[i];
  p.passed[threadIdx.x] = 1;
}

}  // namespace

cudaError_t LaunchMbarWaitProbe(const MbarWaitProbeParams& p, cudaStream_t stream) {
  const auto bytes_ok = [](int b) { return b >= 0 && b <= kMbarWaitProbeMaxBytes && b % 16 == 0; };
  if (p.threads < 32 || p.threads > 1024 || p.threads % 32 != 0 || p.expected < 1 || p.arrivals < 0 ||
      p.arrivals > p.threads || !bytes_ok(p.expect_bytes) || !bytes_ok(p.copy_bytes) || p.passed == nullptr ||
      (p.copy_bytes > 0 && (p.src == nullptr || p.dst == nullptr || reinterpret_cast<uintptr_t>(p.src) % 16 != 0))) {
    return cudaErrorInvalidValue;
  }
  detail::LaunchKernel(MbarWaitProbeKernel, 1, p.threads, kBarrierBytes + kMbarWaitProbeMaxBytes, stream, p);
  return cudaGetLastError();
}

}  // namespace mla::cuda
