// Rotary embedding on q_pe and k_pe as DeepSeek applies it: interleaved pairs
// (x[2i], x[2i+1]) rotated by pos * inv_freq[i] (YaRN-scaled frequencies come in
// as the table kernels/cpu/rope.h RopeInvFreq makes), cos and sin times
// attention_factor. Angles are rounded to float and cos/sin taken in double,
// as kernels/cpu/rope.cc ApplyRope does, so both backends see the same rotation.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace mla::cuda {

struct RopeParams {
  // Element i < rope_dim of token t, head h at q_pe[t * q_token_stride + h * q_head_stride + i].
  // For q [tokens, heads, qk_nope + qk_rope]: q_pe = q + qk_nope, strides heads*(nope+rope) and nope+rope.
  __nv_bfloat16* q_pe = nullptr;       // [num_tokens, num_heads, rope_dim] (strided); nullptr: no q
  // Element i of token t at k_pe[t * k_token_stride + i]; for the kv_a output
  // [tokens, kv_lora + rope]: k_pe = kv_a + kv_lora, stride kv_lora + rope.
  __nv_bfloat16* k_pe = nullptr;       // [num_tokens, rope_dim] (strided); nullptr: no k
  const int32_t* positions = nullptr;  // [num_tokens]
  const float* inv_freq = nullptr;     // [rope_dim / 2]
  int64_t num_tokens = 0;
  int num_heads = 0;
  int64_t q_token_stride = 0;
  int64_t q_head_stride = 0;
  int64_t k_token_stride = 0;
  int rope_dim = 0;  // even
  float attention_factor = 1.0f;
};

cudaError_t LaunchRope(const RopeParams& p, cudaStream_t stream);

}  // namespace mla::cuda
