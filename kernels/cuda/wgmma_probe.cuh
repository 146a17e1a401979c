// One warpgroup MMA (wgmma.cuh, m64nNk16 BF16 -> FP32) on operands handed over
// in plain row-major global memory: a self-test of the conventions the wgmma
// decode kernels rely on (tests/gpu/wgmma_gpu_test.cc). The kernel places A
// and B in shared memory by wgmma.cuh's layouts (no swizzle, or 128-byte) with the caller's
// strides, multiplies through descriptors that may carry other strides (a
// wrong reading of LBO and SBO then shows as a mismatch, or as the swapped
// strides matching), and writes D out by wgmma.cuh's fragment layout.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace mla::cuda {

struct WgmmaProbeParams {
  const __nv_bfloat16* a = nullptr;  // [64, 16] row-major (m, k)
  const __nv_bfloat16* b = nullptr;  // [16, n] row-major (k, n)
  float* d = nullptr;                // [64, n] row-major
  // The shapes wgmma.cuh defines: n 32, A and B K-major; n 256, B MN-major
  // (transposed); n 16, both K-major or both MN-major.
  int n = 32;
  bool trans_a = false, trans_b = false;
  // Where the operands are placed (bytes between core matrices along K: lbo,
  // along M or N: sbo; multiples of 16), and what the descriptors say.
  uint32_t a_lbo = 128, a_sbo = 256, b_lbo = 128, b_sbo = 256;
  uint32_t desc_a_lbo = 128, desc_a_sbo = 256, desc_b_lbo = 128, desc_b_sbo = 256;
  // A 128-byte swizzled instead (wgmma.cuh; the TMA-staged 16-head decode):
  // rows of 128 bytes, 8 to a 1024-byte atom, a_sbo bytes between 8-row
  // groups (a multiple of 1024; a_lbo unused for the placement). K-major: A's
  // 16 k at k-step a_kstep (0-3) of each 64-element row, the descriptor
  // starting a_kstep * 32 bytes in; MN-major: A's 64 m along the row, 8 k
  // rows a group.
  bool a_sw128 = false;
  int a_kstep = 0;
  // B 128-byte swizzled instead (the TMA-staged 64-head decode): rows of 128
  // bytes, b_sbo bytes between 8-row groups (a multiple of 1024). MN-major:
  // B's n along the rows, 64 to an atom, b_lbo bytes to the next 64 (a
  // multiple of 1024), 8 k rows a group; K-major: B's 16 k at k-step b_kstep
  // (0-3) of each 64-element row, the descriptor starting b_kstep * 32 bytes
  // in (b_lbo unused for the placement).
  bool b_sw128 = false;
  int b_kstep = 0;
};

// Shared memory the probe needs: A, then B, each covering the farthest byte
// either the placement or the descriptors reach.
size_t WgmmaProbeSharedBytes(const WgmmaProbeParams& p);

// One block of 128 threads (one warpgroup). cudaErrorInvalidValue for a
// shape (n, trans_a, trans_b) not listed above, strides not multiples of 16
// (of 1024 for a swizzled operand's 8-row and 64-column strides), a_kstep
// or b_kstep outside 0-3, or more shared
// memory than a block may have (227 KiB).
cudaError_t LaunchWgmmaProbe(const WgmmaProbeParams& p, cudaStream_t stream);

}  // namespace mla::cuda
