// The data movement around the routed experts (DESIGN.md section 2): the host
// groups each token's top_k choices by expert (one "dispatch row" per choice,
// experts in ascending id, a token's rows in token order within an expert),
// the hidden states are gathered into that order so each expert runs one GEMM
// over a contiguous range, and the expert outputs are combined back per token
// in slot order, as runtime/model.cc Model::Moe does on the CPU.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace mla::cuda {

// out[r] = in[rows[r]]
struct GatherRowsParams {
  const __nv_bfloat16* in = nullptr;  // [*, dim] (ld_in)
  const int32_t* rows = nullptr;      // [num_rows]: the source row of each output row
  __nv_bfloat16* out = nullptr;       // [num_rows, dim] (ldo)
  int64_t num_rows = 0;
  int64_t dim = 0;
  int64_t ld_in = 0;
  int64_t ldo = 0;
};
cudaError_t LaunchGatherRows(const GatherRowsParams& p, cudaStream_t stream);

// out[t] = (sum over j < top_k, in order, of weights[t, j] * expert_out[slot_rows[t, j]])
//          (+ out[t] when accumulate: the shared experts' output already there).
// FP32, each product and sum rounded as the CPU's `o += w * e` (no FMA).
struct MoeCombineParams {
  const float* expert_out = nullptr;  // [num_dispatch_rows, dim] (ld_expert): outputs in dispatch order
  const int32_t* slot_rows = nullptr;  // [num_tokens, top_k]: the dispatch row of token t's j-th choice
  const float* weights = nullptr;      // [num_tokens, top_k]: combine weights
  float* out = nullptr;                // [num_tokens, dim] (ldo)
  int64_t num_tokens = 0;
  int64_t dim = 0;
  int64_t ld_expert = 0;
  int64_t ldo = 0;
  int top_k = 0;
  bool accumulate = false;
};
cudaError_t LaunchMoeCombine(const MoeCombineParams& p, cudaStream_t stream);

}  // namespace mla::cuda
