#include "kernels/cpu/gemm.h"

#include <cblas.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace mla::cpu {

void Linear(const float* x, int64_t ldx, int64_t m, int64_t k, const float* w, int64_t n, float* out,
            int64_t ldo) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    for (int64_t i = 0; i < m; ++i) std::fill(out + i * ldo, out + i * ldo + n, 0.0f);
    return;
  }
  thread_local std::vector<float> pad_in, pad_out;
  for (int64_t r = 0; r < m; r += kLinearRowTile) {
    int64_t rows = std::min(kLinearRowTile, m - r);
    const float* a = x + r * ldx;
    int64_t lda = ldx;
    float* c = out + r * ldo;
    int64_t ldc = ldo;
    if (rows < kLinearRowTile) {
      pad_in.assign(static_cast<size_t>(kLinearRowTile * k), 0.0f);
      pad_out.resize(static_cast<size_t>(kLinearRowTile * n));
      for (int64_t i = 0; i < rows; ++i) std::memcpy(&pad_in[i * k], a + i * ldx, sizeof(float) * k);
      a = pad_in.data();
      lda = k;
      c = pad_out.data();
      ldc = n;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(kLinearRowTile), static_cast<int>(n),
                static_cast<int>(k), 1.0f, a, static_cast<int>(lda), w, static_cast<int>(k), 0.0f, c,
                static_cast<int>(ldc));
    if (rows < kLinearRowTile) {
      for (int64_t i = 0; i < rows; ++i) std::memcpy(out + (r + i) * ldo, &pad_out[i * n], sizeof(float) * n);
    }
  }
}

void SetBlasThreads(int threads) { openblas_set_num_threads(std::max(1, threads)); }

}  // namespace mla::cpu
