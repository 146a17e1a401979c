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

// The 128-byte swizzled placement of A (wgmma_probe.cuh), written out here
// from wgmma.cuh's comment: K-major element (m, k), MN-major (k, m).
__host__ __device__ uint32_t Swizzle128(uint32_t a) { return a ^ (((a >> 7) & 7) << 4); }
__host__ __device__ uint32_t Sw128A(const WgmmaProbeParams& p, bool trans, int m, int k) {
  return trans ? Swizzle128((k / 8) * p.a_sbo + (k % 8) * 128 + m * 2)
               : Swizzle128((m / 8) * p.a_sbo + (m % 8) * 128 + (p.a_kstep * 16 + k) * 2);
}
// A's region: a swizzled A ends with its last 8-row group's atom, whichever
// of a_sbo and the descriptor's strides reach farther.
uint32_t ARegion(const WgmmaProbeParams& p) {
  if (p.a_sw128) {
    const uint32_t groups = p.trans_a ? 1 : 7;  // the last 8-row group: of K (16) or of M (64)
    return groups * std::max({p.a_sbo, p.desc_a_sbo, p.desc_a_lbo}) + 1024;
  }
  return RoundUp16(std::max(AExtent(p.a_lbo, p.a_sbo, p.trans_a), AExtent(p.desc_a_lbo, p.desc_a_sbo, p.trans_a)));
}
// The same for B (wgmma_probe.cuh): MN-major element (k, n), 64 n along a
// row and b_lbo to the next 64; K-major (n, k), b_kstep's 16 k of each row.
__host__ __device__ uint32_t Sw128B(const WgmmaProbeParams& p, bool trans, int k, int n) {
  return trans ? Swizzle128((k / 8) * p.b_sbo + (n / 64) * p.b_lbo + (k % 8) * 128 + (n % 64) * 2)
               : Swizzle128((n / 8) * p.b_sbo + (n % 8) * 128 + (p.b_kstep * 16 + k) * 2);
}
// B's region: a swizzled B ends with the atom of its last 8-row group (and,
// MN-major, its last 64 columns), by the placement's strides or the
// descriptor's, whichever reach farther (either may be the one that steps).
uint32_t BRegion(const WgmmaProbeParams& p) {
  if (p.b_sw128) {
    const uint32_t far = std::max({p.b_lbo, p.b_sbo, p.desc_b_lbo, p.desc_b_sbo});
    // Atoms past the first: MN-major one 8-row group and n / 64 - 1 column blocks; K-major n / 8 - 1 row groups.
    const uint32_t groups = static_cast<uint32_t>(p.trans_b ? p.n / 64 : p.n / 8 - 1);
    return groups * far + 1024;
  }
  return RoundUp16(std::max(BExtent(p.b_lbo, p.b_sbo, p.n, p.trans_b),
                            BExtent(p.desc_b_lbo, p.desc_b_sbo, p.n, p.trans_b)));
}
// Where B starts: after A, on a 1024-byte atom when B is swizzled.
uint32_t BOffset(const WgmmaProbeParams& p) {
  const uint32_t a = ARegion(p);
  return p.b_sw128 ? (a + 1023u) & ~1023u : a;
}
// Slack to align a swizzled operand's atoms to 1024 bytes.
constexpr uint32_t kAlignSlack = 1024;

template <int N, bool kTransA, bool kTransB>
__global__ void __launch_bounds__(128) WgmmaProbeKernel(WgmmaProbeParams p, uint32_t b_offset, uint32_t bytes) {
  MLA_DYNAMIC_SHARED(smem_raw);
  unsigned char* smem = smem_raw + (kAlignSlack - detail::SharedAddress(smem_raw) % kAlignSlack) % kAlignSlack;
  // Zeros where no element is placed: a descriptor that reads there adds 0.
  for (uint32_t i = threadIdx.x; i < bytes / 16; i += 128) reinterpret_cast<uint4*>(smem)[i] = make_uint4(0, 0, 0, 0);
  __syncthreads();
  for (int i = threadIdx.x; i < 64 * 16; i += 128) {
    const int m = i / 16, k = i % 16;
    const uint32_t off = p.a_sw128 ? Sw128A(p, kTransA, m, k)
                         : kTransA ? MnMajor(p.a_lbo, p.a_sbo, k, m)
                                   : KMajor(p.a_lbo, p.a_sbo, m, k);
    *reinterpret_cast<__nv_bfloat16*>(smem + off) = p.a[i];
  }
  for (int i = threadIdx.x; i < 16 * N; i += 128) {
    const int k = i / N, n = i % N;
    const uint32_t off = p.b_sw128 ? Sw128B(p, kTransB, k, n)
                         : kTransB ? MnMajor(p.b_lbo, p.b_sbo, k, n)
                                   : KMajor(p.b_lbo, p.b_sbo, n, k);
    *reinterpret_cast<__nv_bfloat16*>(smem + b_offset + off) = p.b[i];
  }
  detail::FenceProxyAsync();  // the stores (generic proxy) before the mma (async proxy) reads them
  __syncthreads();
  const uint32_t base = detail::SharedAddress(smem);
  float d[N / 2];
  detail::WgmmaFence();
  const uint64_t desc_a =
      p.a_sw128 ? detail::WgmmaDescSw128(base + (kTransA ? 0 : p.a_kstep * 32), p.desc_a_lbo, p.desc_a_sbo)
                : detail::WgmmaDesc(base, p.desc_a_lbo, p.desc_a_sbo);
  const uint64_t desc_b =
      p.b_sw128 ? detail::WgmmaDescSw128(base + b_offset + (kTransB ? 0 : p.b_kstep * 32), p.desc_b_lbo, p.desc_b_sbo)
                : detail::WgmmaDesc(base + b_offset, p.desc_b_lbo, p.desc_b_sbo);
  detail::WgmmaBf16<N, kTransA, kTransB>(d, desc_a, desc_b, false);
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
  return kAlignSlack + BOffset(p) + BRegion(p);
}

cudaError_t LaunchWgmmaProbe(const WgmmaProbeParams& p, cudaStream_t stream) {
  const uint32_t strides[] = {p.a_lbo, p.a_sbo, p.b_lbo, p.b_sbo, p.desc_a_lbo, p.desc_a_sbo, p.desc_b_lbo, p.desc_b_sbo};
  const bool aligned = std::all_of(std::begin(strides), std::end(strides), [](uint32_t s) { return s % 16 == 0; }) &&
                       (!p.a_sw128 || (p.a_sbo % 1024 == 0 && p.a_kstep >= 0 && p.a_kstep < 4)) &&
                       (!p.b_sw128 || (p.b_sbo % 1024 == 0 && (!p.trans_b || p.b_lbo % 1024 == 0) &&
                                       p.b_kstep >= 0 && p.b_kstep < 4));
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
  detail::LaunchKernel(kernel, 1, 128, bytes, stream, p, BOffset(p), static_cast<uint32_t>(bytes - kAlignSlack));
  return cudaGetLastError();
}

}  // namespace mla::cuda
