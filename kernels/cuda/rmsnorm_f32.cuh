// RMSNorm over an FP32 residual stream (the CUDA model keeps the residual and
// the all-reduced branch outputs in FP32), as kernels/cpu/rmsnorm.cc RmsNorm:
//   with delta:  x += delta (in place), then out = w * (x * inv)
//   without:     out = w * (x * inv),  inv = 1 / sqrt(mean(x^2) + eps)
// mean(x^2) in double and inv rounded to float once per row, as the CPU does;
// the output rounded once to BF16 (and optionally also stored in FP32).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace mla::cuda {

struct RmsNormF32Params {
  float* x = nullptr;                // [rows, dim] (ldx); with delta: in and out (x + delta)
  const float* delta = nullptr;      // [rows, dim] (ld_delta) added into x first; nullptr: none (x read only)
  const float* weight = nullptr;     // [dim]
  __nv_bfloat16* out = nullptr;      // [rows, dim] (ldo), BF16
  float* out_f32 = nullptr;          // [rows, dim] (ldo), the same values unrounded; nullptr: none
  int64_t rows = 0;
  int64_t dim = 0;
  int64_t ldx = 0;
  int64_t ld_delta = 0;
  int64_t ldo = 0;
  float eps = 1e-6f;
};

cudaError_t LaunchRmsNormF32(const RmsNormF32Params& p, cudaStream_t stream);

}  // namespace mla::cuda
