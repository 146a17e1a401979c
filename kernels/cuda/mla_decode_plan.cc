#include "kernels/cuda/mla_decode_plan.h"

#include <algorithm>

namespace mla::cuda {
namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

bool MlaDecodeUsesTensorCores(int kv_lora, int qk_rope) {
  return kv_lora > 0 && qk_rope >= 0 && kv_lora <= 512 && kv_lora % 8 == 0 && (kv_lora + qk_rope) % 16 == 0 &&
         kv_lora + qk_rope <= 640;
}

bool MlaDecodeUsesWgmma(int kv_lora, int qk_rope) { return kv_lora == 512 && qk_rope == 64; }

int MlaDecodeHeadsPerBlock(int num_heads) { return num_heads <= 16 ? 16 : 32; }

int MlaDecodeDefaultHeadsPerBlock(std::span<const int32_t> kv_lens, int num_heads, int kv_lora, int qk_rope,
                                  int num_sms) {
  if (MlaDecodeUsesWgmma(kv_lora, qk_rope) && num_heads >= 64) {
    int64_t tiles = 0;
    for (int32_t len : kv_lens) tiles += CeilDiv(std::max(len, 0), kMlaDecodeTileTokens);
    if (tiles * CeilDiv(num_heads, 64) >= 2 * static_cast<int64_t>(std::max(num_sms, 1))) return 64;
  }
  return MlaDecodeHeadsPerBlock(num_heads);
}

// A split (sequence, head group) has tiles > per_item and gets
// ceil(tiles / per_item) < 2 * tiles / per_item items; per_item >=
// total / num_sms, so all split items together are fewer than 2 * num_sms.
int64_t MlaDecodeMaxPartials(int num_sms) { return 2 * static_cast<int64_t>(std::max(num_sms, 1)); }
int64_t MlaDecodeMaxMerges(int num_sms) { return MlaDecodeMaxPartials(num_sms) / 2; }

MlaDecodePlan PlanMlaDecode(std::span<const int32_t> kv_lens, int num_heads, int num_sms) {
  return PlanMlaDecode(kv_lens, num_heads, num_sms, MlaDecodeHeadsPerBlock(num_heads));
}

MlaDecodePlan PlanMlaDecode(std::span<const int32_t> kv_lens, int num_heads, int num_sms, int heads_per_block) {
  MlaDecodePlan plan;
  plan.heads_per_block =
      heads_per_block == 16 || heads_per_block == 32 || heads_per_block == 64 ? heads_per_block : MlaDecodeHeadsPerBlock(num_heads);
  const int64_t groups = CeilDiv(std::max(num_heads, 1), plan.heads_per_block);
  const int64_t tile = kMlaDecodeTileTokens;
  int64_t total = 0;      // tiles over all (sequence, head group) pairs
  int64_t max_tiles = 0;  // of the longest sequence
  for (int32_t len : kv_lens) {
    const int64_t tiles = CeilDiv(std::max(len, 0), tile);
    total += groups * tiles;
    max_tiles = std::max(max_tiles, tiles);
  }
  // Tiles per item. The smallest choice, ceil(total / num_sms), makes one wave
  // of num_sms items; a larger one (splitting the longest sequence into fewer
  // pieces) can finish as soon, as when 128 sequences of 64 tiles on 132 SMs
  // split into 256 items of 32 run as two waves of 32 tiles: the same 64 tiles
  // per SM as 128 whole sequences, plus a merge (about 5% slower on an H200).
  // So each candidate's makespan is estimated as waves x longest item, and
  // the cheapest wins, ties going to fewer items.
  const int64_t sms = std::max(num_sms, 1);
  auto makespan = [&](int64_t limit, int64_t* num_items) {
    int64_t n = 0, longest = 0;
    for (int32_t len : kv_lens) {
      const int64_t tiles = CeilDiv(std::max(len, 0), tile);
      const int64_t splits = std::max<int64_t>(1, CeilDiv(tiles, limit));
      n += groups * splits;
      longest = std::max(longest, CeilDiv(tiles, splits));
    }
    *num_items = n;
    return CeilDiv(n, sms) * longest;
  };
  int64_t per_item = std::max<int64_t>(1, CeilDiv(total, sms));
  int64_t best_items = 0;
  int64_t best = makespan(per_item, &best_items);
  for (int64_t k = 1; k <= 8; ++k) {
    const int64_t limit = CeilDiv(max_tiles, k);
    if (limit <= per_item) break;
    int64_t n = 0;
    const int64_t cost = makespan(limit, &n);
    if (cost < best || (cost == best && n < best_items)) {
      best = cost;
      best_items = n;
      per_item = limit;
    }
  }

  for (size_t s = 0; s < kv_lens.size(); ++s) {
    const int64_t len = std::max(kv_lens[s], 0);
    const int64_t tiles = CeilDiv(len, tile);
    const int64_t splits = std::max<int64_t>(1, CeilDiv(tiles, per_item));
    // Even split in whole tiles: the first (tiles % splits) items get one more.
    const int64_t base = tiles / splits, extra = tiles % splits;
    const int32_t first = plan.num_partials;
    // Head groups of one range are adjacent in launch order, so they run
    // together and the groups after the first find the cache tiles in L2.
    int64_t begin_tile = 0;
    for (int64_t k = 0; k < splits; ++k) {
      const int64_t n = base + (k < extra ? 1 : 0);
      const int64_t kv_begin = begin_tile * tile, kv_end = std::min(len, (begin_tile + n) * tile);
      begin_tile += n;
      for (int64_t g = 0; g < groups; ++g) {
        MlaDecodeWorkItem item;
        item.seq = static_cast<int32_t>(s);
        item.head_begin = static_cast<int32_t>(g * plan.heads_per_block);
        item.kv_begin = static_cast<int32_t>(kv_begin);
        item.kv_end = static_cast<int32_t>(kv_end);
        item.partial = splits > 1 ? static_cast<int32_t>(first + g * splits + k) : -1;
        item.merge = splits > 1 ? static_cast<int32_t>(plan.merges.size() + g) : -1;
        plan.items.push_back(item);
      }
    }
    if (splits > 1) {
      for (int64_t g = 0; g < groups; ++g) {
        MlaDecodeMergeItem merge;
        merge.seq = static_cast<int32_t>(s);
        merge.head_begin = static_cast<int32_t>(g * plan.heads_per_block);
        merge.first_partial = static_cast<int32_t>(first + g * splits);
        merge.num_partials = static_cast<int32_t>(splits);
        plan.merges.push_back(merge);
      }
      plan.num_partials += static_cast<int32_t>(groups * splits);
    }
  }
  return plan;
}

}  // namespace mla::cuda
