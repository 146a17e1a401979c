// Access to one layer's paged latent cache: [num_blocks, block_size, latent_dim],
// latent_dim = kv_lora_rank + qk_rope_head_dim ([c_kv | rope(k_pe)] per token).
// A sequence's position pos lives in block block_table[pos / block_size] at row
// pos % block_size; blocks need not be contiguous.
#pragma once

#include <cstdint>

namespace mla::cpu {

enum class CacheDType { kF32, kBF16 };

struct PagedLatentView {
  void* base = nullptr;  // [num_blocks, block_size, latent_dim] of dtype
  CacheDType dtype = CacheDType::kF32;
  int64_t num_blocks = 0;
  int64_t block_size = 64;
  int64_t latent_dim = 0;
};

// Stores latent[0..latent_dim) at position pos (BF16: rounded to nearest even).
void WriteLatent(const PagedLatentView& cache, const int32_t* block_table, int64_t pos, const float* latent);

// Loads position pos into out[0..latent_dim) as float32.
void ReadLatent(const PagedLatentView& cache, const int32_t* block_table, int64_t pos, float* out);

// Loads positions [0, len) into out: [len, latent_dim].
void GatherLatents(const PagedLatentView& cache, const int32_t* block_table, int64_t len, float* out);

}  // namespace mla::cpu
