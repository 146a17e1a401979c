// Appends new tokens' latents to one layer's paged latent cache
// [num_blocks, block_size, latent_dim] (FlashMLA's layout: block_size 64,
// latent_dim kv_lora + qk_rope = 576), as kernels/cpu/latent_cache.h WriteLatent.
// Position pos of sequence s lives in block block_tables[s][pos / block_size],
// row pos % block_size.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace mla::cuda {

struct LatentAppendParams {
  const __nv_bfloat16* latent = nullptr;  // [num_tokens, latent_stride]: first latent_dim = [c_kv | rope(k_pe)]
  __nv_bfloat16* cache = nullptr;         // [num_blocks, block_size, latent_dim]
  const int32_t* block_tables = nullptr;  // [num_seqs, max_blocks_per_seq]
  const int32_t* token_seq = nullptr;     // [num_tokens]: the block_tables row of each token
  const int32_t* positions = nullptr;     // [num_tokens]: position within its sequence
  int64_t num_tokens = 0;
  int64_t latent_dim = 0;
  int64_t latent_stride = 0;
  int64_t num_blocks = 0;
  int block_size = 64;
  int max_blocks_per_seq = 0;
};

// A token whose position lies past its table, or whose block id is outside
// [0, num_blocks), is not written: a planning bug never scribbles over memory
// (and the unwritten row reads back as whatever the cache held).
cudaError_t LaunchLatentAppend(const LatentAppendParams& p, cudaStream_t stream);

}  // namespace mla::cuda
