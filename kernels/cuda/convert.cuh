// Elementwise BF16 -> FP32 widening (exact): the embedding rows, gathered in
// BF16, start the FP32 residual stream.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace mla::cuda {

struct Bf16ToF32Params {
  const __nv_bfloat16* in = nullptr;  // [n]
  float* out = nullptr;               // [n]
  int64_t n = 0;
};
cudaError_t LaunchBf16ToF32(const Bf16ToF32Params& p, cudaStream_t stream);

}  // namespace mla::cuda
