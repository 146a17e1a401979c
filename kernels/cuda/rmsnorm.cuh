// RMSNorm per row, with an optional fused residual add (vLLM's fused_add_rms_norm):
//   without residual: out = w * x / sqrt(mean(x^2) + eps)
//   with residual:    residual = bf16(x + residual); out = norm(residual)
// The sum is rounded to BF16 before it is normalised, so the stored residual
// stream and the normalised values agree. FP32 accumulation.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace mla::cuda {

struct RmsNormParams {
  const __nv_bfloat16* x = nullptr;       // [rows, dim], rows ldx elements apart
  __nv_bfloat16* residual = nullptr;      // [rows, dim], rows ld_residual apart; in: stream, out: x + stream. nullptr: no add
  const __nv_bfloat16* weight = nullptr;  // [dim]
  __nv_bfloat16* out = nullptr;           // [rows, dim], rows ldo apart; may alias x or residual (same strides)
  int64_t rows = 0;
  int64_t dim = 0;
  int64_t ldx = 0;
  int64_t ld_residual = 0;
  int64_t ldo = 0;
  float eps = 1e-6f;
};

cudaError_t LaunchRmsNorm(const RmsNormParams& p, cudaStream_t stream);

}  // namespace mla::cuda
