// Warp-level tensor-core and async-copy primitives (PTX, sm_80 and later;
// the bulk copies and mbarrier transaction counts sm_90):
// BF16 mma.sync m16n8k16 with FP32 accumulators, ldmatrix, cp.async. Compiled by nvcc for the device; in a
// host build (tests/emu/cuda_emu.h, which runs kernel sources on the CPU) the
// emulator has defined the same names first and only PackBf16 comes from here.
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16"), with
// g = lane / 4 and t = lane % 4:
//   A (16 x 16, row major), 4 x b32 (2 bf16 each):
//     a0 = (row g, cols 2t..2t+1)   a1 = (row g+8, cols 2t..2t+1)
//     a2 = (row g, cols 2t+8..+9)   a3 = (row g+8, cols 2t+8..+9)
//   B (16 x 8, "col": k runs fastest), 2 x b32:
//     b0 = (rows k = 2t..2t+1, col g)   b1 = (rows k = 2t+8..2t+9, col g)
//   C, D (16 x 8 FP32): c0, c1 = (row g, cols 2t, 2t+1); c2, c3 = (row g+8, same cols)
// ldmatrix .x4 loads four 8 x 8 b16 matrices; lanes 8i..8i+7 give the row
// addresses of matrix i, and register i of lane l holds matrix i's row l / 4,
// elements 2(l % 4) and 2(l % 4) + 1 (.trans: of the transposed matrix).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <cstring>

namespace mla::cuda::detail {

// How long MbarWaitParity lets a phase stay open before it traps (ns): the
// copies and arrivals these kernels wait for take microseconds; the bound is
// short beside the callers' own (a GPU test binary's 150 s in run.sh, a
// benchmark variant's 120 s), so a hung copy costs seconds of a lent GPU.
inline constexpr uint64_t kMbarWaitLimitNs = 10'000'000'000;

}  // namespace mla::cuda::detail

#if defined(__CUDACC__)

namespace mla::cuda::detail {

__device__ __forceinline__ uint32_t SharedAddress(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// D += A B.
__device__ __forceinline__ void MmaBf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

// Lanes 0..15 give the addresses (matrices 0 and 1); the others are ignored.
__device__ __forceinline__ void LdMatrixX2(uint32_t& r0, uint32_t& r1, uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r0), "=r"(r1)
               : "r"(addr)
               : "memory");
}

__device__ __forceinline__ void LdMatrixX4Trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

__device__ __forceinline__ void LdMatrixX2Trans(uint32_t& r0, uint32_t& r1, uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r0), "=r"(r1)
               : "r"(addr)
               : "memory");
}

// 16 bytes global -> shared, bypassing L1. src_bytes 0 writes zeros and reads
// nothing (src must still be a valid address expression).
__device__ __forceinline__ void CpAsync16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes)
               : "memory");
}

__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Waits until at most N committed groups of this thread are still in flight.
template <int N>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Bulk copies (sm_90, the TMA engine without a tensor map) completing on an
// mbarrier in shared memory. One thread initialises the barrier for `count`
// arrivals; a producer arrives with the bytes it expects, then issues copies
// of whole rows (bytes a multiple of 16, both addresses 16-byte aligned) that
// complete that many bytes on it; consumers wait for the phase's parity.
__device__ __forceinline__ void MbarInit(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}

// Makes barrier initialisation visible to the asynchronous proxy (the copies).
__device__ __forceinline__ void FenceMbarInit() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

// Orders this thread's earlier shared-memory accesses before later bulk copies.
__device__ __forceinline__ void FenceProxyAsync() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

__device__ __forceinline__ void MbarArriveExpectTx(uint32_t bar, int bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}

__device__ __forceinline__ void BulkCopyG2S(uint32_t dst, const void* src, int bytes, uint32_t bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
               "l"(src), "r"(bytes), "r"(bar)
               : "memory");
}

// A TMA tensor copy of one box of a 2-D tensor map (cuTensorMapEncodeTiled)
// at element coordinates (x: inner dimension, y: rows) into shared memory at
// dst (1024-byte aligned for a 128-byte-swizzled map), completing the box's
// bytes on the mbarrier. `map` is the address of the map in kernel-parameter
// (__grid_constant__), constant or global memory.
__device__ __forceinline__ void BulkTensorCopy2d(uint32_t dst, const void* map, int x, int y, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::
          "r"(dst),
      "l"(map), "r"(x), "r"(y), "r"(bar)
      : "memory");
}

// Asks L2 to fetch [src, src + bytes) from global memory (sm_90 bulk prefetch:
// no registers, no shared memory, no completion to wait for; a hint). src
// 16-byte aligned, bytes a multiple of 16.
__device__ __forceinline__ void PrefetchL2(const void* src, uint32_t bytes) {
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(src), "r"(bytes) : "memory");
}

// Whether the phase of parity `parity` has completed; a thread may sleep in
// here for a while first (try_wait's system-dependent time limit).
__device__ __forceinline__ bool MbarTryWaitParity(uint32_t bar, int parity) {
  uint32_t done;
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      "selp.b32 %0, 1, 0, p;\n"
      "}\n"
      : "=r"(done)
      : "r"(bar), "r"(parity)
      : "memory");
  return done != 0;
}

// The GPU's global nanosecond timer (%globaltimer).
__device__ __forceinline__ uint64_t GlobalTimerNs() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t));
  return t;
}

// Returns once the phase of parity `parity` has completed. A phase still
// open after limit_ns (a copy that never lands, bytes expected that no copy
// brings, an arrival that never comes: bugs) ends the kernel by a trap: the
// launch fails with a sticky error (the context is lost), so the process
// ends in seconds instead of spinning until a test's or a worker's own
// timeout kills it. (A debugger holding the kernel stopped that long trips it
// too. No printf: its argument buffer would give every kernel that waits a
// stack frame.)
__device__ __forceinline__ void MbarWaitParity(uint32_t bar, int parity, uint64_t limit_ns = kMbarWaitLimitNs) {
  if (MbarTryWaitParity(bar, parity)) return;
  const uint64_t start = GlobalTimerNs();
  while (!MbarTryWaitParity(bar, parity)) {
    if (GlobalTimerNs() - start > limit_ns) __trap();
  }
}

}  // namespace mla::cuda::detail

#endif  // __CUDACC__

namespace mla::cuda::detail {

__host__ __device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x = lo (lower address)
  uint32_t bits;
  memcpy(&bits, &v, sizeof(bits));
  return bits;
}

}  // namespace mla::cuda::detail
