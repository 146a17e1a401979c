#include "kernels/cuda/wgmma_probe.cuh"

#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <iterator>

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/warp_mma.cuh"
#include "kernels/cuda/wgmma.cuh"

namespace mla::cuda {
namespace {

constexpr size_t kMaxSharedBytes = 227 * 1024;

// Byte offsets of wgmma.cuh's no-swizzle layouts. K-major: element (row of M
// or N, k); MN-major: element (k, n).
__host__ __device__ uint32_t KMajor(uint32_t lbo, uint32_t sbo, int row, int k) {
  return (row / 8) * sbo + (k / 8) * lbo + (row % 8) * 16 + (k % 8) * 2;
}
__host__ __device__ uint32_t MnMajor(uint32_t lbo, uint32_t sbo, int k, int n) {
  return (n / 8) * sbo + (k / 8) * lbo + (k % 8) * 16 + (n % 8) * 2;
}

// Bytes from an operand's start to past its farthest element (offsets grow
// with every index, so the last element is the farthest).
uint32_t AExtent(uint32_t lbo, uint32_t sbo, bool trans) {
  return (trans ? MnMajor(lbo, sbo, 15, 63) : KMajor(lbo, sbo, 63, 15)) + 2;
}
uint32_t BExtent(uint32_t lbo, uint32_t sbo, int n, bool trans) {
  return (trans ? MnMajor(lbo, sbo, 15, n - 1) : KMajor(lbo, sbo, n - 1, 15)) + 2;
}
uint32_t RoundUp16(uint32_t x) { return (x + 15u) & ~15u; }
uint32_t ARegion(const WgmmaProbeParams& p) {
  return RoundUp16(std::max(AExtent(p.a_lbo, p.a_sbo, p.trans_a), AExtent(p.desc_a_lbo, p.desc_a_sbo, p.trans_a)));
}

template <int N, bool kTransA, bool kTransB>
__global__ void __launch_bounds__(128) WgmmaProbeKernel(WgmmaProbeParams p, uint32_t b_offset, uint32_t bytes) {
  MLA_DYNAMIC_SHARED(smem);
  // Zeros where no element is placed: a descriptor that reads there adds 0.
  for (uint32_t i = threadIdx.x; i < bytes / 16; i += 128) reinterpret_cast<uint4*>(smem)[i] = make_uint4(0, 0, 0, 0);
  __syncthreads();
  for (int i = threadIdx.x; i < 64 * 16; i += 128) {
    const int m = i / 16, k = i % 16;
    const uint32_t off = kTransA ? MnMajor(p.a_lbo, p.a_sbo, k, m) : KMajor(p.a_lbo, p.a_sbo, m, k);
    *reinterpret_cast<__nv_bfloat16*>(smem + off) = p.a[i];
  }
  for (int i = threadIdx.x; i < 16 * N; i += 128) {
    const int k = i / N, n = i % N;
    const uint32_t off = kTransB ? MnMajor(p.b_lbo, p.b_sbo, k, n) : KMajor(p.b_lbo, p.b_sbo, n, k);
    *reinterpret_cast<__nv_bfloat16*>(smem + b_offset + off) = p.b[i];
  }
  detail::FenceProxyAsync();  // the stores (generic proxy) before the mma (async proxy) reads them
  __syncthreads();
  const uint32_t base = detail::SharedAddress(smem);
  float d[N / 2];
  detail::WgmmaFence();
  detail::WgmmaBf16<N, kTransA, kTransB>(d, detail::WgmmaDesc(base, p.desc_a_lbo, p.desc_a_sbo),
                                detail::WgmmaDesc(base + b_offset, p.desc_b_lbo, p.desc_b_sbo), false);
  detail::WgmmaCommit();
  detail::WgmmaWait<0>();
  detail::WgmmaFenceOperand(d);
  const int w = threadIdx.x / 32, g = (threadIdx.x % 32) / 4, t = threadIdx.x % 4;
  for (int j = 0; j < N / 8; ++j) {
    for (int e = 0; e < 4; ++e) {
      const int row = 16 * w + g + (e >= 2 ? 8 : 0), col = 8 * j + 2 * t + e % 2;
      p.d[row * N + col] = d[4 * j + e];
    }
  }
}

}  // namespace

size_t WgmmaProbeSharedBytes(const WgmmaProbeParams& p) {
  return ARegion(p) + RoundUp16(std::max(BExtent(p.b_lbo, p.b_sbo, p.n, p.trans_b),
                                         BExtent(p.desc_b_lbo, p.desc_b_sbo, p.n, p.trans_b)));
}

cudaError_t LaunchWgmmaProbe(const WgmmaProbeParams& p, cudaStream_t stream) {
  const uint32_t strides[] = {p.a_lbo, p.a_sbo, p.b_lbo, p.b_sbo, p.desc_a_lbo, p.desc_a_sbo, p.desc_b_lbo, p.desc_b_sbo};
  const bool aligned = std::all_of(std::begin(strides), std::end(strides), [](uint32_t s) { return s % 16 == 0; });
  const size_t bytes = WgmmaProbeSharedBytes(p);
  using Kernel = void (*)(WgmmaProbeParams, uint32_t, uint32_t);
  const Kernel kernel = p.n == 16 && !p.trans_a && !p.trans_b  ? WgmmaProbeKernel<16, false, false>
                        : p.n == 16 && p.trans_a && p.trans_b  ? WgmmaProbeKernel<16, true, true>
                        : p.n == 32 && !p.trans_a && !p.trans_b ? WgmmaProbeKernel<32, false, false>
                        : p.n == 256 && !p.trans_a && p.trans_b ? WgmmaProbeKernel<256, false, true>
                                                                : nullptr;
  if (kernel == nullptr || !aligned || bytes > kMaxSharedBytes || p.a == nullptr || p.b == nullptr ||
      p.d == nullptr) {
    return cudaErrorInvalidValue;
  }
  cudaError_t err = cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (err != cudaSuccess) return err;
  detail::LaunchKernel(kernel, 1, 128, bytes, stream, p, ARegion(p), static_cast<uint32_t>(bytes));
  return cudaGetLastError();
}

}  // namespace mla::cuda
