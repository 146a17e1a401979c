// The sampler's counter-based uniform, for host and device: bit for bit the
// function runtime/sampler.cc CounterUniform computes (splitmix64's finaliser
// applied twice; the top 53 bits as a double in [0, 1)), so a request's draw for
// token `step` is the same on either backend. Change both or neither.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define MLA_HOST_DEVICE __host__ __device__
#else
#define MLA_HOST_DEVICE
#endif

namespace mla::cuda {

MLA_HOST_DEVICE inline uint64_t SplitMix64Mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

MLA_HOST_DEVICE inline double CounterUniform(uint64_t seed, uint64_t step) {
  const uint64_t bits = SplitMix64Mix(SplitMix64Mix(seed ^ 0x9e3779b97f4a7c15ULL) + step * 0x9e3779b97f4a7c15ULL);
  return static_cast<double>(bits >> 11) * 0x1.0p-53;
}

}  // namespace mla::cuda
