// Turns the FP32 output of kv_a_proj_with_mqa into the latent the cache stores
// (DESIGN.md section 2): [rmsnorm(c_kv) | rope(k_pe)], rounded once to BF16.
// The norm covers the kv_lora latent values only (kv_a_layernorm), as
// kernels/cpu/rmsnorm.cc (mean of squares in double, inv rounded to float);
// the rotation is kernels/cpu/rope.cc ApplyRope's (interleaved pairs, angle
// pos * inv_freq rounded to float, cos/sin in double times attention_factor).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace mla::cuda {

struct LatentNormRopeParams {
  const float* kv_a = nullptr;         // [num_tokens, kv_lora + rope_dim] (ld_in): [c_kv | k_pe] before norm and RoPE
  const float* norm_weight = nullptr;  // [kv_lora]
  const int32_t* positions = nullptr;  // [num_tokens]
  const float* inv_freq = nullptr;     // [rope_dim / 2]
  __nv_bfloat16* latent = nullptr;     // [num_tokens, kv_lora + rope_dim] (ld_out)
  int64_t num_tokens = 0;
  int64_t ld_in = 0;
  int64_t ld_out = 0;
  int kv_lora = 0;
  int rope_dim = 0;  // even
  float eps = 1e-6f;
  float attention_factor = 1.0f;
};

cudaError_t LaunchLatentNormRope(const LatentNormRopeParams& p, cudaStream_t stream);

}  // namespace mla::cuda
