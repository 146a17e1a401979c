// --decode-kernel SPEC (launcher/decode_kernel_flag.h): every word, the
// defaults, and the messages for bad specs (pinned).
#include "launcher/decode_kernel_flag.h"

#include <string>

#include "gtest/gtest.h"

namespace mla {
namespace {

using cuda::MlaDecodeCopy;
using cuda::MlaDecodeGemm;
using cuda::MlaDecodeMma;
using cuda::MlaDecodeQuery;
using cuda::MlaDecodeVariant;

std::string Error(const std::string& spec) {
  absl::StatusOr<MlaDecodeVariant> v = ParseDecodeKernel(spec);
  EXPECT_FALSE(v.ok()) << spec;
  if (v.ok()) return "";
  EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(v.status().message());
}

TEST(DecodeKernelFlagTest, EmptyAndDefaultAreTheKernelsDefaults) {
  for (const std::string spec : {"", "default"}) {
    absl::StatusOr<MlaDecodeVariant> v = ParseDecodeKernel(spec);
    ASSERT_TRUE(v.ok()) << v.status();
    EXPECT_TRUE(v->IsDefault()) << spec;
  }
}

TEST(DecodeKernelFlagTest, EveryWord) {
  absl::StatusOr<MlaDecodeVariant> v =
      ParseDecodeKernel("heads-per-block=16,mma=warpgroup,copy=bulk,issue-ahead,pdl,merge=last-block,gemm=head");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->heads_per_block, 16);
  EXPECT_EQ(v->mma, MlaDecodeMma::kWarpgroup);
  EXPECT_EQ(v->copy, MlaDecodeCopy::kBulk);
  EXPECT_EQ(v->gemm, MlaDecodeGemm::kHead);
  EXPECT_EQ(v->query, MlaDecodeQuery::kAuto);
  EXPECT_TRUE(v->issue_ahead);
  EXPECT_TRUE(v->pdl);
  EXPECT_TRUE(v->merge_in_block);
  EXPECT_FALSE(v->prefetch_l2);
  EXPECT_FALSE(v->IsDefault());

  v = ParseDecodeKernel("heads-per-block=64,mma=sync,query=shared,copy=cp-async,prefetch-l2,merge=kernel");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->heads_per_block, 64);
  EXPECT_EQ(v->mma, MlaDecodeMma::kSync);
  EXPECT_EQ(v->query, MlaDecodeQuery::kShared);
  EXPECT_EQ(v->copy, MlaDecodeCopy::kCpAsync);
  EXPECT_TRUE(v->prefetch_l2);
  EXPECT_FALSE(v->merge_in_block);
  EXPECT_FALSE(v->issue_ahead);

  EXPECT_EQ(v->gemm, MlaDecodeGemm::kAuto);

  v = ParseDecodeKernel("heads-per-block=32,query=registers,gemm=cublas");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->heads_per_block, 32);
  EXPECT_EQ(v->query, MlaDecodeQuery::kRegisters);
  EXPECT_EQ(v->gemm, MlaDecodeGemm::kCublas);

  // The per-head GEMM choice alone is a choice: not the default.
  v = ParseDecodeKernel("gemm=head");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_FALSE(v->IsDefault());
}

// MlaDecodeVariantSpec (what a worker logs) parses back to the same variant.
TEST(DecodeKernelFlagTest, SpecRoundTrips) {
  for (const std::string spec : {"default", "heads-per-block=64,copy=bulk,merge=last-block",
                                 "mma=warpgroup,copy=bulk,issue-ahead,pdl", "heads-per-block=32,query=shared,prefetch-l2",
                                 "mma=sync,query=registers,copy=cp-async,merge=last-block,pdl",
                                 "mma=warpgroup,copy=bulk,gemm=head,merge=last-block,issue-ahead,pdl", "gemm=cublas"}) {
    absl::StatusOr<MlaDecodeVariant> v = ParseDecodeKernel(spec);
    ASSERT_TRUE(v.ok()) << v.status();
    EXPECT_EQ(cuda::MlaDecodeVariantSpec(*v), spec);
  }
  // merge=kernel is the default, so it is not said.
  EXPECT_EQ(cuda::MlaDecodeVariantSpec(*ParseDecodeKernel("pdl,merge=kernel")), "pdl");
}

TEST(DecodeKernelFlagTest, ErrorMessages) {
  EXPECT_EQ(Error("heads-per-block=48"),
            "--decode-kernel 'heads-per-block=48': heads-per-block=48 (expected heads-per-block=16|32|64)");
  EXPECT_EQ(Error("mma=wgmma"), "--decode-kernel 'mma=wgmma': mma=wgmma (expected mma=sync|warpgroup)");
  EXPECT_EQ(Error("copy=tma,pdl"), "--decode-kernel 'copy=tma,pdl': copy=tma (expected copy=cp-async|bulk)");
  EXPECT_EQ(Error("gemm=cutlass"), "--decode-kernel 'gemm=cutlass': gemm=cutlass (expected gemm=cublas|head)");
  EXPECT_EQ(Error("pdl,pdl"), "--decode-kernel 'pdl,pdl': pdl given twice");
  EXPECT_EQ(Error("mma=sync,mma=warpgroup"), "--decode-kernel 'mma=sync,mma=warpgroup': mma given twice");
  const std::string expected =
      "(expected a comma-separated list of heads-per-block=16|32|64, mma=sync|warpgroup, query=shared|registers, "
      "copy=cp-async|bulk, gemm=cublas|head, merge=kernel|last-block, issue-ahead, prefetch-l2, pdl; or default)";
  EXPECT_EQ(Error("fast"), "--decode-kernel 'fast': 'fast' " + expected);
  EXPECT_EQ(Error("pdl=1"), "--decode-kernel 'pdl=1': 'pdl=1' " + expected);
  EXPECT_EQ(Error("mma"), "--decode-kernel 'mma': 'mma' " + expected);
  EXPECT_EQ(Error("pdl,"), "--decode-kernel 'pdl,': '' " + expected);
  EXPECT_EQ(Error("default,pdl"), "--decode-kernel 'default,pdl': 'default' " + expected);
}

}  // namespace
}  // namespace mla
