#include "kernels/cuda/sampling.cuh"

#include "kernels/cuda/counter_uniform.cuh"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/launch.cuh"

namespace mla::cuda {
namespace {

constexpr int kThreads = 512;
constexpr int kNone = 0x7fffffff;

// Argmax order: larger value first, ties to the lower id; NaN is skipped.
__device__ __forceinline__ bool Better(float v, int i, float bv, int bi) {
  return bi == kNone || v > bv || (v == bv && i < bi);
}

// The row's argmax, returned to every thread (kNone for an empty or all-NaN row).
__device__ int BlockArgmax(const float* row, int64_t vocab) {
  __shared__ float sv[32];
  __shared__ int si[32];
  float bv = -INFINITY;
  int bi = kNone;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float v = row[i];
    if (v == v && Better(v, static_cast<int>(i), bv, bi)) {
      bv = v;
      bi = static_cast<int>(i);
    }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int round = 0; round < 2; ++round) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(detail::kFullMask, bv, o);
      const int oi = __shfl_xor_sync(detail::kFullMask, bi, o);
      if (oi != kNone && Better(ov, oi, bv, bi)) {
        bv = ov;
        bi = oi;
      }
    }
    if (round == 1) break;
    __syncthreads();
    if (lane == 0) {
      sv[warp] = bv;
      si[warp] = bi;
    }
    __syncthreads();
    bv = lane < warps ? sv[lane] : -INFINITY;
    bi = lane < warps ? si[lane] : kNone;
  }
  return bi;
}

// A unique key per (logit, id) whose ascending order is the CPU sampler's
// candidate order: descending logit, ties to the lower id. -0 and +0 are one value.
__device__ __forceinline__ uint64_t OrderKey(float v, int64_t id) {
  const uint32_t b = __float_as_uint(v == 0.0f ? 0.0f : v);
  const uint32_t ascending = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  return (static_cast<uint64_t>(~ascending) << 32) | static_cast<uint32_t>(id);
}

struct SelectShared {
  double mass[256];
  int count[256];
  uint64_t prefix;
  double below;
};

// Radix select, 8 bits a pass from the top: among the candidates {i : key(i) <=
// bound}, the first key x in ascending order whose inclusive cumulative weight
// W(x) = sum of weight over candidates with key <= x reaches target (W >= target,
// or W > target when strict). Where rounding leaves no key reaching it, the last
// candidate (the CPU walks off its end the same way). Candidates must exist.
// Sums run in a different order than the CPU's sequential walk: the pick can only
// differ when target lies within rounding (~1e-15 relative) of a boundary.
template <typename Weight>
__device__ uint64_t Select(const float* row, int64_t vocab, uint64_t bound, Weight weight, double target, bool strict,
                           SelectShared& sh) {
  uint64_t prefix = 0;
  double below = 0.0;
  for (int shift = 56; shift >= 0; shift -= 8) {
    const uint64_t fixed = shift == 56 ? 0 : ~0ull << (shift + 8);  // the digits chosen so far
    __syncthreads();  // everyone has read sh.prefix / sh.below
    for (int b = threadIdx.x; b < 256; b += blockDim.x) {
      sh.mass[b] = 0.0;
      sh.count[b] = 0;
    }
    __syncthreads();
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
      const float v = row[i];
      const uint64_t key = OrderKey(v, i);
      if (key > bound || (key & fixed) != prefix) continue;
      const int digit = static_cast<int>((key >> shift) & 0xff);
      atomicAdd(&sh.mass[digit], weight(v));
      atomicAdd(&sh.count[digit], 1);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      double cum = below, before_last = below;
      int pick = -1, last = -1;
      for (int b = 0; b < 256; ++b) {
        if (sh.count[b] == 0) continue;
        const double next = cum + sh.mass[b];
        if (strict ? next > target : next >= target) {
          pick = b;
          break;
        }
        before_last = cum;
        last = b;
        cum = next;
      }
      if (pick < 0) {  // nothing reaches the target: keep to the last candidate
        pick = last;
        cum = before_last;
      }
      sh.prefix = prefix | (static_cast<uint64_t>(pick) << shift);
      sh.below = cum;
    }
    __syncthreads();
    prefix = sh.prefix;
    below = sh.below;
  }
  return prefix;
}

__global__ void __launch_bounds__(kThreads) ArgmaxKernel(ArgmaxParams p) {
  const int best = BlockArgmax(p.logits + blockIdx.x * p.ld, p.vocab);
  if (threadIdx.x == 0) p.token_ids[blockIdx.x] = best == kNone ? 0 : best;
}

__global__ void __launch_bounds__(kThreads) SampleKernel(SampleParams p) {
  __shared__ SelectShared sh;
  __shared__ float fscratch[32];
  __shared__ double dscratch[32];
  const int64_t r = blockIdx.x;
  const float* row = p.logits + r * p.ld;
  const float temperature = p.temperature[r];
  const int32_t top_k = p.top_k[r];
  const float top_p = p.top_p[r];
  if (temperature == 0.0f || top_k == 1) {
    const int best = BlockArgmax(row, p.vocab);
    if (threadIdx.x == 0) p.token_ids[r] = best == kNone ? 0 : best;
    return;
  }
  float local_max = -INFINITY;
  for (int64_t i = threadIdx.x; i < p.vocab; i += blockDim.x) local_max = fmaxf(local_max, row[i]);
  const double mx = detail::BlockMax(local_max, fscratch);
  const double t = temperature;
  auto prob = [mx, t](float v) { return exp((static_cast<double>(v) - mx) / t); };
  auto mass_upto = [&](uint64_t bound) {
    double s = 0.0;
    for (int64_t i = threadIdx.x; i < p.vocab; i += blockDim.x) {
      if (OrderKey(row[i], i) <= bound) s += prob(row[i]);
    }
    return detail::BlockSum(s, dscratch);
  };

  // The top_k cut: the keep-th candidate (a count select).
  const int64_t keep = top_k > 0 && top_k < p.vocab ? top_k : p.vocab;
  uint64_t bound = ~0ull;
  if (keep < p.vocab) bound = Select(row, p.vocab, bound, [](float) { return 1.0; }, static_cast<double>(keep), false, sh);
  // The nucleus: the first candidate where the running sum of prob / sum reaches top_p.
  if (top_p < 1.0f) {
    const double sum = mass_upto(bound);
    bound = Select(row, p.vocab, bound, [&](float v) { return prob(v) / sum; }, static_cast<double>(top_p), false, sh);
  }
  // The draw: the first candidate whose running mass exceeds u * mass.
  const double mass = mass_upto(bound);
  const double u = CounterUniform(p.seed[r], p.step[r]) * mass;
  const uint64_t key = Select(row, p.vocab, bound, prob, u, true, sh);
  if (threadIdx.x == 0) p.token_ids[r] = static_cast<int32_t>(key & 0xffffffffu);
}

__global__ void CounterUniformKernel(CounterUniformParams p) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < p.n) p.out[i] = CounterUniform(p.seed[i], p.step[i]);
}

bool ValidShape(int64_t rows, int64_t vocab, int64_t ld) {
  return rows >= 0 && rows <= INT32_MAX && vocab >= 0 && vocab <= INT32_MAX && ld >= vocab;
}

}  // namespace

cudaError_t LaunchArgmax(const ArgmaxParams& p, cudaStream_t stream) {
  if (!ValidShape(p.num_rows, p.vocab, p.ld) || (p.num_rows > 0 && p.vocab == 0)) return cudaErrorInvalidValue;
  if (p.num_rows == 0) return cudaSuccess;
  detail::LaunchKernel(ArgmaxKernel, static_cast<unsigned>(p.num_rows), kThreads, 0, stream, p);
  return cudaGetLastError();
}

cudaError_t LaunchSample(const SampleParams& p, cudaStream_t stream) {
  if (!ValidShape(p.num_rows, p.vocab, p.ld) || (p.num_rows > 0 && p.vocab == 0)) return cudaErrorInvalidValue;
  if (p.num_rows == 0) return cudaSuccess;
  detail::LaunchKernel(SampleKernel, static_cast<unsigned>(p.num_rows), kThreads, 0, stream, p);
  return cudaGetLastError();
}

cudaError_t LaunchCounterUniform(const CounterUniformParams& p, cudaStream_t stream) {
  if (p.n < 0) return cudaErrorInvalidValue;
  if (p.n == 0) return cudaSuccess;
  const int threads = 256;
  detail::LaunchKernel(CounterUniformKernel, static_cast<unsigned>(detail::CeilDiv(p.n, threads)), threads, 0, stream, p);
  return cudaGetLastError();
}

}  // namespace mla::cuda
