// The paged latent KV cache of one worker: per layer [num_blocks, block_size,
// kv_lora_rank + qk_rope_head_dim], plus the block allocator and per-sequence
// block tables. No per-head key or value is ever stored.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/cpu/latent_cache.h"

namespace mla {

using cpu::CacheDType;

inline constexpr int64_t kDefaultBlockSize = 64;

// "fp32" or "bf16".
absl::StatusOr<CacheDType> ParseCacheDType(const std::string& name);
int64_t CacheDTypeBytes(CacheDType dtype);

class PagedLatentCache {
 public:
  PagedLatentCache(int64_t num_layers, int64_t num_blocks, int64_t block_size, int64_t latent_dim, CacheDType dtype);

  cpu::PagedLatentView Layer(int64_t layer);
  int64_t num_layers() const { return num_layers_; }
  int64_t num_blocks() const { return num_blocks_; }
  int64_t block_size() const { return block_size_; }
  int64_t latent_dim() const { return latent_dim_; }
  CacheDType dtype() const { return dtype_; }
  int64_t bytes() const { return static_cast<int64_t>(storage_.size()); }
  // Fills every block with NaN (tests: a read of an unwritten row shows up).
  void Poison();

 private:
  int64_t num_layers_, num_blocks_, block_size_, latent_dim_;
  CacheDType dtype_;
  std::vector<unsigned char> storage_;  // [num_layers, num_blocks, block_size, latent_dim] of dtype
};

// Hands out block ids; a free list, lowest id first.
class BlockAllocator {
 public:
  explicit BlockAllocator(int64_t num_blocks);
  // ResourceExhausted when no block is free.
  absl::StatusOr<int32_t> Allocate();
  void Free(int32_t block);
  int64_t num_free() const { return static_cast<int64_t>(free_.size()); }
  int64_t num_blocks() const { return num_blocks_; }

 private:
  int64_t num_blocks_;
  std::vector<int32_t> free_;  // a stack; the back is handed out next
};

// One sequence's blocks, in position order.
class BlockTable {
 public:
  explicit BlockTable(int64_t block_size = kDefaultBlockSize) : block_size_(block_size) {}
  // Grows the table to hold `tokens` positions; on failure keeps what it had.
  absl::Status Reserve(int64_t tokens, BlockAllocator& allocator);
  // Returns every block to the allocator.
  void Release(BlockAllocator& allocator);
  const std::vector<int32_t>& blocks() const { return blocks_; }
  int64_t capacity() const { return static_cast<int64_t>(blocks_.size()) * block_size_; }

 private:
  int64_t block_size_;
  std::vector<int32_t> blocks_;
};

}  // namespace mla
