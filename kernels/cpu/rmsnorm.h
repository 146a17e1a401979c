#pragma once

#include <cstdint>

namespace mla::cpu {

// out[r, :] = w * x[r, :] / sqrt(mean(x[r, :]^2) + eps), per row; out may alias x.
//   x: [rows, dim], rows ldx floats apart;  w: [dim];  out: [rows, dim], rows ldo apart
void RmsNorm(const float* x, int64_t ldx, const float* w, int64_t rows, int64_t dim, float eps, float* out,
             int64_t ldo);

}  // namespace mla::cpu
