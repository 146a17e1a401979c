// Runs CUDA kernel sources on the CPU, for tests on machines without a GPU.
//
// It comes before everything else in a host build of CUDA sources
// (tests/emu/CMakeLists.txt force-includes it); kernels then run through
// kernels/cuda/launch.cuh's LaunchKernel, defined here, or mla::emu::LaunchGrid.
// Each CUDA thread of a block is a fiber on the calling thread (x86-64 only:
// the switch is a few lines of asm); blocks run one after another. Every
// block barrier and every warp-collective operation (shuffles, ldmatrix,
// mma.sync) switches fibers until all its participants have arrived, so
// kernels written for lock-step warps run unchanged. What is modelled:
//   - __syncthreads, __shfl_xor_sync, threadIdx/blockIdx/blockDim/gridDim;
//   - dynamic shared memory (MLA_DYNAMIC_SHARED), filled with 0xFF (NaN as
//     BF16 and FP32) at each block's start, so reads of unwritten shared
//     memory show up; __shared__ arrays are static (blocks never overlap);
//   - mma.sync m16n8k16 BF16 -> FP32, ldmatrix (.x2/.x4, .trans) with the
//     fragment layouts of the PTX ISA, written out here independently of the
//     kernels (warp_mma.cuh documents the same layouts);
//   - cp.async as deferred copies: a group lands only when a wait_group
//     releases it (the latest the hardware may land it), so reading a stage
//     before waiting for it reads poison; or, under SetCopiesLandAtIssue, at
//     issue (the earliest), so overwriting a stage still to be read shows;
//   - wgmma m64nNk16 BF16 -> FP32 from no-swizzle and 128-byte-swizzled
//     shared-memory descriptors (kernels/cuda/wgmma.cuh), likewise deferred:
//     each thread's mma runs at the wait that retires its group, reading
//     shared memory then (the latest the hardware may read it), so
//     accumulators read before the wait are stale and operands overwritten
//     before it change the result;
//   - bulk copies and 2-D TMA tensor copies (no swizzle or 128-byte) on
//     mbarriers with transaction counts, landing at the wait (or at issue);
//   - stream capture into graphs (cuda_runtime_emu.cc).
// Not modelled: timing, memory-model races beyond the above, warp divergence
// inside collectives (every lane must call them, as the kernels here do).
// A barrier that can never complete (a thread exited, or a divergent
// __syncthreads) aborts with a message instead of hanging.
#pragma once

#if defined(__CUDACC__)
#error "tests/emu/cuda_emu.h is for host builds of kernel sources"
#endif

// Tests built on the emulator may scale themselves down (see gpu_test_util.h).
#define MLA_CUDA_EMULATED 1

// Before the CUDA headers: they define these only where undefined.
#define __shared__ static
#define __launch_bounds__(...)
#define __grid_constant__

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <utility>

using std::max;  // device code calls min/max unqualified
using std::min;

namespace mla::emu {

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};

Dim3& ThreadIdx();
Dim3& BlockIdx();
Dim3& BlockDim();
Dim3& GridDim();
void SyncThreads();
void SyncWarp();
// What the next cudaGetLastError returns (cuda_runtime_emu.cc): launch errors.
void SetLastError(cudaError_t e);
// The dynamic shared memory a launch of `kernel` may ask for on the current
// device: 48 KiB, or what cudaFuncSetAttribute(MaxDynamicSharedMemorySize)
// raised it to there (a real launch above it fails; cuda_runtime_emu.cc).
size_t DynamicSharedLimit(const void* kernel);
// Background work on a stream (emulated NCCL operations, nccl_emu.cc): from
// Begin to End the stream is busy. StreamWait returns once it is idle: the
// runtime calls, kernel launches and GEMMs on a stream call it first, so they
// run after what was queued there before them.
struct StreamWork {
  int device;  // the legacy stream's (nullptr) is the device current at Begin
  cudaStream_t stream;
};
StreamWork StreamBeginWork(cudaStream_t stream);
void StreamEndWork(const StreamWork& work);
void StreamWait(cudaStream_t stream);
// Stream capture (cudaStreamBeginCapture to cudaStreamEndCapture): work issued
// to a capturing stream (kernel launches, async copies and memsets, emulated
// cuBLAS GEMMs) is recorded into its graph instead of run, and cudaGraphLaunch
// runs the recorded work in order. StreamRun is how work is issued: it runs
// `work` now, after the stream's earlier work, or records it (so `work` holds
// copies of its arguments) while the stream captures.
bool StreamCapturing(cudaStream_t stream);
void StreamRun(cudaStream_t stream, std::function<void()> work);
// Warp collective in two steps: every lane publishes n <= 8 words and gets the
// warp's table (row l: lane l's words), readable until every lane has called
// WarpRelease.
const uint32_t (*WarpPublish(const uint32_t* words, int n))[8];
void WarpRelease();
unsigned char* SharedBase();
size_t SharedBytes();  // the dynamic shared memory's size (bounds checks)
[[noreturn]] void Fail(const char* what);  // a kernel error: message and abort
void CpAsyncQueue(unsigned char* dst, const void* src, int src_bytes);
void CpAsyncCommitGroup();
void CpAsyncWaitGroups(int keep);
// mbarriers with transaction counts and bulk copies (kernels/cuda/warp_mma.cuh).
// A bulk copy is queued on its barrier and lands when a thread waits there, so
// a read without the wait sees the slot's old contents.
void MbarInit(unsigned char* bar, int count);
void MbarArriveExpectTx(unsigned char* bar, int bytes);
void BulkCopyQueue(unsigned char* dst, const void* src, int bytes, unsigned char* bar);
void MbarWaitParity(unsigned char* bar, int parity);
// TMA tensor copies (warp_mma.cuh's BulkTensorCopy2d). A tensor map made here
// (cuTensorMapEncodeTiled as cudaGetDriverEntryPointByVersion hands it out:
// cuda_runtime_emu.cc) holds this in its 128 bytes. A box copy is queued on
// its mbarrier as 16-byte bulk copies, each to where the map's swizzle puts
// it (128-byte swizzle: chunk c of box row r at chunk c ^ (r % 8) of the row,
// rows of 128 bytes), elements outside the tensor zero.
struct TensorMap2d {
  static constexpr uint64_t kMagic = 0x7E450A3D2D000001ull;
  uint64_t magic;
  const unsigned char* address;
  uint64_t dims[2];        // elements: inner, rows
  uint64_t row_stride;     // bytes
  uint32_t box[2];         // elements: inner, rows
  uint32_t element_bytes;
  uint32_t swizzle_bytes;  // 0 (none) or 128
};
void BulkTensorQueue(unsigned char* dst, const void* map, int x, int y, unsigned char* bar);
// wgmma (kernels/cuda/wgmma.cuh), per thread: an mma is queued with the
// calling thread's accumulators `d` (n / 2 floats) and computes that thread's
// fragment of D[64 x n] when a wait retires its group; a thread that ends
// with mmas queued (committed or not) fails, as they would never run.
void WgmmaQueue(float* d, int n, uint64_t desc_a, uint64_t desc_b, bool trans_a, bool trans_b, bool accumulate);
void WgmmaCommitGroup();
void WgmmaWaitGroups(int keep);  // runs all committed groups but the newest `keep`

// The order in which fibers get the processor: threads 0, 1, ..., the
// reverse, or a seeded random pick at every switch. A kernel missing a barrier
// may pass under one order and read poison or stale data under another; tests
// run several. kWarpFirst is kForward, except that a fiber waiting in a warp
// collective (shuffle, ldmatrix, mma.sync, __syncwarp) hands the processor to
// its own warp's lanes only, and a completed block barrier or a finished
// thread hands it to the lowest live thread: warp 0 runs on to the next
// block-wide wait before the other warps move, so a read of another warp's shared-memory stores with
// no barrier between sees the old contents even where warp collectives sit
// between the stores and the read (under round robin every fiber reaches the
// collective, having stored, before any passes it).
enum class Schedule { kForward, kReverse, kRandom, kWarpFirst };
void SetSchedule(Schedule s, uint64_t seed = 0);

// When cp.async and bulk copies land: at the wait that releases them (the
// default: the latest the hardware may, so a read before the wait sees
// poison), or at issue (true: the earliest, so a copy into a stage that
// another thread's ldmatrix or wgmma has not yet read, with no barrier
// between, changes what that thread reads). Tests run some launches each way.
void SetCopiesLandAtIssue(bool at_issue);

// Runs `kernel` for every block of `grid` with `threads` threads each (1-D
// blocks), `shared_bytes` of dynamic shared memory per block.
void LaunchGrid(Dim3 grid, int threads, size_t shared_bytes, const std::function<void()>& kernel);

template <typename T>
T ShuffleXor(T v, int mask) {
  static_assert(sizeof(T) <= 8);
  uint32_t words[2] = {0, 0};
  std::memcpy(words, &v, sizeof(T));
  const uint32_t(*all)[8] = WarpPublish(words, 2);
  T r;
  std::memcpy(&r, all[(ThreadIdx().x & 31) ^ static_cast<unsigned>(mask)], sizeof(T));
  WarpRelease();
  return r;
}

}  // namespace mla::emu

#define threadIdx (::mla::emu::ThreadIdx())
#define blockIdx (::mla::emu::BlockIdx())
#define blockDim (::mla::emu::BlockDim())
#define gridDim (::mla::emu::GridDim())
#define MLA_DYNAMIC_SHARED(name) unsigned char* name = ::mla::emu::SharedBase()

inline void __syncthreads() { ::mla::emu::SyncThreads(); }
inline void __syncwarp(unsigned /*mask*/ = 0xffffffffu) { ::mla::emu::SyncWarp(); }

// IEEE single-precision operations without contraction (the host compiler
// does not fuse them either: x86-64's baseline has no FMA).
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}
// Fibers switch only at barriers and collectives: a read-modify-write is atomic.
template <typename T>
T atomicAdd(T* address, T value) {
  const T old = *address;
  *address = old + value;
  return old;
}

template <typename T>
T atomicMin(T* address, T value) {
  const T old = *address;
  *address = std::min(old, value);
  return old;
}
template <typename T>
T atomicMax(T* address, T value) {
  const T old = *address;
  *address = std::max(old, value);
  return old;
}

// Blocks run one after another on one thread: every store is visible to
// every later load, so the fence orders nothing more and a load through L2 is
// a plain load.
inline void __threadfence() {}
template <typename T>
T __ldcg(const T* address) {
  return *address;
}

template <typename T>
T __shfl_xor_sync(unsigned /*mask: every lane, as in the kernels*/, T v, int lane_mask) {
  return ::mla::emu::ShuffleXor(v, lane_mask);
}

// The primitives of kernels/cuda/warp_mma.cuh.
namespace mla::cuda::detail {

inline uint32_t SharedAddress(const void* p) {
  return static_cast<uint32_t>(static_cast<const unsigned char*>(p) - ::mla::emu::SharedBase());
}

void MmaBf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
void LdMatrixX4(uint32_t (&r)[4], uint32_t addr);
void LdMatrixX2(uint32_t& r0, uint32_t& r1, uint32_t addr);
void LdMatrixX4Trans(uint32_t (&r)[4], uint32_t addr);
void LdMatrixX2Trans(uint32_t& r0, uint32_t& r1, uint32_t addr);

inline void CpAsync16(uint32_t dst, const void* src, int src_bytes) {
  ::mla::emu::CpAsyncQueue(::mla::emu::SharedBase() + dst, src, src_bytes);
}
inline void CpAsyncCommit() { ::mla::emu::CpAsyncCommitGroup(); }
inline void MbarInit(uint32_t bar, int count) { ::mla::emu::MbarInit(::mla::emu::SharedBase() + bar, count); }
inline void FenceMbarInit() {}    // one memory, one proxy here
inline void FenceProxyAsync() {}
inline void MbarArriveExpectTx(uint32_t bar, int bytes) {
  ::mla::emu::MbarArriveExpectTx(::mla::emu::SharedBase() + bar, bytes);
}
inline void BulkCopyG2S(uint32_t dst, const void* src, int bytes, uint32_t bar) {
  ::mla::emu::BulkCopyQueue(::mla::emu::SharedBase() + dst, src, bytes, ::mla::emu::SharedBase() + bar);
}
inline void BulkTensorCopy2d(uint32_t dst, const void* map, int x, int y, uint32_t bar) {
  ::mla::emu::BulkTensorQueue(::mla::emu::SharedBase() + dst, map, x, y, ::mla::emu::SharedBase() + bar);
}
// A hint on the GPU; here it reads the range's first and last byte, so a
// prefetch outside the allocation shows (under ASan) and a misaligned one fails.
inline void PrefetchL2(const void* src, uint32_t bytes) {
  if ((reinterpret_cast<uintptr_t>(src) & 15u) != 0 || bytes % 16 != 0 || bytes == 0) {
    ::mla::emu::Fail("cp.async.bulk.prefetch.L2: address not 16-byte aligned or size not a positive multiple of 16");
  }
  const volatile unsigned char* p = static_cast<const unsigned char*>(src);
  (void)p[0];
  (void)p[bytes - 1];
}
// The clocks of kernels/cuda/warp_mma.cuh (%globaltimer) and
// mla_decode_trace.cuh (clock64, %smid): both clocks a steady clock in ns
// (blocks run one after another here, so a trace shows no overlap), and the
// SM the block's index would take on the emulated device's 132.
inline uint64_t GlobalTimerNs() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
          .count());
}
inline uint64_t SmClock() { return GlobalTimerNs(); }
inline uint32_t SmId() { return static_cast<uint32_t>(blockIdx.x % 132); }
// limit_ns is the GPU's bound before it traps (warp_mma.cuh); here a phase
// that can never complete is known at once (every live thread waits) and fails.
inline void MbarWaitParity(uint32_t bar, int parity, uint64_t /*limit_ns*/ = 0) {
  ::mla::emu::MbarWaitParity(::mla::emu::SharedBase() + bar, parity);
}
template <int N>
void CpAsyncWait() {
  ::mla::emu::CpAsyncWaitGroups(N);
}

// The device part of kernels/cuda/wgmma.cuh (its WgmmaDesc packer is host code
// too and comes from there). The fences order registers and shared memory
// against the async proxy and keep nvcc from moving accumulator accesses
// across a wait: here there is one memory and the mma runs inside the wait
// call, so there is nothing to order.
inline void WgmmaFence() {}
inline void WgmmaCommit() { ::mla::emu::WgmmaCommitGroup(); }
template <int N>
void WgmmaWait() {
  static_assert(N >= 0, "wgmma.wait_group takes a non-negative count");
  ::mla::emu::WgmmaWaitGroups(N);
}
template <int R>
void WgmmaFenceOperand(float (& /*d*/)[R]) {}
// Every shape m64nNk16 of the PTX ISA, not only those wgmma.cuh specialises,
// so a kernel tried here with a new N runs before the device version exists.
template <int N, bool kTransA, bool kTransB>
void WgmmaBf16(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b, bool accumulate) {
  static_assert(N >= 8 && N <= 256 && N % 8 == 0, "wgmma m64nNk16: N is a multiple of 8 up to 256");
  ::mla::emu::WgmmaQueue(d, N, desc_a, desc_b, kTransA, kTransB, accumulate);
}

// kernels/cuda/launch.cuh's launcher: the grid runs to completion on the
// calling thread, once the stream's earlier background work is done (or,
// while the stream captures, when the graph runs).
template <typename... Params, typename... Args>
cudaError_t LaunchKernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream,
                         Args&&... args) {
  // The hardware's launch limits (grid y and z up to 65535; 1-D blocks of
  // whole warps here), and dynamic shared memory above 48 KiB only after the
  // kernel opted in on this device, as a real launch checks.
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535 ||
      block.x == 0 || block.x % 32 != 0 || block.y != 1 || block.z != 1 || block.x > 1024 ||
      shared_bytes > ::mla::emu::DynamicSharedLimit(reinterpret_cast<const void*>(kernel))) {
    ::mla::emu::SetLastError(cudaErrorInvalidConfiguration);
    return cudaErrorInvalidConfiguration;
  }
  // The arguments by value, as a launch copies them.
  ::mla::emu::StreamRun(stream, [kernel, grid, block, shared_bytes, ... a = std::forward<Args>(args)] {
    ::mla::emu::LaunchGrid(::mla::emu::Dim3{grid.x, grid.y, grid.z}, static_cast<int>(block.x), shared_bytes,
                           [&] { kernel(a...); });
  });
  return cudaSuccess;
}

// LaunchKernelPdl: grids run one after another here, so programmatic
// dependent launch changes nothing (device_utils.cuh's GridDependencyWait and
// GridDependentsLaunch are no-ops below).
template <typename... Params, typename... Args>
cudaError_t LaunchKernelPdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream,
                            bool /*pdl*/, Args&&... args) {
  return LaunchKernel(kernel, grid, block, shared_bytes, stream, std::forward<Args>(args)...);
}
inline void GridDependencyWait() {}
inline void GridDependentsLaunch() {}

}  // namespace mla::cuda::detail
