// Token embedding gather over one rank's vocabulary slice (DESIGN.md section 3):
// a token outside [vocab_begin, vocab_begin + local_vocab) gives a zero row, and
// the all-reduce after the embedding completes it (as Model::Embed on the CPU).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace mla::cuda {

struct EmbeddingParams {
  const int32_t* token_ids = nullptr;    // [num_tokens]
  const __nv_bfloat16* table = nullptr;  // [local_vocab, hidden]: row r holds id vocab_begin + r
  __nv_bfloat16* out = nullptr;          // [num_tokens, hidden]
  int64_t num_tokens = 0;
  int64_t hidden = 0;
  int64_t vocab_begin = 0;
  int64_t local_vocab = 0;
};

cudaError_t LaunchEmbedding(const EmbeddingParams& p, cudaStream_t stream);

}  // namespace mla::cuda
