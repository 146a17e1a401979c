#include "runtime/kv_cache.h"

#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/float_convert.h"

namespace mla {

absl::StatusOr<CacheDType> ParseCacheDType(const std::string& name) {
  if (name == "fp32") return CacheDType::kF32;
  if (name == "bf16") return CacheDType::kBF16;
  return absl::InvalidArgumentError(absl::StrCat("kv cache dtype '", name, "' (expected \"fp32\" or \"bf16\")"));
}

int64_t CacheDTypeBytes(CacheDType dtype) { return dtype == CacheDType::kF32 ? 4 : 2; }

PagedLatentCache::PagedLatentCache(int64_t num_layers, int64_t num_blocks, int64_t block_size, int64_t latent_dim,
                                   CacheDType dtype)
    : num_layers_(num_layers),
      num_blocks_(num_blocks),
      block_size_(block_size),
      latent_dim_(latent_dim),
      dtype_(dtype),
      storage_(static_cast<size_t>(num_layers * num_blocks * block_size * latent_dim * CacheDTypeBytes(dtype))) {}

cpu::PagedLatentView PagedLatentCache::Layer(int64_t layer) {
  cpu::PagedLatentView view;
  int64_t layer_bytes = num_blocks_ * block_size_ * latent_dim_ * CacheDTypeBytes(dtype_);
  view.base = storage_.data() + layer * layer_bytes;
  view.dtype = dtype_;
  view.num_blocks = num_blocks_;
  view.block_size = block_size_;
  view.latent_dim = latent_dim_;
  return view;
}

void PagedLatentCache::Poison() {
  if (dtype_ == CacheDType::kF32) {
    float nan = std::nanf("");
    float* p = reinterpret_cast<float*>(storage_.data());
    for (size_t i = 0; i < storage_.size() / sizeof(float); ++i) p[i] = nan;
  } else {
    uint16_t nan = cpu::FloatToBf16(std::nanf(""));
    uint16_t* p = reinterpret_cast<uint16_t*>(storage_.data());
    for (size_t i = 0; i < storage_.size() / sizeof(uint16_t); ++i) p[i] = nan;
  }
}

BlockAllocator::BlockAllocator(int64_t num_blocks) : num_blocks_(num_blocks) {
  free_.reserve(static_cast<size_t>(num_blocks));
  for (int64_t b = num_blocks - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));
}

absl::StatusOr<int32_t> BlockAllocator::Allocate() {
  if (free_.empty()) {
    return absl::ResourceExhaustedError(absl::StrCat("latent cache full: all ", num_blocks_, " blocks in use"));
  }
  int32_t b = free_.back();
  free_.pop_back();
  return b;
}

void BlockAllocator::Free(int32_t block) { free_.push_back(block); }

absl::Status BlockTable::Reserve(int64_t tokens, BlockAllocator& allocator) {
  size_t before = blocks_.size();
  while (capacity() < tokens) {
    absl::StatusOr<int32_t> b = allocator.Allocate();
    if (!b.ok()) {
      while (blocks_.size() > before) {
        allocator.Free(blocks_.back());
        blocks_.pop_back();
      }
      return b.status();
    }
    blocks_.push_back(*b);
  }
  return absl::OkStatus();
}

void BlockTable::Release(BlockAllocator& allocator) {
  for (int32_t b : blocks_) allocator.Free(b);
  blocks_.clear();
}

}  // namespace mla
