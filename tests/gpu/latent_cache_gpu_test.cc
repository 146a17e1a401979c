// Appending latents into the paged cache against cpu::WriteLatent on a host
// copy: the whole cache must match bit for bit (BF16 in, BF16 stored: no
// rounding), so rows of other sequences, spare blocks (NaN) and the unwritten
// tails of last blocks are provably untouched.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <ostream>
#include <vector>

#include "kernels/cpu/latent_cache.h"
#include "kernels/cuda/latent_cache.cuh"
#include "tests/gpu/gpu_test_util.h"
#include "tests/gpu/paged_batch.h"

namespace mla {
namespace {

using gpu_test::DeviceBuffer;
using gpu_test::SeqShape;

struct AppendCase {
  int64_t latent_dim, stride;
  std::vector<SeqShape> seqs;
};

void PrintTo(const AppendCase& c, std::ostream* os) {
  *os << "latent " << c.latent_dim << " stride " << c.stride << " {cached, fresh}:";
  for (const SeqShape& s : c.seqs) *os << " {" << s.cached << ", " << s.fresh << "}";
}

class LatentAppendGpuTest : public ::testing::TestWithParam<AppendCase> {};

TEST_P(LatentAppendGpuTest, MatchesCpuWrite) {
  MLA_SKIP_WITHOUT_GPU();
  const AppendCase& c = GetParam();
  SCOPED_TRACE(::testing::Message() << "latent " << c.latent_dim << " stride " << c.stride << " seqs "
                                    << c.seqs.size() << " seed " << gpu_test::BaseSeed());
  auto rng = gpu_test::CaseRng(static_cast<uint64_t>(c.latent_dim * 100 + c.stride + c.seqs.size()));
  gpu_test::PagedBatch b = gpu_test::MakePagedBatch(c.seqs, 64, 3, rng);

  // The cache before the step: NaN everywhere, then the already-cached rows.
  std::vector<uint16_t> cache(static_cast<size_t>(b.num_blocks * b.block_size * c.latent_dim), gpu_test::kBf16NaNBits);
  cpu::PagedLatentView view;
  view.base = cache.data();
  view.dtype = cpu::CacheDType::kBF16;
  view.num_blocks = b.num_blocks;
  view.block_size = b.block_size;
  view.latent_dim = c.latent_dim;
  for (size_t s = 0; s < c.seqs.size(); ++s) {
    for (int64_t pos = 0; pos < c.seqs[s].cached; ++pos) {
      std::vector<float> row = gpu_test::RandomFloats(rng, c.latent_dim, -1.0f, 1.0f);
      cpu::WriteLatent(view, &b.tables[s * b.max_blocks], pos, row.data());
    }
  }
  const std::vector<uint16_t> before = cache;

  // This step's tokens, ragged, in batch order.
  std::vector<int32_t> token_seq, positions;
  for (size_t s = 0; s < c.seqs.size(); ++s) {
    for (int64_t i = 0; i < c.seqs[s].fresh; ++i) {
      token_seq.push_back(static_cast<int32_t>(s));
      positions.push_back(static_cast<int32_t>(c.seqs[s].cached + i));
    }
  }
  const int64_t tokens = static_cast<int64_t>(positions.size());
  std::vector<uint16_t> latent = gpu_test::RandomBf16(rng, tokens * c.stride, -1.0f, 1.0f);
  for (int64_t t = 0; t < tokens; ++t) {
    std::vector<float> row = gpu_test::ToFloats(std::span(&latent[t * c.stride], c.latent_dim));
    cpu::WriteLatent(view, &b.tables[token_seq[t] * b.max_blocks], positions[t], row.data());
  }

  DeviceBuffer<uint16_t> d_cache(before), d_latent(latent);
  DeviceBuffer<int32_t> d_tables(b.tables), d_seq(token_seq), d_pos(positions);
  cuda::LatentAppendParams p;
  p.latent = d_latent.bf16();
  p.cache = d_cache.bf16();
  p.block_tables = d_tables.get();
  p.token_seq = d_seq.get();
  p.positions = d_pos.get();
  p.num_tokens = tokens;
  p.latent_dim = c.latent_dim;
  p.latent_stride = c.stride;
  p.num_blocks = b.num_blocks;
  p.block_size = static_cast<int>(b.block_size);
  p.max_blocks_per_seq = static_cast<int>(b.max_blocks);
  MLA_ASSERT_CUDA(cuda::LaunchLatentAppend(p, nullptr));
  std::vector<uint16_t> got;
  MLA_ASSERT_CUDA(d_cache.Download(got));
  EXPECT_TRUE(gpu_test::BitsEqual(got, cache));
}

// A token whose table slot holds an out-of-range id, or whose position lies past
// its table, is dropped: the cache is left exactly as it was.
TEST(LatentAppendGpuTest, OutOfRangeSlotsAreNotWritten) {
  MLA_SKIP_WITHOUT_GPU();
  const int64_t latent = 576, num_blocks = 2, max_blocks = 2;
  std::vector<int32_t> tables = {1, static_cast<int32_t>(num_blocks)};  // slot 1 padded
  std::vector<int32_t> token_seq = {0, 0}, positions = {64, 128};      // slot 1, then past the table
  auto rng = gpu_test::CaseRng(7);
  std::vector<uint16_t> src = gpu_test::RandomBf16(rng, 2 * latent, -1.0f, 1.0f);
  DeviceBuffer<uint16_t> d_cache(static_cast<size_t>(num_blocks * 64 * latent)), d_src(src);
  DeviceBuffer<int32_t> d_tables(tables), d_seq(token_seq), d_pos(positions);
  MLA_ASSERT_CUDA(d_cache.Poison());
  cuda::LatentAppendParams p;
  p.latent = d_src.bf16();
  p.cache = d_cache.bf16();
  p.block_tables = d_tables.get();
  p.token_seq = d_seq.get();
  p.positions = d_pos.get();
  p.num_tokens = 2;
  p.latent_dim = p.latent_stride = latent;
  p.num_blocks = num_blocks;
  p.max_blocks_per_seq = max_blocks;
  MLA_ASSERT_CUDA(cuda::LaunchLatentAppend(p, nullptr));
  std::vector<uint16_t> got;
  MLA_ASSERT_CUDA(d_cache.Download(got));
  EXPECT_TRUE(gpu_test::BitsEqual(got, std::vector<uint16_t>(got.size(), gpu_test::kBf16NaNBits)));
}

INSTANTIATE_TEST_SUITE_P(
    Batches, LatentAppendGpuTest,
    ::testing::Values(
        // DeepSeek-V3's 576 = 512 + 64, packed rows (the 16-byte path).
        AppendCase{576, 576, {{0, 1}}},
        AppendCase{576, 576, {{0, 0}, {0, 63}, {1, 64}, {64, 65}, {5, 1}, {0, 130}, {63, 2}}},
        AppendCase{576, 576, {{3000, 1}, {0, 2000}, {100, 3}}},
        // Strided source rows and odd widths (the scalar path).
        AppendCase{576, 600, {{10, 70}, {0, 64}}}, AppendCase{42, 45, {{0, 65}, {64, 1}, {7, 0}, {1, 63}}}));

}  // namespace
}  // namespace mla
