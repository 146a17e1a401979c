// Embedding gather over a vocabulary slice against the CPU rule (Model::Embed):
// owned ids copy their row bit for bit, other ids give +0 rows.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <ostream>
#include <vector>

#include "kernels/cuda/embedding.cuh"
#include "tests/gpu/gpu_test_util.h"

namespace mla {
namespace {

using gpu_test::DeviceBuffer;

struct EmbedCase {
  int64_t num_tokens, hidden, vocab, vocab_begin, local_vocab;
};

void PrintTo(const EmbedCase& c, std::ostream* os) {
  *os << "tokens " << c.num_tokens << " hidden " << c.hidden << " slice [" << c.vocab_begin << ", "
      << c.vocab_begin + c.local_vocab << ") of " << c.vocab;
}

class EmbeddingGpuTest : public ::testing::TestWithParam<EmbedCase> {};

TEST_P(EmbeddingGpuTest, MatchesCpuGather) {
  MLA_SKIP_WITHOUT_GPU();
  const EmbedCase c = GetParam();
  SCOPED_TRACE(::testing::Message() << "tokens " << c.num_tokens << " hidden " << c.hidden << " slice ["
                                    << c.vocab_begin << ", " << c.vocab_begin + c.local_vocab << ") seed "
                                    << gpu_test::BaseSeed());
  auto rng = gpu_test::CaseRng(static_cast<uint64_t>(c.num_tokens * 131 + c.hidden));
  std::vector<uint16_t> table = gpu_test::RandomBf16(rng, c.local_vocab * c.hidden, -2.0f, 2.0f);
  std::vector<int32_t> ids(static_cast<size_t>(c.num_tokens));
  std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(c.vocab - 1));
  // The slice edges first, then random ids over the whole vocabulary.
  const int32_t edges[] = {static_cast<int32_t>(c.vocab_begin - 1), static_cast<int32_t>(c.vocab_begin),
                           static_cast<int32_t>(c.vocab_begin + c.local_vocab - 1),
                           static_cast<int32_t>(c.vocab_begin + c.local_vocab), 0,
                           static_cast<int32_t>(c.vocab - 1)};
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = i < std::size(edges) && edges[i] >= 0 ? edges[i] : pick(rng);

  std::vector<uint16_t> want(static_cast<size_t>(c.num_tokens * c.hidden), 0);
  for (int64_t t = 0; t < c.num_tokens; ++t) {
    const int64_t id = ids[t];
    if (id >= c.vocab_begin && id < c.vocab_begin + c.local_vocab) {
      std::copy_n(&table[(id - c.vocab_begin) * c.hidden], c.hidden, &want[t * c.hidden]);
    }
  }

  DeviceBuffer<uint16_t> d_table(table), d_out(want.size());
  DeviceBuffer<int32_t> d_ids(ids);
  MLA_ASSERT_CUDA(d_out.Poison());
  cuda::EmbeddingParams p;
  p.token_ids = d_ids.get();
  p.table = d_table.bf16();
  p.out = d_out.bf16();
  p.num_tokens = c.num_tokens;
  p.hidden = c.hidden;
  p.vocab_begin = c.vocab_begin;
  p.local_vocab = c.local_vocab;
  MLA_ASSERT_CUDA(cuda::LaunchEmbedding(p, nullptr));
  std::vector<uint16_t> got;
  MLA_ASSERT_CUDA(d_out.Download(got));
  EXPECT_TRUE(gpu_test::BitsEqual(got, want));
}

// hidden 7168 (V3) and 64 take the 16-byte path; 100 and 7 the scalar one.
INSTANTIATE_TEST_SUITE_P(Shapes, EmbeddingGpuTest,
                         ::testing::Values(EmbedCase{0, 7168, 1000, 0, 1000}, EmbedCase{1, 7168, 1000, 0, 1000},
                                           EmbedCase{65, 7168, 8192, 4096, 4096},
                                           EmbedCase{300, 64, 1000, 300, 400}, EmbedCase{63, 100, 1000, 250, 250},
                                           EmbedCase{17, 7, 50, 10, 30}));

}  // namespace
}  // namespace mla
