// Dense linear layers on the CPU through OpenBLAS.
#pragma once

#include <cstdint>

namespace mla::cpu {

// out[m, n] = sum_k x[m, k] * w[n, k]: a linear layer with the weight as the
// checkpoint stores it ([out_features, in_features], row-major).
//   x:   [m, k], rows ldx floats apart
//   w:   [n, k]
//   out: [m, n], rows ldo floats apart
// Batch invariance: rows go to OpenBLAS in tiles of exactly kLinearRowTile
// (the last tile zero-padded), so every call for a given weight has the same
// shape and takes the same kernel path, and row i's result is bitwise the same
// whatever other rows share the call.
inline constexpr int64_t kLinearRowTile = 8;
void Linear(const float* x, int64_t ldx, int64_t m, int64_t k, const float* w, int64_t n, float* out,
            int64_t ldo);

// Sets the number of OpenBLAS threads (process-wide).
void SetBlasThreads(int threads);

}  // namespace mla::cpu
