#include "kernels/cpu/rmsnorm.h"

#include <cmath>

namespace mla::cpu {

void RmsNorm(const float* x, int64_t ldx, const float* w, int64_t rows, int64_t dim, float eps, float* out,
             int64_t ldo) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ldx;
    float* o = out + r * ldo;
    double sum_sq = 0.0;  // double: the mean of squares is the one long reduction here
    for (int64_t i = 0; i < dim; ++i) sum_sq += static_cast<double>(xr[i]) * xr[i];
    float inv = static_cast<float>(1.0 / std::sqrt(sum_sq / static_cast<double>(dim) + eps));
    for (int64_t i = 0; i < dim; ++i) o[i] = w[i] * (xr[i] * inv);
  }
}

}  // namespace mla::cpu
