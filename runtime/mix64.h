// splitmix64's finaliser: a bijective 64-bit mix, the building block of the
// counter-based sampler stream and the prefix-cache block hashes.
#pragma once

#include <cstdint>

namespace mla {

inline uint64_t Mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

}  // namespace mla
