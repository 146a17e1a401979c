// The decode attention's kernel choices (mla_decode.cuh), plain C++ so that
// processes built without CUDA (mla-launch) can parse and forward them:
// the enums MlaDecodeParams carries, and MlaDecodeVariant, the whole choice
// as a serving process makes it (CudaModelOptions.decode, --decode-kernel:
// launcher/decode_kernel_flag.h). The defaults are the kernels' own.
#pragma once

#include <cstdint>
#include <string>

namespace mla::cuda {

// Where the tensor-core kernel keeps a work item's query while it streams the
// cache (mla_decode_mma.cu): re-read from shared memory every tile (kShared),
// or held as MMA fragments in registers for the whole item (kRegisters: a
// third less shared-memory traffic per tile at 32 heads per block, the price
// being registers and a four-way sum of partial scores). kAuto is
// kRegisters, 1-5% faster on every benchmark shape on an H200 (bench/RESULTS.md).
enum class MlaDecodeQuery : uint8_t { kAuto, kShared, kRegisters };

// How the tensor-core kernel stages the cache: 16-byte cp.async from every
// thread (kCpAsync), or bulk copies of whole rows from one warp completing on
// an mbarrier (kBulk, sm_90's TMA engine: far fewer issued instructions per
// tile, the kernel being issue-bound). kAuto is kCpAsync: on an H200 the bulk
// copies were no faster at 16 heads and 5% slower on 64x8192x128
// (bench/RESULTS.md, session 5). The wgmma kernels (16 and 64 heads per
// block) read kBulk as TMA tensor copies: one thread requests a whole
// 64-token page as 9 boxes into 128-byte-swizzled stages (with 64-token
// pages; else cp.async; mla_decode_tma.cuh); not yet measured.
enum class MlaDecodeCopy : uint8_t { kAuto, kCpAsync, kBulk };

// Which tensor-core instructions run a plan of 16 heads per block on
// DeepSeek-V3's latent (MlaDecodeUsesWgmma's shape): mma.sync (kSync,
// mla_decode_mma.cu) or warpgroup MMAs with the cached positions as the MMA's
// M (kWarpgroup, mla_decode_wgmma16.cu: no padded rows, an 18 KiB query, 68
// wgmma a tile where mma.sync takes 544 mma and about as many ldmatrix).
// kAuto is kSync until it has been measured on a GPU. Plans of 32 heads per block always run mma.sync, of 64
// always wgmma; other shapes always mma.sync.
enum class MlaDecodeMma : uint8_t { kAuto, kSync, kWarpgroup };

// Who runs the two per-head GEMMs around the decode attention (q_latent =
// q_nope W_UK before it, out = o_latent W_UV^T after it): cuBLAS's
// strided-batched GEMM (kCublas) or head_gemm.cuh's kernel (kHead: one launch
// of every head's output tiles, each block requesting all of its k at once;
// with pdl it starts while the kernel ahead finishes and loads its weights
// meanwhile). kAuto is kCublas: on an H200 the kernel was faster alone but did
// not move the pipeline before its last change (bench/RESULTS.md, session 5);
// not yet measured since. mla-bench-decode's --gemm.
enum class MlaDecodeGemm : uint8_t { kAuto, kCublas, kHead };

// One decode kernel and its variants, the choices mla-bench-decode's flags
// make, so that the serving path runs whichever the benchmark measures best.
struct MlaDecodeVariant {
  // 0: MlaDecodeDefaultHeadsPerBlock, step by step; 16 or 32 (mma.sync; 16
  // with mma kWarpgroup: the 16-head wgmma kernel), or 64 (the wgmma kernel).
  int heads_per_block = 0;
  MlaDecodeMma mma = MlaDecodeMma::kAuto;        // of 16-head plans
  MlaDecodeQuery query = MlaDecodeQuery::kAuto;  // the mma.sync kernel's
  MlaDecodeCopy copy = MlaDecodeCopy::kAuto;     // kBulk: in the wgmma kernels TMA
  MlaDecodeGemm gemm = MlaDecodeGemm::kAuto;     // the per-head GEMMs around it
  bool issue_ahead = false;  // the 16-head wgmma kernel requests tiles two ahead
  bool prefetch_l2 = false;  // the tile after the next one asked of L2
  // Decode, merge and (with gemm kHead) the per-head GEMMs launched with
  // programmatic dependent launch.
  bool pdl = false;
  // Split sequences merged by each split's last item, not a second kernel
  // (MlaDecodeParams.merge_counters): the same logits to the bit.
  bool merge_in_block = false;

  bool IsDefault() const {
    return heads_per_block == 0 && mma == MlaDecodeMma::kAuto && query == MlaDecodeQuery::kAuto &&
           copy == MlaDecodeCopy::kAuto && gemm == MlaDecodeGemm::kAuto && !issue_ahead && !prefetch_l2 && !pdl &&
           !merge_in_block;
  }
  bool operator==(const MlaDecodeVariant&) const = default;
};

// The variant in --decode-kernel's words (launcher/decode_kernel_flag.h parses
// it back), the choices made only: "default" when none is.
inline std::string MlaDecodeVariantSpec(const MlaDecodeVariant& v) {
  std::string s;
  auto add = [&s](const std::string& word) { s += (s.empty() ? "" : ",") + word; };
  if (v.heads_per_block != 0) add("heads-per-block=" + std::to_string(v.heads_per_block));
  if (v.mma != MlaDecodeMma::kAuto) add(v.mma == MlaDecodeMma::kSync ? "mma=sync" : "mma=warpgroup");
  if (v.query != MlaDecodeQuery::kAuto) add(v.query == MlaDecodeQuery::kShared ? "query=shared" : "query=registers");
  if (v.copy != MlaDecodeCopy::kAuto) add(v.copy == MlaDecodeCopy::kCpAsync ? "copy=cp-async" : "copy=bulk");
  if (v.gemm != MlaDecodeGemm::kAuto) add(v.gemm == MlaDecodeGemm::kCublas ? "gemm=cublas" : "gemm=head");
  if (v.merge_in_block) add("merge=last-block");
  if (v.issue_ahead) add("issue-ahead");
  if (v.prefetch_l2) add("prefetch-l2");
  if (v.pdl) add("pdl");
  return s.empty() ? "default" : s;
}

}  // namespace mla::cuda
