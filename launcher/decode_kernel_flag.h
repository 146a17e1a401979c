// --decode-kernel SPEC (mla-generate, mla-worker, mla-launch): which decode
// attention kernel the CUDA backend runs (kernels/cuda/mla_decode_variant.h),
// in mla-bench-decode's words, comma-separated:
//   heads-per-block=16|32|64  mma=sync|warpgroup  query=shared|registers
//   copy=cp-async|bulk  gemm=cublas|head  merge=kernel|last-block  issue-ahead
//   prefetch-l2  pdl
// e.g. "mma=warpgroup,copy=bulk,issue-ahead". "" or "default": the kernels'
// own defaults. Whether the model's latent takes the choice is the CUDA
// model's to say when it loads (CudaModelOptions.decode). Also the
// --decode-graphs switch, the same programs' other choice about decode steps.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "kernels/cuda/mla_decode_variant.h"
#include "launcher/cli_flags.h"

namespace mla {

absl::StatusOr<cuda::MlaDecodeVariant> ParseDecodeKernel(const std::string& spec);

// The --decode-kernel flag of `flags` (absent: the defaults), refused unless
// `backend` is cuda where it chooses anything (the CPU model has one kernel).
absl::StatusOr<cuda::MlaDecodeVariant> DecodeKernelFlag(const CliFlags& flags, const std::string& backend);

// The --decode-graphs switch of `flags` (decode steps replayed from CUDA
// graphs: CudaModelOptions.decode_graphs), refused unless `backend` is cuda.
absl::StatusOr<bool> DecodeGraphsFlag(const CliFlags& flags, const std::string& backend);

}  // namespace mla
