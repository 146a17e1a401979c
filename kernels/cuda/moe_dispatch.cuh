// The data movement around the routed experts (DESIGN.md section 2): each
// token's top_k choices are grouped by expert (one "dispatch row" per choice,
// experts in ascending id, a token's rows in token order within an expert),
// by the host or on the device (MoeGroupByExpert: no download of the expert
// ids, so no wait for the host in the middle of a step), the hidden states
// are gathered into that order so each expert runs one GEMM over a contiguous
// range, and the expert outputs are combined back per token in slot order, as
// runtime/model.cc Model::Moe does on the CPU.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace mla::cuda {

// The grouping on the device, in one block: expert_rows[e] .. expert_rows[e + 1]
// are expert e's dispatch rows; gather_rows[r] is the token of dispatch row r
// and slot_rows[s] the dispatch row of slot s (= token * top_k + j): the
// order the host grouping gives. An expert id outside [0, num_experts) (a
// routing bug) is grouped as the nearest valid one, so every row stays in
// bounds, and counted into *bad_ids for the caller to report.
struct MoeGroupParams {
  const int32_t* expert_ids = nullptr;  // [num_tokens, top_k]
  int64_t num_tokens = 0;
  int top_k = 0;
  int num_experts = 0;                  // at most kMoeGroupMaxExperts
  int32_t* expert_rows = nullptr;       // [num_experts + 1]
  int32_t* gather_rows = nullptr;       // [num_tokens * top_k]
  int32_t* slot_rows = nullptr;         // [num_tokens * top_k]
  int32_t* bad_ids = nullptr;           // [1]: incremented by each out-of-range id (never reset here)
};
inline constexpr int kMoeGroupMaxExperts = 1024;  // one thread an expert
cudaError_t LaunchMoeGroupByExpert(const MoeGroupParams& p, cudaStream_t stream);

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
