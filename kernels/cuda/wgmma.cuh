// Warpgroup-level tensor-core MMA (wgmma, sm_90a): the 128 threads of a
// warpgroup (4 consecutive warps) compute D[64 x N] (+)= A[64 x 16] B[16 x N]
// in BF16 with FP32 accumulators, both operands read from shared memory
// through matrix descriptors, asynchronously: an mma is issued, groups of
// them are committed, and the accumulators may be touched again only after a
// wait has retired their group. Compiled by nvcc for the device; in a host
// build the emulator (tests/emu/cuda_emu.h) has defined the same names first
// and only WgmmaDesc comes from here.
//
// Shared-memory operands without swizzling (PTX ISA, "Shared Memory Matrix
// Layout", the canonical no-swizzle layouts), in "core matrices" of 8 rows x
// 16 bytes stored as 128 contiguous bytes (row r of a core matrix at byte 16 r):
//   K-major (not transposed): a core matrix is 8 rows of M or N by 8 BF16
//     along K. Element (row, k) lies at
//       start + (row / 8) * SBO + (k / 8) * LBO + (row % 8) * 16 + (k % 8) * 2.
//   MN-major (transposed: imm-trans-a or imm-trans-b 1, BF16 only): a core
//     matrix is 8 rows of K by 8 BF16 along M or N. Element (k, n) lies at
//       start + (n / 8) * SBO + (k / 8) * LBO + (k % 8) * 16 + (n % 8) * 2
//     (for A, m in place of n).
// So LBO steps along K and SBO along M or N, in both majors.
//
// With 128-byte swizzling (WgmmaDescSw128; the layout TMA tensor copies write
// with CU_TENSOR_MAP_SWIZZLE_128B), rows of 128 bytes, 8 to a 1024-byte atom
// (1024-byte aligned), and the 16-byte chunk c of row r of an atom stored at
// chunk c ^ r: byte address a of the unswizzled layout holds what lies at
//   a ^ (((a >> 7) & 7) << 4).
// The unswizzled layouts, for operands whose one-MMA extent along the row fits
// the 128 bytes (K-major: 16 BF16 of K; MN-major: 64 of M or N):
//   K-major: element (row, k) at start + (row / 8) * SBO + (row % 8) * 128 + k * 2,
//     the next 16 k at start + 32 (LBO unused);
//   MN-major: element (k, n) at start + (k / 8) * SBO + (k % 8) * 128 + n * 2
//     for n < 64 (LBO would step to the next 64 of n).
// The kernels set LBO = SBO where LBO is unused, so a reading that swaps the
// two for MN-major still finds the same strides.
//
// Accumulator fragment of D (PTX ISA, "Matrix Fragments for
// wgmma.m64nNk16"), for thread i of the warpgroup, w = i / 32, g = (i % 32)
// / 4, t = i % 4, and column block j < N / 8:
//   d[4j + 0], d[4j + 1] = (row 16 w + g,     cols 8 j + 2 t, 8 j + 2 t + 1)
//   d[4j + 2], d[4j + 3] = (row 16 w + g + 8, the same cols)
#pragma once

#include <cstdint>

namespace mla::cuda::detail {

// A no-swizzle matrix descriptor: the operand's shared-memory start address
// (a SharedAddress, 16-byte aligned), LBO and SBO in bytes (multiples of 16,
// under 2^18). Bits: 0-13 start >> 4, 16-29 LBO >> 4, 32-45 SBO >> 4, 62-63
// swizzle mode (0: none).
__host__ __device__ __forceinline__ uint64_t WgmmaDesc(uint32_t start, uint32_t lbo, uint32_t sbo) {
  return static_cast<uint64_t>((start & 0x3FFFFu) >> 4) | (static_cast<uint64_t>((lbo & 0x3FFFFu) >> 4) << 16) |
         (static_cast<uint64_t>((sbo & 0x3FFFFu) >> 4) << 32);
}

// The same with 128-byte swizzling (bits 62-63: 1); start's 1024-byte atom
// must be aligned (base offset 0).
__host__ __device__ __forceinline__ uint64_t WgmmaDescSw128(uint32_t start, uint32_t lbo, uint32_t sbo) {
  return WgmmaDesc(start, lbo, sbo) | (uint64_t{1} << 62);
}

}  // namespace mla::cuda::detail

#if defined(__CUDACC__)

namespace mla::cuda::detail {

// Orders the warpgroup's earlier register and shared-memory writes before the
// next wgmma (required before the first mma that reads accumulators other
// instructions wrote).
__device__ __forceinline__ void WgmmaFence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }

__device__ __forceinline__ void WgmmaCommit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }

// Waits until at most N committed groups of this warpgroup are in flight.
template <int N>
__device__ __forceinline__ void WgmmaWait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// Keeps the compiler from moving reads or writes of accumulators across the
// (volatile) wait before it: each register is "redefined" here.
template <int R>
__device__ __forceinline__ void WgmmaFenceOperand(float (&d)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// D (+)= A B, m64nNk16, A K-major (kTransA false) or MN-major (true), B
// K-major (kTransB false) or MN-major (true), both from shared memory;
// accumulate false ignores D's old values. Defined for the shapes the kernels
// use: the 64-head decode's scores (n32) and P V (n256, B MN-major), the
// 16-head decode's scores (n16) and P V (n16, A and B MN-major).
template <int N, bool kTransA, bool kTransB>
__device__ void WgmmaBf16(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b, bool accumulate);

template <>
__device__ __forceinline__ void WgmmaBf16<16, false, false>(float (&d)[8], uint64_t desc_a, uint64_t desc_b,
                                                             bool accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %10, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7}, %8, %9, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
      : "l"(desc_a), "l"(desc_b), "r"(static_cast<int>(accumulate)));
}

template <>
__device__ __forceinline__ void WgmmaBf16<16, true, true>(float (&d)[8], uint64_t desc_a, uint64_t desc_b,
                                                             bool accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %10, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7}, %8, %9, p, 1, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
      : "l"(desc_a), "l"(desc_b), "r"(static_cast<int>(accumulate)));
}

template <>
__device__ __forceinline__ void WgmmaBf16<32, false, false>(float (&d)[16], uint64_t desc_a, uint64_t desc_b,
                                                             bool accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, %16, %17, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
      : "l"(desc_a), "l"(desc_b), "r"(static_cast<int>(accumulate)));
}

template <>
__device__ __forceinline__ void WgmmaBf16<256, false, true>(float (&d)[128], uint64_t desc_a, uint64_t desc_b,
                                                             bool accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, %128, %129, p, 1, 1, 0, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
        "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
        "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),
        "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),
        "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),
        "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
        "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]),
        "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),
        "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
      : "l"(desc_a), "l"(desc_b), "r"(static_cast<int>(accumulate)));
}

}  // namespace mla::cuda::detail

#endif  // __CUDACC__
