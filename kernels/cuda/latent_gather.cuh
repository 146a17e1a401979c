// Reads latents back out of one layer's paged cache into a dense buffer (the
// naive prefill up-projects them with kv_b_proj), as kernels/cpu/latent_cache.h
// GatherLatents does for one sequence, over a ragged batch: output row r is
// position row_pos[r] of sequence row_seq[r].
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace mla::cuda {

struct LatentGatherParams {
  const __nv_bfloat16* cache = nullptr;   // [num_blocks, block_size, latent_dim]
  const int32_t* block_tables = nullptr;  // [num_seqs, max_blocks_per_seq]
  const int32_t* row_seq = nullptr;       // [num_rows]: the block_tables row of each output row
  const int32_t* row_pos = nullptr;       // [num_rows]: the position within that sequence
  __nv_bfloat16* out = nullptr;           // [num_rows, latent_dim]
  int64_t num_rows = 0;
  int64_t latent_dim = 0;
  int64_t num_blocks = 0;
  int block_size = 64;
  int max_blocks_per_seq = 0;
};

// A position past its table, or a block id outside [0, num_blocks), gives a
// row of NaN (a planning bug shows up in the output, never as a stray read).
cudaError_t LaunchLatentGather(const LatentGatherParams& p, cudaStream_t stream);

}  // namespace mla::cuda
