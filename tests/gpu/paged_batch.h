// A ragged batch over a paged cache for the GPU tests: per sequence a number
// of cached tokens and of new tokens, block ids drawn at random (blocks are not
// contiguous), table slots past a sequence's blocks padded with out-of-range ids.
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

namespace mla::gpu_test {

struct SeqShape {
  int64_t cached = 0;  // tokens already in the cache
  int64_t fresh = 0;   // tokens of this step
  int64_t total() const { return cached + fresh; }
};

struct PagedBatch {
  int64_t block_size = 64;
  int64_t num_blocks = 0;
  int64_t max_blocks = 0;          // table width
  std::vector<int32_t> tables;     // [seqs, max_blocks]
  std::vector<int64_t> blocks_of;  // per sequence: blocks in use
};

// Spare blocks stay unused (tests fill them with NaN). Padding alternates
// between just past the end and INT32_MAX, so a stray read faults.
inline PagedBatch MakePagedBatch(const std::vector<SeqShape>& seqs, int64_t block_size, int64_t spare_blocks,
                                 std::mt19937_64& rng) {
  PagedBatch b;
  b.block_size = block_size;
  int64_t used = 0;
  for (const SeqShape& s : seqs) {
    const int64_t n = (s.total() + block_size - 1) / block_size;
    b.blocks_of.push_back(n);
    used += n;
    b.max_blocks = std::max(b.max_blocks, n);
  }
  b.max_blocks += 2;  // every table has padding
  b.num_blocks = used + spare_blocks;
  std::vector<int32_t> pool(static_cast<size_t>(b.num_blocks));
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), rng);
  b.tables.assign(seqs.size() * b.max_blocks, 0);
  size_t next = 0;
  for (size_t s = 0; s < seqs.size(); ++s) {
    for (int64_t j = 0; j < b.max_blocks; ++j) {
      int32_t& slot = b.tables[s * b.max_blocks + j];
      if (j < b.blocks_of[s]) {
        slot = pool[next++];
      } else {
        slot = (j % 2 == 0) ? static_cast<int32_t>(b.num_blocks) : INT32_MAX;
      }
    }
  }
  return b;
}

}  // namespace mla::gpu_test
