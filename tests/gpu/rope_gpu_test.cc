// RoPE on q_pe and k_pe in place, inside the real layouts (q [tokens, heads,
// nope | rope], kv_a [tokens, kv_lora | rope]), against cpu::ApplyRope with the
// cpu::RopeInvFreq table. Both sides take the same float angle and cos/sin in
// double, so only the output rounding (BF16, 2^-9 relative) and the last bit of
// a cos/sin differ: rtol 1e-2, atol 1e-5. Everything outside the rope part
// (q_nope, c_kv) must be untouched, bit for bit.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <ostream>
#include <vector>

#include "kernels/cpu/rope.h"
#include "kernels/cuda/rope.cuh"
#include "tests/gpu/gpu_test_util.h"

namespace mla {
namespace {

using gpu_test::DeviceBuffer;

constexpr double kRtol = 1e-2, kAtol = 1e-5;

struct RopeCase {
  int64_t tokens;
  int heads, nope, rope, kv_lora;
  bool yarn;  // DeepSeek-V3's YaRN (factor 40, original 4096) or plain theta 10000
  float attention_factor;
  bool do_q, do_k;
};

void PrintTo(const RopeCase& c, std::ostream* os) {
  *os << "tokens " << c.tokens << " heads " << c.heads << " rope " << c.rope << (c.yarn ? " yarn" : "") << " af "
      << c.attention_factor << (c.do_q ? " q" : "") << (c.do_k ? " k" : "");
}

cpu::RopeParams RopeConfig(const RopeCase& c) {
  cpu::RopeParams r;
  r.rope_dim = c.rope;
  r.theta = 10000.0;
  r.yarn = c.yarn;
  r.factor = c.yarn ? 40.0 : 1.0;
  r.original_max_position_embeddings = 4096;
  r.beta_fast = 32.0;
  r.beta_slow = 1.0;
  return r;
}

class RopeGpuTest : public ::testing::TestWithParam<RopeCase> {};

TEST_P(RopeGpuTest, MatchesCpu) {
  MLA_SKIP_WITHOUT_GPU();
  const RopeCase c = GetParam();
  SCOPED_TRACE(::testing::Message() << "tokens " << c.tokens << " heads " << c.heads << " rope " << c.rope << " yarn "
                                    << c.yarn << " af " << c.attention_factor << " q " << c.do_q << " k " << c.do_k
                                    << " seed " << gpu_test::BaseSeed());
  auto rng = gpu_test::CaseRng(static_cast<uint64_t>(c.tokens * 1000 + c.heads * 10 + c.rope + c.yarn));
  const int64_t qk = c.nope + c.rope, lat = c.kv_lora + c.rope;
  std::vector<uint16_t> q = gpu_test::RandomBf16(rng, c.tokens * c.heads * qk, -2.0f, 2.0f);
  std::vector<uint16_t> kv = gpu_test::RandomBf16(rng, c.tokens * lat, -2.0f, 2.0f);
  std::vector<int32_t> pos(static_cast<size_t>(c.tokens));
  std::uniform_int_distribution<int32_t> pick(0, 163839);  // V3's YaRN context: 4096 * 40
  const int32_t edges[] = {0, 1, 4095, 4096, 163839};
  for (size_t i = 0; i < pos.size(); ++i) pos[i] = i < std::size(edges) ? edges[i] : pick(rng);
  const std::vector<float> inv_freq = cpu::RopeInvFreq(RopeConfig(c));

  // Reference on float copies; then compare the rotated parts, and the rest bitwise.
  std::vector<float> qf = gpu_test::ToFloats(q), kvf = gpu_test::ToFloats(kv);
  for (int64_t t = 0; t < c.tokens; ++t) {
    for (int h = 0; h < c.heads && c.do_q; ++h) {
      cpu::ApplyRope(&qf[(t * c.heads + h) * qk + c.nope], c.rope, pos[t], inv_freq.data(), c.attention_factor);
    }
    if (c.do_k) cpu::ApplyRope(&kvf[t * lat + c.kv_lora], c.rope, pos[t], inv_freq.data(), c.attention_factor);
  }

  DeviceBuffer<uint16_t> d_q(q), d_kv(kv);
  DeviceBuffer<int32_t> d_pos(pos);
  DeviceBuffer<float> d_inv(inv_freq);
  cuda::RopeParams p;
  p.q_pe = c.do_q ? d_q.bf16() + c.nope : nullptr;
  p.k_pe = c.do_k ? d_kv.bf16() + c.kv_lora : nullptr;
  p.positions = d_pos.get();
  p.inv_freq = d_inv.get();
  p.num_tokens = c.tokens;
  p.num_heads = c.heads;
  p.q_token_stride = c.heads * qk;
  p.q_head_stride = qk;
  p.k_token_stride = lat;
  p.rope_dim = c.rope;
  p.attention_factor = c.attention_factor;
  MLA_ASSERT_CUDA(cuda::LaunchRope(p, nullptr));
  std::vector<uint16_t> got_q, got_kv;
  MLA_ASSERT_CUDA(d_q.Download(got_q));
  MLA_ASSERT_CUDA(d_kv.Download(got_kv));

  std::vector<float> got_rot, want_rot;
  std::vector<uint16_t> got_kept, want_kept;
  for (size_t i = 0; i < q.size(); ++i) {
    if (c.do_q && static_cast<int64_t>(i % qk) >= c.nope) {
      got_rot.push_back(cpu::Bf16ToFloat(got_q[i]));
      want_rot.push_back(qf[i]);
    } else {
      got_kept.push_back(got_q[i]);
      want_kept.push_back(q[i]);
    }
  }
  for (size_t i = 0; i < kv.size(); ++i) {
    if (c.do_k && static_cast<int64_t>(i % lat) >= c.kv_lora) {
      got_rot.push_back(cpu::Bf16ToFloat(got_kv[i]));
      want_rot.push_back(kvf[i]);
    } else {
      got_kept.push_back(got_kv[i]);
      want_kept.push_back(kv[i]);
    }
  }
  EXPECT_TRUE(gpu_test::AllClose(got_rot, want_rot, kRtol, kAtol));
  EXPECT_TRUE(gpu_test::BitsEqual(got_kept, want_kept));
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, RopeGpuTest,
    ::testing::Values(RopeCase{0, 128, 128, 64, 512, true, 1.0f, true, true},
                      RopeCase{1, 128, 128, 64, 512, true, 1.0f, true, true},
                      RopeCase{65, 128, 128, 64, 512, true, 1.0f, true, true},
                      RopeCase{300, 16, 128, 64, 512, true, 1.0f, true, true},
                      RopeCase{64, 16, 128, 64, 512, true, 1.2f, true, false},
                      RopeCase{63, 16, 16, 8, 32, false, 1.0f, false, true},
                      RopeCase{37, 3, 8, 6, 10, false, 0.9f, true, true}));

}  // namespace
}  // namespace mla
