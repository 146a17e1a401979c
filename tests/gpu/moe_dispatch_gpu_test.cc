// The MoE grouping on the device (kernels/cuda/moe_dispatch.cuh
// MoeGroupByExpert) against the host grouping it replaces (the CUDA model's
// Moe: experts in ascending id, a token's rows in token order within an
// expert), exactly: every offset and row index must be the host's. Ids are
// top_k distinct experts a token (as a router picks them) or, for the odd
// cases, any ids with repeats; out-of-range ids must be counted and grouped
// in bounds.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <ostream>
#include <random>
#include <vector>

#include "kernels/cuda/moe_dispatch.cuh"
#include "tests/gpu/gpu_test_util.h"

namespace mla {
namespace {

using gpu_test::DeviceBuffer;

struct GroupCase {
  int64_t tokens;
  int top_k, experts;
  bool distinct = true;  // top_k distinct experts a token (else any, with repeats)
};

void PrintTo(const GroupCase& c, std::ostream* os) {
  *os << c.tokens << " tokens, top " << c.top_k << " of " << c.experts << (c.distinct ? "" : ", repeats");
}

struct Grouping {
  std::vector<int32_t> expert_rows, gather_rows, slot_rows;
};

// The host grouping, as CudaModel::Moe did it before the device one (and
// still does for large steps).
Grouping HostGrouping(const std::vector<int32_t>& ids, int top_k, int experts) {
  Grouping g;
  g.expert_rows.assign(static_cast<size_t>(experts) + 1, 0);
  for (int32_t id : ids) ++g.expert_rows[static_cast<size_t>(id) + 1];
  std::partial_sum(g.expert_rows.begin(), g.expert_rows.end(), g.expert_rows.begin());
  std::vector<int32_t> next(g.expert_rows.begin(), g.expert_rows.end() - 1);
  g.gather_rows.assign(ids.size(), -1);
  g.slot_rows.assign(ids.size(), -1);
  for (size_t s = 0; s < ids.size(); ++s) {
    const int32_t r = next[static_cast<size_t>(ids[s])]++;
    g.gather_rows[static_cast<size_t>(r)] = static_cast<int32_t>(s / static_cast<size_t>(top_k));
    g.slot_rows[s] = r;
  }
  return g;
}

struct DeviceGrouping {
  Grouping g;
  int32_t bad_ids = 0;
};

DeviceGrouping RunDevice(const std::vector<int32_t>& ids, int64_t tokens, int top_k, int experts) {
  DeviceGrouping out;
  DeviceBuffer<int32_t> d_ids(ids), d_expert_rows(static_cast<size_t>(experts) + 1), d_gather(ids.size()),
      d_slot(ids.size()), d_bad(std::vector<int32_t>{0});
  EXPECT_EQ(d_expert_rows.Poison(), cudaSuccess);
  EXPECT_EQ(d_gather.Poison(), cudaSuccess);
  EXPECT_EQ(d_slot.Poison(), cudaSuccess);
  cuda::MoeGroupParams p;
  p.expert_ids = d_ids.get();
  p.num_tokens = tokens;
  p.top_k = top_k;
  p.num_experts = experts;
  p.expert_rows = d_expert_rows.get();
  p.gather_rows = d_gather.get();
  p.slot_rows = d_slot.get();
  p.bad_ids = d_bad.get();
  EXPECT_EQ(cuda::LaunchMoeGroupByExpert(p, nullptr), cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<int32_t> bad;
  EXPECT_EQ(d_expert_rows.Download(out.g.expert_rows), cudaSuccess);
  EXPECT_EQ(d_gather.Download(out.g.gather_rows), cudaSuccess);
  EXPECT_EQ(d_slot.Download(out.g.slot_rows), cudaSuccess);
  EXPECT_EQ(d_bad.Download(bad), cudaSuccess);
  out.bad_ids = bad.empty() ? -1 : bad[0];
  return out;
}

class MoeGroupGpuTest : public ::testing::TestWithParam<GroupCase> {};

TEST_P(MoeGroupGpuTest, MatchesTheHostGrouping) {
  MLA_SKIP_WITHOUT_GPU();
  const GroupCase& c = GetParam();
  auto rng = gpu_test::CaseRng(static_cast<uint64_t>(c.tokens * 1000 + c.top_k * 37 + c.experts));
  std::vector<int32_t> ids;
  std::vector<int32_t> all(static_cast<size_t>(c.experts));
  std::iota(all.begin(), all.end(), 0);
  std::uniform_int_distribution<int32_t> any(0, c.experts - 1);
  for (int64_t t = 0; t < c.tokens; ++t) {
    if (c.distinct) {
      std::shuffle(all.begin(), all.end(), rng);
      ids.insert(ids.end(), all.begin(), all.begin() + c.top_k);
    } else {
      for (int j = 0; j < c.top_k; ++j) ids.push_back(any(rng));
    }
  }
  const Grouping want = HostGrouping(ids, c.top_k, c.experts);
  const DeviceGrouping got = RunDevice(ids, c.tokens, c.top_k, c.experts);
  EXPECT_EQ(got.bad_ids, 0);
  EXPECT_EQ(got.g.expert_rows, want.expert_rows);
  EXPECT_EQ(got.g.gather_rows, want.gather_rows);
  EXPECT_EQ(got.g.slot_rows, want.slot_rows);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, MoeGroupGpuTest,
    ::testing::Values(
        // DeepSeek-V3 (top 8 of 256) at decode batches and a prefill chunk;
        // the fixtures' (top 2 of 16); V2-Lite (top 6 of 64).
        GroupCase{1, 8, 256}, GroupCase{32, 8, 256}, GroupCase{300, 8, 256}, GroupCase{7, 2, 16},
        GroupCase{64, 6, 64},
        // The most experts a block takes, one expert, and repeated ids.
        GroupCase{5, 4, 1024}, GroupCase{9, 1, 1}, GroupCase{40, 3, 5, false}, GroupCase{0, 8, 256}));

TEST(MoeGroupTest, CountsOutOfRangeIdsAndStaysInBounds) {
  MLA_SKIP_WITHOUT_GPU();
  // Token 1 chose -1 and 9 of 4 experts: counted, grouped as experts 0 and 3.
  const std::vector<int32_t> ids = {2, 0, -1, 9, 3, 1};
  const DeviceGrouping got = RunDevice(ids, 3, 2, 4);
  EXPECT_EQ(got.bad_ids, 2);
  const Grouping want = HostGrouping({2, 0, 0, 3, 3, 1}, 2, 4);
  EXPECT_EQ(got.g.expert_rows, want.expert_rows);
  EXPECT_EQ(got.g.gather_rows, want.gather_rows);
  EXPECT_EQ(got.g.slot_rows, want.slot_rows);
}

TEST(MoeGroupTest, RefusesWhatOneBlockCannotGroup) {
  cuda::MoeGroupParams p;
  alignas(16) static int32_t buf[8] = {};
  p.expert_ids = p.expert_rows = p.gather_rows = p.slot_rows = p.bad_ids = buf;
  p.num_tokens = 1;
  p.top_k = 1;
  p.num_experts = cuda::kMoeGroupMaxExperts + 1;
  EXPECT_EQ(cuda::LaunchMoeGroupByExpert(p, nullptr), cudaErrorInvalidValue);
  p.num_experts = 4;
  p.top_k = 0;
  EXPECT_EQ(cuda::LaunchMoeGroupByExpert(p, nullptr), cudaErrorInvalidValue);
  p.top_k = 1;
  p.bad_ids = nullptr;
  EXPECT_EQ(cuda::LaunchMoeGroupByExpert(p, nullptr), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace mla
