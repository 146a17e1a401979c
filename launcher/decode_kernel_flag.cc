#include "launcher/decode_kernel_flag.h"

#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace mla {
namespace {

constexpr char kExpected[] =
    "expected a comma-separated list of heads-per-block=16|32|64, mma=sync|warpgroup, query=shared|registers, "
    "copy=cp-async|bulk, gemm=cublas|head, merge=kernel|last-block, issue-ahead, prefetch-l2, pdl; or default";

template <typename T, size_t N>
absl::Status Choose(const std::string& spec, const std::string& key, const std::string& value,
                    const std::pair<const char*, T> (&choices)[N], T* out) {
  std::string names;
  for (const auto& [name, v] : choices) {
    if (value == name) {
      *out = v;
      return absl::OkStatus();
    }
    absl::StrAppend(&names, names.empty() ? "" : "|", name);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--decode-kernel '", spec, "': ", key, "=", value, " (expected ", key, "=", names, ")"));
}

}  // namespace

absl::StatusOr<cuda::MlaDecodeVariant> ParseDecodeKernel(const std::string& spec) {
  cuda::MlaDecodeVariant v;
  if (spec.empty() || spec == "default") return v;
  const std::vector<std::string> items = absl::StrSplit(spec, ',');
  std::set<std::string> seen;
  for (const std::string& item : items) {
    const size_t eq = item.find('=');
    const bool has_value = eq != std::string::npos;
    const std::string key = item.substr(0, eq), value = has_value ? item.substr(eq + 1) : std::string();
    if (!seen.insert(key).second) {
      return absl::InvalidArgumentError(absl::StrCat("--decode-kernel '", spec, "': ", key, " given twice"));
    }
    absl::Status s;
    if (key == "heads-per-block" && has_value) {
      const std::pair<const char*, int> c[] = {{"16", 16}, {"32", 32}, {"64", 64}};
      s = Choose(spec, key, value, c, &v.heads_per_block);
    } else if (key == "mma" && has_value) {
      const std::pair<const char*, cuda::MlaDecodeMma> c[] = {{"sync", cuda::MlaDecodeMma::kSync},
                                                              {"warpgroup", cuda::MlaDecodeMma::kWarpgroup}};
      s = Choose(spec, key, value, c, &v.mma);
    } else if (key == "query" && has_value) {
      const std::pair<const char*, cuda::MlaDecodeQuery> c[] = {{"shared", cuda::MlaDecodeQuery::kShared},
                                                                {"registers", cuda::MlaDecodeQuery::kRegisters}};
      s = Choose(spec, key, value, c, &v.query);
    } else if (key == "copy" && has_value) {
      const std::pair<const char*, cuda::MlaDecodeCopy> c[] = {{"cp-async", cuda::MlaDecodeCopy::kCpAsync},
                                                               {"bulk", cuda::MlaDecodeCopy::kBulk}};
      s = Choose(spec, key, value, c, &v.copy);
    } else if (key == "gemm" && has_value) {
      const std::pair<const char*, cuda::MlaDecodeGemm> c[] = {{"cublas", cuda::MlaDecodeGemm::kCublas},
                                                               {"head", cuda::MlaDecodeGemm::kHead}};
      s = Choose(spec, key, value, c, &v.gemm);
    } else if (key == "merge" && has_value) {
      const std::pair<const char*, bool> c[] = {{"kernel", false}, {"last-block", true}};
      s = Choose(spec, key, value, c, &v.merge_in_block);
    } else if (key == "issue-ahead" && !has_value) {
      v.issue_ahead = true;
    } else if (key == "prefetch-l2" && !has_value) {
      v.prefetch_l2 = true;
    } else if (key == "pdl" && !has_value) {
      v.pdl = true;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("--decode-kernel '", spec, "': '", item, "' (", kExpected, ")"));
    }
    if (!s.ok()) return s;
  }
  return v;
}

absl::StatusOr<cuda::MlaDecodeVariant> DecodeKernelFlag(const CliFlags& flags, const std::string& backend) {
  absl::StatusOr<cuda::MlaDecodeVariant> v = ParseDecodeKernel(flags.String("decode-kernel").value_or(""));
  if (v.ok() && !v->IsDefault() && backend != "cuda") {
    return absl::InvalidArgumentError(absl::StrCat("--decode-kernel with --backend ", backend,
                                                   " (expected --backend cuda: the CPU model has one decode kernel)"));
  }
  return v;
}

absl::StatusOr<bool> DecodeGraphsFlag(const CliFlags& flags, const std::string& backend) {
  const bool on = flags.Has("decode-graphs");
  if (on && backend != "cuda") {
    return absl::InvalidArgumentError(absl::StrCat("--decode-graphs with --backend ", backend,
                                                   " (expected --backend cuda: CUDA graphs are the GPU's)"));
  }
  return on;
}

}  // namespace mla
