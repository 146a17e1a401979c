// Elementwise pieces of the MLP and the residual stream (kernels/cpu/mlp.h).
// FP32 math on BF16 values, one rounding per output.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace mla::cuda {

// out = silu(gate) * up of a fused gate/up projection.
struct SiluMulParams {
  const __nv_bfloat16* gate_up = nullptr;  // [rows, 2 * inter]: gate in the first half, up in the second
  __nv_bfloat16* out = nullptr;            // [rows, inter]
  int64_t rows = 0;
  int64_t inter = 0;
};
cudaError_t LaunchSiluMul(const SiluMulParams& p, cudaStream_t stream);

// y += x (the residual add), y[i] = bf16(float(y[i]) + float(x[i])).
struct AddParams {
  __nv_bfloat16* y = nullptr;        // [n] in and out
  const __nv_bfloat16* x = nullptr;  // [n]
  int64_t n = 0;
};
cudaError_t LaunchAddInPlace(const AddParams& p, cudaStream_t stream);

}  // namespace mla::cuda
