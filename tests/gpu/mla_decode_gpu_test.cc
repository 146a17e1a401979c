// Absorbed-form MLA decode over the paged BF16 latent cache against
// cpu::MlaAbsorbedAttention (one query per sequence, reading the same BF16
// cache through a PagedLatentView). Spare blocks and the rows past each
// sequence's length are NaN and the table padding is out of range, so any
// stray read shows up (as NaN in the output, or as a fault).
// Tolerance: rtol 1e-2 for the BF16 output (2^-9 relative), atol 2e-5: FP32
// scores, softmax and sums on both sides, in a different order.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <sstream>
#include <ostream>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cuda/mla_decode.cuh"
#include "tests/gpu/gpu_test_util.h"
#include "tests/gpu/paged_batch.h"

namespace mla {
namespace {

using gpu_test::DeviceBuffer;
using gpu_test::SeqShape;

constexpr double kRtol = 1e-2, kAtol = 2e-5;

struct DecodeCase {
  int heads, kv_lora, rope;
  float scale;                   // 0: DeepSeek-V3's 0.1352
  std::vector<int64_t> kv_lens;  // per sequence, the current token included
};

void PrintTo(const DecodeCase& c, std::ostream* os) {
  *os << c.heads << " heads, kv_lora " << c.kv_lora << " rope " << c.rope << ", kv_lens:";
  for (int64_t n : c.kv_lens) *os << " " << n;
}

class MlaDecodeGpuTest : public ::testing::TestWithParam<DecodeCase> {};

TEST_P(MlaDecodeGpuTest, MatchesCpuAbsorbed) {
  MLA_SKIP_WITHOUT_GPU();
  const DecodeCase& c = GetParam();
  std::ostringstream lens;
  for (int64_t n : c.kv_lens) lens << " " << n;
  SCOPED_TRACE(::testing::Message() << "heads " << c.heads << " kv_lora " << c.kv_lora << " rope " << c.rope
                                    << " kv_lens" << lens.str() << " seed " << gpu_test::BaseSeed());
  auto rng = gpu_test::CaseRng(static_cast<uint64_t>(c.heads * 13 + c.kv_lora + c.kv_lens.size() * 977));
  const int latent = c.kv_lora + c.rope;
  const float scale = c.scale != 0.0f ? c.scale : 0.135230f;
  const int64_t seqs = static_cast<int64_t>(c.kv_lens.size());
  std::vector<SeqShape> shapes;
  for (int64_t n : c.kv_lens) shapes.push_back({n, 0});
  gpu_test::PagedBatch b = gpu_test::MakePagedBatch(shapes, 64, 3, rng);

  // NaN everywhere, then the valid rows of every sequence.
  std::vector<uint16_t> cache(static_cast<size_t>(b.num_blocks * b.block_size * latent), gpu_test::kBf16NaNBits);
  for (int64_t s = 0; s < seqs; ++s) {
    for (int64_t pos = 0; pos < c.kv_lens[s]; ++pos) {
      const int64_t block = b.tables[s * b.max_blocks + pos / b.block_size];
      std::vector<uint16_t> row = gpu_test::RandomBf16(rng, latent, -1.0f, 1.0f);
      std::copy(row.begin(), row.end(), &cache[(block * b.block_size + pos % b.block_size) * latent]);
    }
  }
  std::vector<uint16_t> q_lat = gpu_test::RandomBf16(rng, seqs * c.heads * c.kv_lora, -1.0f, 1.0f);
  std::vector<uint16_t> q_pe = gpu_test::RandomBf16(rng, seqs * c.heads * c.rope, -1.0f, 1.0f);
  std::vector<int32_t> kv_lens(c.kv_lens.begin(), c.kv_lens.end());

  const std::vector<float> q_latf = gpu_test::ToFloats(q_lat), q_pef = gpu_test::ToFloats(q_pe);
  std::vector<float> want(static_cast<size_t>(seqs * c.heads * c.kv_lora), 0.0f);  // kv_len 0: zeros
  for (int64_t s = 0; s < seqs; ++s) {
    if (c.kv_lens[s] == 0) continue;
    cpu::MlaAbsorbedParams p;
    p.q_latent = &q_latf[s * c.heads * c.kv_lora];
    p.q_pe = &q_pef[s * c.heads * c.rope];
    p.cache.base = cache.data();
    p.cache.dtype = cpu::CacheDType::kBF16;
    p.cache.num_blocks = b.num_blocks;
    p.cache.block_size = b.block_size;
    p.cache.latent_dim = latent;
    p.block_table = &b.tables[s * b.max_blocks];
    p.out_latent = &want[s * c.heads * c.kv_lora];
    p.num_queries = 1;
    p.kv_len = c.kv_lens[s];
    p.num_heads = c.heads;
    p.kv_lora = c.kv_lora;
    p.qk_rope = c.rope;
    p.scale = scale;
    gpu_test::ParallelFor(c.heads, [&](int64_t hb, int64_t he) {
      cpu::MlaAbsorbedAttention(p, static_cast<int>(hb), static_cast<int>(he));
    });
  }

  DeviceBuffer<uint16_t> d_cache(cache), d_q_lat(q_lat), d_q_pe(q_pe), d_out(want.size());
  DeviceBuffer<int32_t> d_tables(b.tables), d_lens(kv_lens);
  MLA_ASSERT_CUDA(d_out.Poison());
  cuda::MlaDecodeParams p;
  p.q_latent = d_q_lat.bf16();
  p.q_pe = d_q_pe.bf16();
  p.cache = d_cache.bf16();
  p.block_tables = d_tables.get();
  p.kv_lens = d_lens.get();
  p.out_latent = d_out.bf16();
  p.num_seqs = seqs;
  p.num_heads = c.heads;
  p.kv_lora = c.kv_lora;
  p.qk_rope = c.rope;
  p.block_size = static_cast<int>(b.block_size);
  p.max_blocks_per_seq = static_cast<int>(b.max_blocks);
  p.scale = scale;
  MLA_ASSERT_CUDA(cuda::LaunchMlaDecode(p, nullptr));
  MLA_ASSERT_CUDA(cudaDeviceSynchronize());
  std::vector<uint16_t> got;
  MLA_ASSERT_CUDA(d_out.Download(got));
  EXPECT_TRUE(gpu_test::AllClose(gpu_test::ToFloats(got), want, kRtol, kAtol));
}

INSTANTIATE_TEST_SUITE_P(
    Batches, MlaDecodeGpuTest,
    ::testing::Values(
        // DeepSeek-V3: kv_lora 512 + rope 64, 128 heads (TP=1) and 16 heads (TP=8).
        DecodeCase{128, 512, 64, 0.0f, {1}}, DecodeCase{128, 512, 64, 0.0f, {63, 64, 65, 0, 1, 129}},
        DecodeCase{128, 512, 64, 0.0f, {3001, 17}}, DecodeCase{16, 512, 64, 0.0f, {4096, 1, 65, 64}},
        DecodeCase{16, 512, 64, 1.0f, {200, 2}},
        // Small and odd dims: heads not a multiple of the block's 8, latent % 8 != 0 (scalar loads).
        DecodeCase{16, 64, 16, 0.3f, {0, 1, 63, 64, 65, 200}}, DecodeCase{3, 36, 6, 0.5f, {1, 64, 65, 130}},
        DecodeCase{5, 32, 0, 0.2f, {7, 70}}, DecodeCase{128, 512, 64, 0.0f, {0}}));

}  // namespace
}  // namespace mla
