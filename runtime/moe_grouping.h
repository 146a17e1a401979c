// Where the CUDA backend groups a MoE layer's expert choices by expert
// (runtime/cuda/cuda_model.h CudaModelOptions.moe_grouping), and its flag
// (--moe-grouping host|device: mla-generate, mla-worker, mla-launch). Here,
// not in runtime/cuda, so that builds without CUDA parse and pass it on.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace mla {

enum class MoeGrouping { kHost, kDevice };

inline const char* MoeGroupingName(MoeGrouping g) { return g == MoeGrouping::kDevice ? "device" : "host"; }

// `backend` cpu takes only host (the CPU model groups on the host, always).
inline absl::StatusOr<MoeGrouping> ParseMoeGrouping(const std::string& value, const std::string& backend) {
  if (value != "host" && value != "device") {
    return absl::InvalidArgumentError(absl::StrCat("--moe-grouping '", value, "' (expected host or device)"));
  }
  if (value == "device" && backend != "cuda") {
    return absl::InvalidArgumentError(absl::StrCat("--moe-grouping device with --backend ", backend,
                                                   " (expected --backend cuda: the CPU model groups on the host)"));
  }
  return value == "device" ? MoeGrouping::kDevice : MoeGrouping::kHost;
}

}  // namespace mla
