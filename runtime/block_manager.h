// Paged allocation of the latent cache's blocks (the same block ids on every
// shard), with prefix reuse: a full block is keyed by a hash of its tokens and
// of everything before it, shared by reference count, and kept after its last
// user leaves until its space is needed (least recently freed goes first).
#pragma once

#include <cstdint>
#include <deque>
#include <list>
#include <unordered_map>
#include <vector>

#include "runtime/sequence.h"

namespace mla {

class BlockManager {
 public:
  BlockManager(int64_t num_blocks, int64_t block_size, bool prefix_caching = true);

  // For a sequence holding no blocks: attaches the longest run of cached full
  // blocks that match its tokens from the start, leaving at least one token to
  // compute (a step needs one to produce logits). Returns the tokens matched;
  // the sequence's num_computed moves past them.
  int64_t AttachCachedPrefix(Sequence& seq);

  // Grows the sequence's table to cover `tokens` positions. False, with the
  // table unchanged, when not enough blocks are free.
  bool Allocate(Sequence& seq, int64_t tokens);

  // Registers the sequence's blocks that are now full (all their positions
  // computed) in the prefix cache.
  void CommitFullBlocks(Sequence& seq);

  // Drops the sequence's references and empties its table; num_computed goes
  // to 0 (a preempted sequence recomputes, possibly from cached blocks).
  void Release(Sequence& seq);

  int64_t num_blocks() const { return static_cast<int64_t>(blocks_.size()); }
  int64_t block_size() const { return block_size_; }
  // Blocks that can be handed out now: never-used ones plus cached, unreferenced ones.
  int64_t num_free() const { return static_cast<int64_t>(free_.size() + evictable_.size()); }
  // Blocks some sequence references.
  int64_t num_used() const { return num_blocks() - num_free(); }
  // Full prompt blocks looked up, and found, in the prefix cache (over all time).
  int64_t prefix_queries() const { return prefix_queries_; }
  int64_t prefix_hits() const { return prefix_hits_; }

  // The chain hash of a block of tokens following a block with hash `parent`.
  static uint64_t ChainHash(uint64_t parent, const int32_t* tokens, int64_t n);

 private:
  struct Block {
    int32_t refs = 0;
    bool cached = false;  // registered in map_ under `hash`
    uint64_t hash = 0;
    uint64_t parent = 0;
    std::vector<int32_t> tokens;  // the block's tokens, to rule out hash collisions
    std::list<int32_t>::iterator lru;  // valid while refs == 0 and cached
  };
  int32_t TakeFreeBlock();
  void Ref(int32_t id);

  int64_t block_size_;
  bool prefix_caching_;
  std::vector<Block> blocks_;
  std::deque<int32_t> free_;        // never cached, unreferenced
  std::list<int32_t> evictable_;    // cached, unreferenced; front is evicted first
  std::unordered_map<uint64_t, int32_t> map_;
  int64_t prefix_queries_ = 0;
  int64_t prefix_hits_ = 0;
};

}  // namespace mla
