// The tensor-core split-KV decode kernels (kernels/cuda/mla_decode_mma_kernel.cuh),
// this very source, run on the CPU by the CUDA emulator (cuda_emu.h) against
// cpu::MlaAbsorbedAttention: fragment layouts, barriers, cp.async staging and
// masking, the host plan and the log-sum-exp merge, without a GPU. Inputs as in
// tests/gpu/mla_decode_gpu_test.cc: NaN in spare blocks and past each
// sequence's length, out-of-range table padding, poisoned partial slots and
// outputs. Each case runs under plans for 1, 3 and 2^20 SMs, the last also
// with the fibers scheduled in reverse and in two seeded random orders (a
// missing barrier tends to show under one order or another). Contexts stay short: the emulator switches fibers
// at every warp collective.
//
// Tolerance (the same bounds as the GPU test, which explains them): every
// output within 2^-8 + 1e-2 |want|, and each sequence within 4e-3 relative L2.
#include "tests/emu/cuda_emu.h"  // first: it sets up the host build of the kernel source

#include "kernels/cuda/mla_decode_mma_kernel.cuh"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <ostream>
#include <random>
#include <sstream>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/float_convert.h"
#include "kernels/cuda/mla_decode_plan.h"
#include "tests/gpu/paged_batch.h"

namespace mla {
namespace {

using cuda::detail::decode_mma::kMergeThreads;
using cuda::detail::decode_mma::kThreads;
using cuda::detail::decode_mma::MlaDecodeMergeKernel;
using cuda::detail::decode_mma::MlaDecodeMmaKernel;
using cuda::detail::decode_mma::MlaDecodeMmaSharedBytes;

constexpr double kRtol = 1e-2, kAtol = 1.0 / 256, kSeqRelL2 = 4e-3;
constexpr uint16_t kBf16NaN = 0xffff;

struct Case {
  int heads, kv_lora, rope;
  float scale;
  std::vector<int64_t> kv_lens;
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << c.heads << " heads, kv_lora " << c.kv_lora << " rope " << c.rope << ", kv_lens:";
  for (int64_t n : c.kv_lens) *os << " " << n;
}

std::vector<uint16_t> RandomBf16(std::mt19937_64& rng, size_t n) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<uint16_t> v(n);
  for (uint16_t& x : v) x = cpu::FloatToBf16(u(rng));
  return v;
}

std::vector<float> ToFloats(const std::vector<uint16_t>& bits) {
  std::vector<float> v(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) v[i] = cpu::Bf16ToFloat(bits[i]);
  return v;
}

// Runs the kernels as LaunchMlaDecodeMma does: one block per work item, then
// one per (merge, head row).
void RunEmulated(const cuda::MlaDecodeParams& p) {
  const int mt = p.heads_per_block / 16;
  const size_t smem = MlaDecodeMmaSharedBytes(p.kv_lora + p.qk_rope, p.heads_per_block);
  emu::LaunchGrid(emu::Dim3{static_cast<unsigned>(p.num_work_items), 1, 1}, kThreads, smem, [&p, mt] {
    if (mt == 1) {
      MlaDecodeMmaKernel<1>(p);
    } else {
      MlaDecodeMmaKernel<2>(p);
    }
  });
  if (p.num_merge_items > 0) {
    emu::LaunchGrid(emu::Dim3{static_cast<unsigned>(p.num_merge_items), static_cast<unsigned>(p.heads_per_block), 1},
                    kMergeThreads, 0, [&p] { MlaDecodeMergeKernel(p); });
  }
}

class MlaDecodeEmuTest : public ::testing::TestWithParam<Case> {};

TEST_P(MlaDecodeEmuTest, MatchesCpuAbsorbed) {
  const Case& c = GetParam();
  ASSERT_TRUE(cuda::MlaDecodeUsesTensorCores(c.kv_lora, c.rope));
  std::mt19937_64 rng(static_cast<uint64_t>(c.heads * 131 + c.kv_lora * 7 + c.kv_lens.size()));
  const int latent = c.kv_lora + c.rope;
  const int64_t seqs = static_cast<int64_t>(c.kv_lens.size());
  std::vector<gpu_test::SeqShape> shapes;
  for (int64_t n : c.kv_lens) shapes.push_back({n, 0});
  const gpu_test::PagedBatch b = gpu_test::MakePagedBatch(shapes, 64, 2, rng);
  std::vector<uint16_t> cache(static_cast<size_t>(b.num_blocks * b.block_size * latent), kBf16NaN);
  for (int64_t s = 0; s < seqs; ++s) {
    for (int64_t pos = 0; pos < c.kv_lens[s]; ++pos) {
      const int64_t block = b.tables[s * b.max_blocks + pos / b.block_size];
      const std::vector<uint16_t> row = RandomBf16(rng, latent);
      std::memcpy(&cache[(block * b.block_size + pos % b.block_size) * latent], row.data(), latent * 2);
    }
  }
  // 16-byte aligned query rows, as cudaMalloc gives (the kernel's cp.async needs them).
  const std::vector<uint16_t> q_lat = RandomBf16(rng, seqs * c.heads * c.kv_lora);
  const std::vector<uint16_t> q_pe = RandomBf16(rng, seqs * c.heads * c.rope + 8);
  const std::vector<float> q_latf = ToFloats(q_lat), q_pef = ToFloats(q_pe);

  std::vector<float> want(static_cast<size_t>(seqs * c.heads * c.kv_lora), 0.0f);
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
    p.scale = c.scale;
    cpu::MlaAbsorbedAttention(p, 0, c.heads);
  }

  std::vector<int32_t> kv_lens(c.kv_lens.begin(), c.kv_lens.end());
  for (const int run : {0, 1, 2, 3, 4, 5}) {
    // Plans for 1 SM (no split), 3 SMs and 2^20 SMs (every tile its own item),
    // the last also with the fibers scheduled in reverse and in two random orders.
    const int sms = std::vector<int>{1, 3, 1 << 20, 1 << 20, 1 << 20, 1 << 20}[run];
    const emu::Schedule order = run < 3 ? emu::Schedule::kForward
                                : run == 3 ? emu::Schedule::kReverse
                                           : emu::Schedule::kRandom;
    emu::SetSchedule(order, static_cast<uint64_t>(run));
    SCOPED_TRACE(::testing::Message() << "plan for " << sms << " SMs, schedule " << static_cast<int>(order)
                                      << " seed " << run);
    const cuda::MlaDecodePlan plan = cuda::PlanMlaDecode(kv_lens, c.heads, sms);
    const size_t slots = static_cast<size_t>(plan.num_partials) + 1;
    std::vector<float> partial(slots * plan.heads_per_block * c.kv_lora, std::numeric_limits<float>::quiet_NaN());
    std::vector<float> partial_lse(slots * plan.heads_per_block, std::numeric_limits<float>::quiet_NaN());
    std::vector<uint16_t> out(want.size(), kBf16NaN);
    cuda::MlaDecodeParams p;
    p.q_latent = reinterpret_cast<const __nv_bfloat16*>(q_lat.data());
    p.q_pe = reinterpret_cast<const __nv_bfloat16*>(q_pe.data());
    p.cache = reinterpret_cast<const __nv_bfloat16*>(cache.data());
    p.block_tables = b.tables.data();
    p.kv_lens = kv_lens.data();
    p.out_latent = reinterpret_cast<__nv_bfloat16*>(out.data());
    p.num_seqs = seqs;
    p.num_heads = c.heads;
    p.kv_lora = c.kv_lora;
    p.qk_rope = c.rope;
    p.block_size = static_cast<int>(b.block_size);
    p.max_blocks_per_seq = static_cast<int>(b.max_blocks);
    p.scale = c.scale;
    p.work_items = plan.items.data();
    p.num_work_items = static_cast<int>(plan.items.size());
    p.merge_items = plan.merges.data();
    p.num_merge_items = static_cast<int>(plan.merges.size());
    p.heads_per_block = plan.heads_per_block;
    p.partial_out = partial.data();
    p.partial_lse = partial_lse.data();
    RunEmulated(p);

    const std::vector<float> got = ToFloats(out);
    const size_t per_seq = static_cast<size_t>(c.heads * c.kv_lora);
    for (int64_t s = 0; s < seqs; ++s) {
      double err = 0.0, ref = 0.0, worst = 0.0;
      int bad = 0;
      for (size_t i = s * per_seq; i < (s + 1) * per_seq; ++i) {
        const double d = static_cast<double>(got[i]) - want[i];
        err += d * d;
        ref += static_cast<double>(want[i]) * want[i];
        if (std::isnan(got[i]) || !(std::fabs(d) <= kAtol + kRtol * std::fabs(want[i]))) {
          if (bad++ == 0) worst = static_cast<double>(i);
        }
      }
      EXPECT_EQ(bad, 0) << "sequence " << s << " (kv_len " << c.kv_lens[s] << "): " << bad
                        << " outputs out of tolerance, first at " << worst << ": got " << got[static_cast<size_t>(worst)]
                        << " want " << want[static_cast<size_t>(worst)];
      const double rel = ref > 0 ? std::sqrt(err / ref) : std::sqrt(err);
      EXPECT_LE(rel, kSeqRelL2) << "sequence " << s << " (kv_len " << c.kv_lens[s] << ")";
    }
  }
  emu::SetSchedule(emu::Schedule::kForward);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, MlaDecodeEmuTest,
    ::testing::Values(
        // The golden fixtures' attention: 8 heads (rows 8..15 of the MMA tile
        // empty), kv_lora 160 + rope 16 (11 k-steps: halves of 6 and 5).
        Case{8, 160, 16, 0.25f, {1, 5, 64, 65, 129, 0}},
        // DeepSeek-V3's latent at TP 8 (16 heads); 2 tiles with a partial one.
        Case{16, 512, 64, 0.13523f, {130, 3}},
        // Two MMA tiles per block (32 heads per group): 20 heads fill part of it;
        // kv_lora 64 gives warps 1..7 one output tile and latent 80 five k-steps.
        Case{20, 64, 16, 0.3f, {200, 1, 64}},
        // Two head groups of 32 sharing each range.
        Case{64, 128, 32, 0.2f, {70, 128}}),
    [](const ::testing::TestParamInfo<Case>& info) {
      std::ostringstream name;
      name << "h" << info.param.heads << "_kv" << info.param.kv_lora << "_rope" << info.param.rope;
      return name.str();
    });

}  // namespace
}  // namespace mla
