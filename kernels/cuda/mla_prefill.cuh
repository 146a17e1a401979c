// MLA prefill attention in the naive form (DESIGN.md section 2) over a ragged
// batch: per-head keys and values up-projected from the latents
// (kv = kv_b_proj(c_kv)), causal over the sequence's cached tokens and the new
// ones. Sequence s owns query rows [cu_seqlens_q[s], cu_seqlens_q[s+1]) and
// key rows [cu_seqlens_kv[s], cu_seqlens_kv[s+1]); its q_len queries are its
// last q_len positions: query j sits at kv_len - q_len + j and attends to
// positions [0, kv_len - q_len + j] (q_len <= kv_len; q_len 0 is allowed).
// FP32 scores, softmax and accumulation; kernels/cpu/attention.h MlaNaiveAttention
// is the reference.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace mla::cuda {

struct MlaPrefillParams {
  const __nv_bfloat16* q = nullptr;       // [total_q, num_heads, qk_nope + qk_rope], RoPE applied
  const __nv_bfloat16* kv = nullptr;      // [total_kv, num_heads, qk_nope + v_dim]: k_nope | v per head
  const __nv_bfloat16* k_pe = nullptr;    // [total_kv, k_pe_stride]: first qk_rope values, RoPE applied
  __nv_bfloat16* out = nullptr;           // [total_q, num_heads, v_dim]
  const int32_t* cu_seqlens_q = nullptr;  // [num_seqs + 1]: prefix sums of q_len, from 0
  const int32_t* cu_seqlens_kv = nullptr; // [num_seqs + 1]: prefix sums of kv_len, from 0
  int64_t total_q = 0;                    // cu_seqlens_q[num_seqs] (host copy: sizes the grid)
  int num_seqs = 0;
  int num_heads = 0;
  int qk_nope = 0;
  int qk_rope = 0;
  int v_dim = 0;
  int64_t k_pe_stride = 0;
  float scale = 0.0f;  // softmax scale, mscale^2 included
};

// qk_nope + qk_rope and v_dim must each be at most kMlaPrefillMaxDim.
inline constexpr int kMlaPrefillMaxDim = 256;
cudaError_t LaunchMlaPrefill(const MlaPrefillParams& p, cudaStream_t stream);

}  // namespace mla::cuda
