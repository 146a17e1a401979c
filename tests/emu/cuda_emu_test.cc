// The emulator's own rules, where a real launch would fail and the kernel
// tests alone would not notice the emulator letting it through: the launch
// limits (grid y/z, block size), dynamic shared memory above 48 KiB only after
// cudaFuncSetAttribute on the same device, the kWarpFirst schedule (a race
// between warps that round robin hides), bulk copies that land only through
// their mbarrier's wait, wgmma against a plain matmul (its operand layouts,
// fragments and deferred execution; the failures it catches), stream capture
// into graphs (work recorded, not run, until each launch), and (in the
// _asan build) a kernel reading past a cudaMalloc'd buffer stopped by
// AddressSanitizer.
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cpu/float_convert.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/warp_mma.cuh"
#include "kernels/cuda/wgmma.cuh"

namespace mla {
namespace {

using cuda::detail::LaunchKernel;

__global__ void FillShared(int* out, int n) {
  MLA_DYNAMIC_SHARED(raw);
  int* s = reinterpret_cast<int*>(raw);
  for (int i = static_cast<int>(threadIdx.x); i < n; i += static_cast<int>(blockDim.x)) s[i] = i;
  __syncthreads();
  if (threadIdx.x == 0) out[blockIdx.x] = s[n - 1];
}

constexpr size_t kBig = 100 * 1024;  // above the 48 KiB every kernel may use

TEST(CudaEmuTest, LaunchLimitsAsOnTheHardware) {
  int* out = nullptr;
  ASSERT_EQ(cudaMalloc(&out, sizeof(int) * 4), cudaSuccess);
  EXPECT_EQ(LaunchKernel(FillShared, dim3(1, 65535), 32, 64, nullptr, out, 16), cudaSuccess);
  EXPECT_EQ(LaunchKernel(FillShared, dim3(1, 65536), 32, 64, nullptr, out, 16), cudaErrorInvalidConfiguration);
  EXPECT_EQ(LaunchKernel(FillShared, dim3(1, 1, 65536), 32, 64, nullptr, out, 16), cudaErrorInvalidConfiguration);
  EXPECT_EQ(LaunchKernel(FillShared, 1, 1056, 64, nullptr, out, 16), cudaErrorInvalidConfiguration);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);  // read once, then cleared
  EXPECT_EQ(cudaFree(out), cudaSuccess);
}

TEST(CudaEmuTest, SharedMemoryAbove48KiBNeedsTheOptInOnThatDevice) {
  ::setenv("MLA_EMU_DEVICE_COUNT", "2", 1);
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  int* out = nullptr;
  ASSERT_EQ(cudaMalloc(&out, sizeof(int) * 2), cudaSuccess);
  const int n = static_cast<int>(kBig / sizeof(int));
  EXPECT_EQ(LaunchKernel(FillShared, 2, 128, 48 * 1024, nullptr, out, 16), cudaSuccess);
  EXPECT_EQ(LaunchKernel(FillShared, 2, 128, kBig, nullptr, out, n), cudaErrorInvalidConfiguration);
  cudaGetLastError();

  const void* fn = reinterpret_cast<const void*>(&FillShared);
  EXPECT_EQ(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, 228 * 1024),
            cudaErrorInvalidValue);  // above the H100's 227 KiB
  cudaGetLastError();
  ASSERT_EQ(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kBig)),
            cudaSuccess);
  ASSERT_EQ(LaunchKernel(FillShared, 2, 128, kBig, nullptr, out, n), cudaSuccess);
  int got[2] = {0, 0};
  ASSERT_EQ(cudaMemcpy(got, out, sizeof(got), cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(got[0], n - 1);
  EXPECT_EQ(got[1], n - 1);
  EXPECT_EQ(LaunchKernel(FillShared, 1, 128, kBig + 16, nullptr, out, n), cudaErrorInvalidConfiguration);
  cudaGetLastError();

  // The attribute is the device's: device 1 has not opted in.
  ASSERT_EQ(cudaSetDevice(1), cudaSuccess);
  EXPECT_EQ(LaunchKernel(FillShared, 1, 128, kBig, nullptr, out, n), cudaErrorInvalidConfiguration);
  cudaGetLastError();
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  EXPECT_EQ(cudaFree(out), cudaSuccess);
}

// Two phases of one mbarrier: lane 0 of warp 0 expects 2 rows of `words`
// ints, lanes 0 and 1 copy them in (bulk), every thread waits for the phase's
// parity and reads. Then the same with the next two rows. mode 1 skips the
// wait (reads the slot's old contents: -1); mode 2 expects one byte more than
// arrives (the phase never completes).
__global__ void BulkRows(const int* in, int* out, int words, int mode) {
  MLA_DYNAMIC_SHARED(raw);
  int* rows = reinterpret_cast<int*>(raw + 16);  // [2, words]
  const uint32_t bar = cuda::detail::SharedAddress(raw);
  for (int i = static_cast<int>(threadIdx.x); i < 2 * words; i += static_cast<int>(blockDim.x)) rows[i] = -1;
  if (threadIdx.x == 0) cuda::detail::MbarInit(bar, 1);
  cuda::detail::FenceMbarInit();
  __syncthreads();
  for (int phase = 0; phase < 2; ++phase) {
    if (threadIdx.x < 32) {
      const int bytes = static_cast<int>(sizeof(int)) * words;
      if (threadIdx.x == 0) cuda::detail::MbarArriveExpectTx(bar, 2 * bytes + (mode == 2 ? 16 : 0));
      __syncwarp();
      if (threadIdx.x < 2) {
        cuda::detail::FenceProxyAsync();
        cuda::detail::BulkCopyG2S(cuda::detail::SharedAddress(rows + threadIdx.x * words),
                                  in + (2 * phase + threadIdx.x) * words, bytes, bar);
      }
    }
    if (mode != 1) cuda::detail::MbarWaitParity(bar, phase & 1);
    for (int i = static_cast<int>(threadIdx.x); i < 2 * words; i += static_cast<int>(blockDim.x)) {
      out[2 * phase * words + i] = rows[i];
    }
    __syncthreads();  // every thread has read the rows before the next phase's copies
    if (mode == 1) cuda::detail::MbarWaitParity(bar, phase & 1);  // lands them late
    __syncthreads();
  }
}

// Warp 1 stores, shuffles, then (no barrier) warp 0 reads its store after a
// shuffle of its own: a race. Round robin lets every fiber store before any
// passes its shuffle, so the read sees the store; kWarpFirst runs warp 0 past
// its shuffles first, so it sees the old value.
__global__ void ReadAcrossWarpsWithoutABarrier(int* out) {
  MLA_DYNAMIC_SHARED(raw);
  int* s = reinterpret_cast<int*>(raw);
  if (threadIdx.x == 0) s[0] = 0;
  __syncthreads();
  if (threadIdx.x == 32) s[0] = 7;
  const int v = __shfl_xor_sync(0xffffffffu, static_cast<int>(threadIdx.x), 1);
  if (threadIdx.x == 0) out[0] = s[0] + 0 * v;
}

TEST(CudaEmuTest, WarpFirstScheduleExposesACrossWarpRaceBehindShuffles) {
  int* out = nullptr;
  ASSERT_EQ(cudaMalloc(&out, sizeof(int)), cudaSuccess);
  int got = -1;
  emu::SetSchedule(emu::Schedule::kForward);
  ASSERT_EQ(LaunchKernel(ReadAcrossWarpsWithoutABarrier, 1, 64, sizeof(int), nullptr, out), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(&got, out, sizeof(int), cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(got, 7);  // round robin hides the race
  emu::SetSchedule(emu::Schedule::kWarpFirst);
  ASSERT_EQ(LaunchKernel(ReadAcrossWarpsWithoutABarrier, 1, 64, sizeof(int), nullptr, out), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(&got, out, sizeof(int), cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(got, 0);  // warp 0 read before warp 1 stored
  emu::SetSchedule(emu::Schedule::kForward);
  ASSERT_EQ(cudaFree(out), cudaSuccess);
}

// Thread 32 copies 7s over a stage of 0s by cp.async and waits for it only
// after a barrier at which thread 0 reads the stage: by default the copy lands
// at the wait (thread 0 reads 0); with copies landing at issue it has landed
// (7): a copy into memory another thread may still be reading shows.
__global__ void ReadAStageUnderAnUnwaitedCopy(const int* sevens, int* out) {
  MLA_DYNAMIC_SHARED(raw);
  int* s = reinterpret_cast<int*>(raw);
  if (threadIdx.x == 0) s[0] = 0;
  __syncthreads();
  if (threadIdx.x == 32) {
    cuda::detail::CpAsync16(cuda::detail::SharedAddress(s), sevens, 16);
    cuda::detail::CpAsyncCommit();
  }
  __syncthreads();
  if (threadIdx.x == 0) out[0] = s[0];
  cuda::detail::CpAsyncWait<0>();
}

TEST(CudaEmuTest, CopiesLandAtTheirWaitOrAtIssue) {
  int *sevens = nullptr, *out = nullptr;
  ASSERT_EQ(cudaMalloc(&sevens, 4 * sizeof(int)), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&out, sizeof(int)), cudaSuccess);
  const int host[4] = {7, 7, 7, 7};
  ASSERT_EQ(cudaMemcpy(sevens, host, sizeof(host), cudaMemcpyHostToDevice), cudaSuccess);
  for (bool at_issue : {false, true}) {
    emu::SetCopiesLandAtIssue(at_issue);
    int got = -1;
    ASSERT_EQ(LaunchKernel(ReadAStageUnderAnUnwaitedCopy, 1, 64, 16, nullptr, sevens, out), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(&got, out, sizeof(int), cudaMemcpyDeviceToHost), cudaSuccess);
    EXPECT_EQ(got, at_issue ? 7 : 0) << (at_issue ? "landing at issue" : "landing at the wait");
  }
  emu::SetCopiesLandAtIssue(false);
  ASSERT_EQ(cudaFree(sevens), cudaSuccess);
  ASSERT_EQ(cudaFree(out), cudaSuccess);
}

TEST(CudaEmuTest, BulkCopiesLandThroughTheirMbarrier) {
  constexpr int kWords = 36;  // 144 bytes a row: a multiple of 16
  int *in = nullptr, *out = nullptr;
  ASSERT_EQ(cudaMalloc(&in, sizeof(int) * 4 * kWords), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&out, sizeof(int) * 4 * kWords), cudaSuccess);
  std::vector<int> host(4 * kWords);
  for (int i = 0; i < 4 * kWords; ++i) host[static_cast<size_t>(i)] = 1000 + i;
  ASSERT_EQ(cudaMemcpy(in, host.data(), sizeof(int) * host.size(), cudaMemcpyHostToDevice), cudaSuccess);
  std::vector<int> got(host.size());
  for (int mode : {0, 1}) {
    ASSERT_EQ(LaunchKernel(BulkRows, 1, 64, 16 + sizeof(int) * 2 * kWords, nullptr, in, out, kWords, mode),
              cudaSuccess);
    ASSERT_EQ(cudaMemcpy(got.data(), out, sizeof(int) * got.size(), cudaMemcpyDeviceToHost), cudaSuccess);
    if (mode == 0) {
      EXPECT_EQ(got, host);
    } else {
      // Without the wait the first phase reads the initial -1s, the second
      // the first phase's rows.
      EXPECT_EQ(got[0], -1);
      EXPECT_EQ(got[2 * kWords], 1000);
    }
  }
  cudaFree(in);
  cudaFree(out);
}

TEST(CudaEmuDeathTest, AnMbarrierPhaseThatCannotCompleteIsCaught) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  constexpr int kWords = 4;
  int *in = nullptr, *out = nullptr;
  ASSERT_EQ(cudaMalloc(&in, sizeof(int) * 4 * kWords), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&out, sizeof(int) * 4 * kWords), cudaSuccess);
  EXPECT_DEATH(LaunchKernel(BulkRows, 1, 64, 16 + sizeof(int) * 2 * kWords, nullptr, in, out, kWords, 2),
               "mbarrier phase can never complete");
  cudaFree(in);
  cudaFree(out);
}

// wgmma's shared-memory operands and fragments, written out again from
// wgmma.cuh's comment: a K-major operand holds element (row of M or N, k), an
// MN-major one element (k, n); LBO steps along K, SBO along M or N.
struct Layout {
  uint32_t start, lbo, sbo;
};

uint32_t KMajorAt(const Layout& l, int row, int k) {
  return l.start + static_cast<uint32_t>((row / 8) * l.sbo + (k / 8) * l.lbo + (row % 8) * 16 + (k % 8) * 2);
}

uint32_t MnMajorAt(const Layout& l, int k, int n) {
  return l.start + static_cast<uint32_t>((n / 8) * l.sbo + (k / 8) * l.lbo + (k % 8) * 16 + (n % 8) * 2);
}

uint64_t Desc(const Layout& l) { return cuda::detail::WgmmaDesc(l.start, l.lbo, l.sbo); }

// Accumulator d[4 j + e] of thread i of a warpgroup: its row and column of D.
int FragmentRow(int i, int e) { return 16 * (i / 32) + (i % 32) / 4 + (e >= 2 ? 8 : 0); }
int FragmentCol(int i, int j, int e) { return 8 * j + 2 * (i % 4) + e % 2; }

std::vector<uint16_t> RandomBf16(size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-2.0f, 2.0f);
  std::vector<uint16_t> v(n);
  for (uint16_t& x : v) x = cpu::FloatToBf16(dist(rng));
  return v;
}

// Stores the BF16 value `bits` at byte `offset` of the dynamic shared memory.
void Put(uint32_t offset, uint16_t bits) { std::memcpy(emu::SharedBase() + offset, &bits, sizeof(bits)); }

// Row-major a[m x 16] and b[16 x n] of BF16 values: (c +) a b in float.
std::vector<float> Matmul(const std::vector<uint16_t>& a, const std::vector<uint16_t>& b, const std::vector<float>* c,
                          int m, int n) {
  std::vector<float> d(static_cast<size_t>(m * n));
  for (int r = 0; r < m; ++r) {
    for (int col = 0; col < n; ++col) {
      float sum = 0.0f;
      for (int k = 0; k < 16; ++k) sum += cpu::Bf16ToFloat(a[r * 16 + k]) * cpu::Bf16ToFloat(b[k * n + col]);
      d[r * n + col] = (c ? (*c)[r * n + col] : 0.0f) + sum;
    }
  }
  return d;
}

void ExpectNearRelative(const std::vector<float>& got, const std::vector<float>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_NEAR(got[i], want[i], 1e-4f * std::max(1.0f, std::abs(want[i]))) << "element " << i;
  }
}

// m64n32k16, A and B K-major, two warpgroups (an A tile each, one B). The core
// matrices are spread out: A's row blocks 384 bytes apart (256 used), B's K
// blocks 544 apart (512 used); the gaps keep the poison (NaN), so a read at a
// wrong offset shows. accumulate adds onto D; without it D's NaN is ignored.
TEST(CudaEmuTest, WgmmaKMajorMatchesAPlainMatmul) {
  constexpr int kN = 32, kRows = 128;
  const Layout a_tiles[2] = {{0, 128, 384}, {3072, 128, 384}};
  const Layout b_layout{6144, 544, 128};
  constexpr size_t kShared = 7232;  // B ends at 6144 + 544 + 4 * 128 = 7200
  std::mt19937 rng(7);
  const std::vector<uint16_t> a = RandomBf16(kRows * 16, rng), b = RandomBf16(16 * kN, rng);
  std::vector<float> c(kRows * kN);
  for (float& x : c) x = std::uniform_real_distribution<float>(-8.0f, 8.0f)(rng);
  for (bool accumulate : {true, false}) {
    SCOPED_TRACE(accumulate ? "accumulate" : "overwrite");
    std::vector<float> got(kRows * kN, 0.0f);
    emu::LaunchGrid(emu::Dim3{}, 256, kShared, [&] {
      const int tid = static_cast<int>(threadIdx.x), threads = static_cast<int>(blockDim.x);
      const int wg = tid / 128, i = tid % 128;
      for (int x = tid; x < kRows * 16; x += threads) Put(KMajorAt(a_tiles[x / 16 / 64], x / 16 % 64, x % 16), a[x]);
      for (int x = tid; x < 16 * kN; x += threads) Put(KMajorAt(b_layout, x % kN, x / kN), b[x]);
      float d[kN / 2];
      for (int j = 0; j < kN / 8; ++j) {
        for (int e = 0; e < 4; ++e) {
          d[4 * j + e] = accumulate ? c[(64 * wg + FragmentRow(i, e)) * kN + FragmentCol(i, j, e)] : NAN;
        }
      }
      __syncthreads();
      cuda::detail::WgmmaFence();
      cuda::detail::WgmmaBf16<kN, false, false>(d, Desc(a_tiles[wg]), Desc(b_layout), accumulate);
      cuda::detail::WgmmaCommit();
      cuda::detail::WgmmaWait<0>();
      cuda::detail::WgmmaFenceOperand(d);
      for (int j = 0; j < kN / 8; ++j) {
        for (int e = 0; e < 4; ++e) got[(64 * wg + FragmentRow(i, e)) * kN + FragmentCol(i, j, e)] = d[4 * j + e];
      }
    });
    ExpectNearRelative(got, Matmul(a, b, accumulate ? &c : nullptr, kRows, kN));
  }
}

// m64n256k16 with B MN-major (kTransB): B's N blocks 272 bytes apart (256
// used), A's K blocks 1056 apart (1024 used).
TEST(CudaEmuTest, WgmmaMnMajorBMatchesAPlainMatmul) {
  constexpr int kN = 256;
  const Layout a_layout{0, 1056, 128}, b_layout{2304, 128, 272};
  constexpr size_t kShared = 11008;  // B ends at 2304 + 31 * 272 + 256 = 10992
  std::mt19937 rng(11);
  const std::vector<uint16_t> a = RandomBf16(64 * 16, rng), b = RandomBf16(16 * kN, rng);
  std::vector<float> c(64 * kN);
  for (float& x : c) x = std::uniform_real_distribution<float>(-8.0f, 8.0f)(rng);
  std::vector<float> got(64 * kN, 0.0f);
  emu::LaunchGrid(emu::Dim3{}, 128, kShared, [&] {
    const int i = static_cast<int>(threadIdx.x);
    for (int x = i; x < 64 * 16; x += 128) Put(KMajorAt(a_layout, x / 16, x % 16), a[x]);
    for (int x = i; x < 16 * kN; x += 128) Put(MnMajorAt(b_layout, x / kN, x % kN), b[x]);
    float d[kN / 2];
    for (int j = 0; j < kN / 8; ++j) {
      for (int e = 0; e < 4; ++e) d[4 * j + e] = c[FragmentRow(i, e) * kN + FragmentCol(i, j, e)];
    }
    __syncthreads();
    cuda::detail::WgmmaFence();
    cuda::detail::WgmmaBf16<kN, false, true>(d, Desc(a_layout), Desc(b_layout), true);
    cuda::detail::WgmmaCommit();
    cuda::detail::WgmmaWait<0>();
    cuda::detail::WgmmaFenceOperand(d);
    for (int j = 0; j < kN / 8; ++j) {
      for (int e = 0; e < 4; ++e) got[FragmentRow(i, e) * kN + FragmentCol(i, j, e)] = d[4 * j + e];
    }
  });
  ExpectNearRelative(got, Matmul(a, b, &c, 64, kN));
}

// m64n16k16 with A and B both MN-major (kTransA, kTransB), the 16-head
// decode's P V: A's M blocks 144 bytes apart (128 used) and K blocks 1280
// apart, B's N blocks 272 apart; the gaps keep the poison.
TEST(CudaEmuTest, WgmmaMnMajorAMatchesAPlainMatmul) {
  constexpr int kN = 16;
  const Layout a_layout{0, 1280, 144}, b_layout{2560, 128, 272};
  constexpr size_t kShared = 3088;  // A ends at 2416; B at 2560 + 272 + 128 + 7 * 16 + 16
  std::mt19937 rng(17);
  const std::vector<uint16_t> a = RandomBf16(64 * 16, rng), b = RandomBf16(16 * kN, rng);
  std::vector<float> got(64 * kN, 0.0f);
  emu::LaunchGrid(emu::Dim3{}, 128, kShared, [&] {
    const int i = static_cast<int>(threadIdx.x);
    for (int x = i; x < 64 * 16; x += 128) Put(MnMajorAt(a_layout, x % 16, x / 16), a[x]);
    for (int x = i; x < 16 * kN; x += 128) Put(MnMajorAt(b_layout, x / kN, x % kN), b[x]);
    float d[kN / 2];
    __syncthreads();
    cuda::detail::WgmmaFence();
    cuda::detail::WgmmaBf16<kN, true, true>(d, Desc(a_layout), Desc(b_layout), false);
    cuda::detail::WgmmaCommit();
    cuda::detail::WgmmaWait<0>();
    cuda::detail::WgmmaFenceOperand(d);
    for (int j = 0; j < kN / 8; ++j) {
      for (int e = 0; e < 4; ++e) got[FragmentRow(i, e) * kN + FragmentCol(i, j, e)] = d[4 * j + e];
    }
  });
  ExpectNearRelative(got, Matmul(a, b, nullptr, 64, kN));
}

// TMA tensor copies with 128-byte swizzle and wgmma reading them, the 16-head
// decode's staging by TMA: a [64 x 128] BF16 matrix G lands as two 64 x 64
// boxes, chunk c of row r at chunk c ^ (r % 8) of the row (pinned here byte
// by byte); then m64n16k16 reads box 0 as a K-major A (G's rows as M, k-step
// 1: columns 16..31) and box 1 as an MN-major A (G's rows 16..31 as K,
// columns 64..127 as M), each against a no-swizzle K-major B.
TEST(CudaEmuTest, TmaSwizzledBoxesAndWgmmaReadingThem) {
  constexpr int kRows = 64, kCols = 128, kN = 16;
  std::mt19937 rng(23);
  const std::vector<uint16_t> g = RandomBf16(kRows * kCols, rng), b = RandomBf16(16 * kN, rng);
  uint16_t* global = nullptr;
  ASSERT_EQ(cudaMalloc(&global, g.size() * sizeof(uint16_t)), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(global, g.data(), g.size() * sizeof(uint16_t), cudaMemcpyHostToDevice), cudaSuccess);
  void* encode_fn = nullptr;
  cudaDriverEntryPointQueryResult found{};
  ASSERT_EQ(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &encode_fn, 12000, cudaEnableDefault, &found),
            cudaSuccess);
  ASSERT_EQ(found, cudaDriverEntryPointSuccess);
  const auto encode = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(encode_fn);
  CUtensorMap map{};
  const cuuint64_t dims[2] = {kCols, kRows}, strides[1] = {kCols * 2};
  const cuuint32_t box[2] = {64, 64}, unit[2] = {1, 1};
  ASSERT_EQ(encode(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, global, dims, strides, box, unit,
                   CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_NONE,
                   CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE),
            CUDA_SUCCESS);
  const cuuint32_t wide_box[2] = {128, 64};  // 256-byte rows: more than the 128-byte swizzle spans
  CUtensorMap bad{};
  EXPECT_EQ(encode(&bad, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, global, dims, strides, wide_box, unit,
                   CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_NONE,
                   CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE),
            CUDA_ERROR_INVALID_VALUE);

  constexpr uint32_t kBox = 8192, kB = 2 * kBox, kBar = kB + 512;
  constexpr size_t kShared = kBar + 16;
  const Layout b_layout{kB, 128, 256};
  std::vector<unsigned char> landed(2 * kBox);
  std::vector<float> got_k(64 * kN), got_mn(64 * kN);
  emu::LaunchGrid(emu::Dim3{}, 128, kShared, [&] {
    const int i = static_cast<int>(threadIdx.x);
    for (int x = i; x < 16 * kN; x += 128) Put(KMajorAt(b_layout, x % kN, x / kN), b[x]);
    if (i == 0) {
      cuda::detail::MbarInit(kBar, 1);
      cuda::detail::MbarArriveExpectTx(kBar, 2 * kBox);
      cuda::detail::BulkTensorCopy2d(0, &map, 0, 0, kBar);
      cuda::detail::BulkTensorCopy2d(kBox, &map, 64, 0, kBar);
    }
    __syncthreads();
    cuda::detail::MbarWaitParity(kBar, 0);
    if (i == 0) std::memcpy(landed.data(), emu::SharedBase(), landed.size());
    for (int pass = 0; pass < 2; ++pass) {
      const uint64_t a_desc = pass == 0 ? cuda::detail::WgmmaDescSw128(32, 1024, 1024)            // k-step 1 of box 0
                                        : cuda::detail::WgmmaDescSw128(kBox + 2048, 1024, 1024);  // rows 16.. of box 1
      float d[kN / 2];
      cuda::detail::WgmmaFence();
      if (pass == 0) {
        cuda::detail::WgmmaBf16<kN, false, false>(d, a_desc, Desc(b_layout), false);
      } else {
        cuda::detail::WgmmaBf16<kN, true, false>(d, a_desc, Desc(b_layout), false);
      }
      cuda::detail::WgmmaCommit();
      cuda::detail::WgmmaWait<0>();
      cuda::detail::WgmmaFenceOperand(d);
      std::vector<float>& got = pass == 0 ? got_k : got_mn;
      for (int j = 0; j < kN / 8; ++j) {
        for (int e = 0; e < 4; ++e) got[FragmentRow(i, e) * kN + FragmentCol(i, j, e)] = d[4 * j + e];
      }
    }
  });
  for (int bx = 0; bx < 2; ++bx) {
    for (int r = 0; r < 64; ++r) {
      for (int c = 0; c < 8; ++c) {
        uint16_t chunk[8];
        std::memcpy(chunk, landed.data() + bx * kBox + r * 128 + ((c ^ (r % 8)) * 16), sizeof(chunk));
        for (int e = 0; e < 8; ++e) {
          ASSERT_EQ(chunk[e], g[r * kCols + 64 * bx + 8 * c + e]) << "box " << bx << " row " << r << " chunk " << c;
        }
      }
    }
  }
  std::vector<uint16_t> a_k(64 * 16), a_mn(64 * 16);
  for (int m = 0; m < 64; ++m) {
    for (int k = 0; k < 16; ++k) {
      a_k[m * 16 + k] = g[m * kCols + 16 + k];
      a_mn[m * 16 + k] = g[(16 + k) * kCols + 64 + m];
    }
  }
  ExpectNearRelative(got_k, Matmul(a_k, b, nullptr, 64, kN));
  ExpectNearRelative(got_mn, Matmul(a_mn, b, nullptr, 64, kN));
  EXPECT_EQ(cudaFree(global), cudaSuccess);
}

// Two groups in flight: A B1 (N 16, K-major B) and then A B2 (N 8, MN-major).
// Before any wait both accumulators are stale; WgmmaWait<1> runs only the
// older; B2 rewritten before WgmmaWait<0> is what the newer one reads (on the
// hardware a race: the emulator reads at the latest moment the hardware may).
TEST(CudaEmuTest, WgmmaWaitRetiresOnlyOlderGroups) {
  const Layout a_layout{0, 128, 256}, b1_layout{2048, 128, 256}, b2_layout{2560, 128, 256};
  constexpr size_t kShared = 2816;  // B2 ends at 2560 + 2 * 128
  constexpr float kStale = 7.0f;
  std::mt19937 rng(13);
  const std::vector<uint16_t> a = RandomBf16(64 * 16, rng), b1 = RandomBf16(16 * 16, rng),
                              b2_old = RandomBf16(16 * 8, rng), b2 = RandomBf16(16 * 8, rng);
  std::vector<float> got1(64 * 16, 0.0f), got2(64 * 8, 0.0f);
  bool stale_before_waits = true, d2_stale_after_first_wait = true;
  emu::LaunchGrid(emu::Dim3{}, 128, kShared, [&] {
    const int i = static_cast<int>(threadIdx.x);
    for (int x = i; x < 64 * 16; x += 128) Put(KMajorAt(a_layout, x / 16, x % 16), a[x]);
    for (int x = i; x < 16 * 16; x += 128) Put(KMajorAt(b1_layout, x % 16, x / 16), b1[x]);
    for (int x = i; x < 16 * 8; x += 128) Put(MnMajorAt(b2_layout, x / 8, x % 8), b2_old[x]);
    float d1[8], d2[4];
    std::fill(d1, d1 + 8, kStale);
    std::fill(d2, d2 + 4, kStale);
    __syncthreads();
    cuda::detail::WgmmaFence();
    cuda::detail::WgmmaBf16<16, false, false>(d1, Desc(a_layout), Desc(b1_layout), false);
    cuda::detail::WgmmaCommit();
    cuda::detail::WgmmaBf16<8, false, true>(d2, Desc(a_layout), Desc(b2_layout), false);
    cuda::detail::WgmmaCommit();
    for (float v : d1) stale_before_waits &= v == kStale;
    for (float v : d2) stale_before_waits &= v == kStale;
    cuda::detail::WgmmaWait<1>();
    cuda::detail::WgmmaFenceOperand(d1);
    for (float v : d2) d2_stale_after_first_wait &= v == kStale;
    for (int j = 0; j < 2; ++j) {
      for (int e = 0; e < 4; ++e) got1[FragmentRow(i, e) * 16 + FragmentCol(i, j, e)] = d1[4 * j + e];
    }
    __syncthreads();
    for (int x = i; x < 16 * 8; x += 128) Put(MnMajorAt(b2_layout, x / 8, x % 8), b2[x]);
    __syncthreads();
    cuda::detail::WgmmaWait<0>();
    cuda::detail::WgmmaFenceOperand(d2);
    for (int e = 0; e < 4; ++e) got2[FragmentRow(i, e) * 8 + FragmentCol(i, 0, e)] = d2[e];
  });
  EXPECT_TRUE(stale_before_waits);
  EXPECT_TRUE(d2_stale_after_first_wait);
  ExpectNearRelative(got1, Matmul(a, b1, nullptr, 64, 16));
  ExpectNearRelative(got2, Matmul(a, b2, nullptr, 64, 8));
}

// One m64n8k16 (K-major A and B) per thread, then commit and wait or not.
enum class WgmmaEnd { kWait, kNoWait, kNoCommit };

void OneWgmma(int threads, size_t shared, uint64_t desc_a, uint64_t desc_b, WgmmaEnd end) {
  emu::LaunchGrid(emu::Dim3{}, threads, shared, [&] {
    float d[4] = {};
    cuda::detail::WgmmaBf16<8, false, false>(d, desc_a, desc_b, false);
    if (end != WgmmaEnd::kNoCommit) cuda::detail::WgmmaCommit();
    if (end != WgmmaEnd::kNoWait) cuda::detail::WgmmaWait<0>();  // kNoCommit: retires nothing
  });
}

// A 2048 bytes, B 256 after it.
const Layout kOneA{0, 128, 256}, kOneB{2048, 128, 128};
constexpr size_t kOneShared = 2304;

TEST(CudaEmuDeathTest, WgmmaNeverWaitedForIsCaught) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  OneWgmma(128, kOneShared, Desc(kOneA), Desc(kOneB), WgmmaEnd::kWait);  // fine
  EXPECT_DEATH(OneWgmma(128, kOneShared, Desc(kOneA), Desc(kOneB), WgmmaEnd::kNoWait),
               "a thread finished with wgmma ops never waited for");
  EXPECT_DEATH(OneWgmma(128, kOneShared, Desc(kOneA), Desc(kOneB), WgmmaEnd::kNoCommit),
               "a thread finished with wgmma ops never waited for");
}

TEST(CudaEmuDeathTest, WgmmaBadOperandsAreCaught) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  // A's last row block at 7 * 512: past the 2304 bytes.
  EXPECT_DEATH(OneWgmma(128, kOneShared, Desc({0, 128, 512}), Desc(kOneB), WgmmaEnd::kWait),
               "wgmma operand outside the dynamic shared memory");
  EXPECT_DEATH(OneWgmma(128, kOneShared, Desc(kOneA), Desc({2064, 128, 128}), WgmmaEnd::kWait),
               "wgmma operand outside the dynamic shared memory");
  EXPECT_DEATH(OneWgmma(128, kOneShared, Desc(kOneA) | (uint64_t{2} << 62), Desc(kOneB), WgmmaEnd::kWait),
               "wgmma descriptor with a 64- or 32-byte swizzle");
  // 128-byte swizzled: from the first row of a 1024-byte atom only (here byte
  // 128 of it); and the atom's end must fit (A's 8 row groups 1024 apart).
  EXPECT_DEATH(OneWgmma(128, kOneShared, cuda::detail::WgmmaDescSw128(128, 1024, 1024), Desc(kOneB), WgmmaEnd::kWait),
               "128-byte swizzled wgmma operand starting past the first row");
  EXPECT_DEATH(OneWgmma(128, kOneShared, cuda::detail::WgmmaDescSw128(0, 1024, 1024), Desc(kOneB), WgmmaEnd::kWait),
               "wgmma operand outside the dynamic shared memory");
  EXPECT_DEATH(OneWgmma(128, kOneShared, Desc(kOneA), Desc(kOneB) | (uint64_t{1} << 49), WgmmaEnd::kWait),
               "wgmma descriptor with a non-zero base offset");
  EXPECT_DEATH(OneWgmma(96, kOneShared, Desc(kOneA), Desc(kOneB), WgmmaEnd::kWait),
               "wgmma needs threads per block in whole warpgroups");
}

__global__ void AddOne(int* x, int n) {
  for (int i = static_cast<int>(threadIdx.x); i < n; i += static_cast<int>(blockDim.x)) x[i] += 1;
}

TEST(CudaEmuTest, StreamCaptureRecordsWorkThatEachGraphLaunchRuns) {
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  int* x = nullptr;
  ASSERT_EQ(cudaMalloc(&x, sizeof(int) * 4), cudaSuccess);
  ASSERT_EQ(cudaMemset(x, 0, sizeof(int) * 4), cudaSuccess);
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  EXPECT_EQ(cudaStreamBeginCapture(nullptr, cudaStreamCaptureModeGlobal), cudaErrorStreamCaptureUnsupported);
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
  ASSERT_EQ(LaunchKernel(AddOne, 1, 32, 0, stream, x, 4), cudaSuccess);
  ASSERT_EQ(cudaMemsetAsync(x + 3, 0, sizeof(int), stream), cudaSuccess);
  EXPECT_EQ(x[0], 0) << "captured work ran at capture";  // emulated device memory is host memory
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  int got[4] = {};
  ASSERT_EQ(cudaMemcpy(got, x, sizeof(got), cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(got[0], 2);
  EXPECT_EQ(got[2], 2);
  EXPECT_EQ(got[3], 0);  // the memset after the kernel, each launch
  // A synchronising call while a stream of the device captures fails and
  // invalidates the capture, as in CUDA's global capture mode.
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaErrorStreamCaptureUnsupported);
  cudaGraph_t broken = nullptr;
  EXPECT_EQ(cudaStreamEndCapture(stream, &broken), cudaErrorStreamCaptureInvalidated);
  EXPECT_EQ(broken, nullptr);
  EXPECT_EQ(cudaStreamEndCapture(stream, &broken), cudaErrorIllegalState);  // no capture left
  cudaGetLastError();
  EXPECT_EQ(cudaGraphExecDestroy(exec), cudaSuccess);
  EXPECT_EQ(cudaGraphDestroy(graph), cudaSuccess);
  EXPECT_EQ(cudaStreamDestroy(stream), cudaSuccess);
  EXPECT_EQ(cudaFree(x), cudaSuccess);
}

#if defined(__SANITIZE_ADDRESS__)
// Device buffers are exactly the size asked for: one element past the end is
// caught, where cudaMalloc's 256-byte rounding would have hidden it.
__global__ void CopyN(const int* in, int* out, int n) {
  for (int i = static_cast<int>(threadIdx.x); i < n; i += static_cast<int>(blockDim.x)) out[i] = in[i];
}

TEST(CudaEmuDeathTest, ReadPastADeviceBufferIsCaught) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  int *in = nullptr, *out = nullptr;
  ASSERT_EQ(cudaMalloc(&in, sizeof(int) * 10), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&out, sizeof(int) * 11), cudaSuccess);
  EXPECT_EQ(LaunchKernel(CopyN, 1, 32, 0, nullptr, in, out, 10), cudaSuccess);
  EXPECT_DEATH(LaunchKernel(CopyN, 1, 32, 0, nullptr, in, out, 11), "heap-buffer-overflow");
  cudaFree(in);
  cudaFree(out);
}
#endif

}  // namespace
}  // namespace mla
