#include "runtime/block_manager.h"

#include <glog/logging.h>

#include <algorithm>

#include "runtime/mix64.h"

namespace mla {
namespace {


}  // namespace

uint64_t BlockManager::ChainHash(uint64_t parent, const int32_t* tokens, int64_t n) {
  uint64_t h = Mix64(parent ^ 0x9e3779b97f4a7c15ULL);
  for (int64_t i = 0; i < n; ++i) h = Mix64(h + static_cast<uint32_t>(tokens[i]) + 0x9e3779b97f4a7c15ULL * (i + 1));
  return h;
}

BlockManager::BlockManager(int64_t num_blocks, int64_t block_size, bool prefix_caching)
    : block_size_(block_size), prefix_caching_(prefix_caching), blocks_(static_cast<size_t>(num_blocks)) {
  for (int64_t b = 0; b < num_blocks; ++b) free_.push_back(static_cast<int32_t>(b));
}

void BlockManager::Ref(int32_t id) {
  Block& b = blocks_[static_cast<size_t>(id)];
  if (b.refs == 0 && b.cached) evictable_.erase(b.lru);
  ++b.refs;
}

int32_t BlockManager::TakeFreeBlock() {
  int32_t id;
  if (!free_.empty()) {
    id = free_.front();
    free_.pop_front();
  } else {
    id = evictable_.front();
    evictable_.pop_front();
    Block& b = blocks_[static_cast<size_t>(id)];
    map_.erase(b.hash);
    b.cached = false;
    b.tokens.clear();
  }
  blocks_[static_cast<size_t>(id)].refs = 1;
  return id;
}

int64_t BlockManager::AttachCachedPrefix(Sequence& seq) {
  CHECK(seq.block_table.empty());
  seq.num_computed = 0;
  seq.block_hashes.clear();
  if (!prefix_caching_) return 0;
  const int64_t matchable = (seq.num_tokens() - 1) / block_size_;
  prefix_queries_ += matchable;
  uint64_t parent = 0;
  for (int64_t i = 0; i < matchable; ++i) {
    const int32_t* tokens = seq.tokens().data() + i * block_size_;
    const uint64_t h = ChainHash(parent, tokens, block_size_);
    auto it = map_.find(h);
    if (it == map_.end()) break;
    const Block& b = blocks_[static_cast<size_t>(it->second)];
    if (b.parent != parent || !std::equal(b.tokens.begin(), b.tokens.end(), tokens)) break;  // a collision
    Ref(it->second);
    seq.block_table.push_back(it->second);
    seq.block_hashes.push_back(h);
    parent = h;
    ++prefix_hits_;
  }
  seq.num_computed = static_cast<int64_t>(seq.block_table.size()) * block_size_;
  return seq.num_computed;
}

bool BlockManager::Allocate(Sequence& seq, int64_t tokens) {
  const int64_t need = (tokens + block_size_ - 1) / block_size_ - static_cast<int64_t>(seq.block_table.size());
  if (need <= 0) return true;
  if (need > num_free()) return false;
  for (int64_t i = 0; i < need; ++i) seq.block_table.push_back(TakeFreeBlock());
  return true;
}

void BlockManager::CommitFullBlocks(Sequence& seq) {
  if (!prefix_caching_) return;
  const int64_t full = std::min<int64_t>(seq.num_computed / block_size_, static_cast<int64_t>(seq.block_table.size()));
  for (int64_t i = static_cast<int64_t>(seq.block_hashes.size()); i < full; ++i) {
    const uint64_t parent = i == 0 ? 0 : seq.block_hashes[static_cast<size_t>(i - 1)];
    const int32_t* tokens = seq.tokens().data() + i * block_size_;
    const uint64_t h = ChainHash(parent, tokens, block_size_);
    seq.block_hashes.push_back(h);
    Block& b = blocks_[static_cast<size_t>(seq.block_table[static_cast<size_t>(i)])];
    if (b.cached || map_.count(h) > 0) continue;  // already cached (an identical prefix computed twice)
    b.cached = true;
    b.hash = h;
    b.parent = parent;
    b.tokens.assign(tokens, tokens + block_size_);
    map_[h] = seq.block_table[static_cast<size_t>(i)];
  }
}

void BlockManager::Release(Sequence& seq) {
  // Later blocks go first so that a prefix outlives its continuations.
  for (auto it = seq.block_table.rbegin(); it != seq.block_table.rend(); ++it) {
    Block& b = blocks_[static_cast<size_t>(*it)];
    CHECK_GT(b.refs, 0);
    if (--b.refs > 0) continue;
    if (b.cached) {
      evictable_.push_back(*it);
      b.lru = std::prev(evictable_.end());
    } else {
      free_.push_back(*it);
    }
  }
  seq.block_table.clear();
  seq.block_hashes.clear();
  seq.num_computed = 0;
}

}  // namespace mla
