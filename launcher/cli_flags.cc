#include "launcher/cli_flags.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace mla {

absl::StatusOr<CliFlags> CliFlags::Parse(int argc, char** argv, const std::set<std::string>& value_flags,
                                         const std::set<std::string>& bool_flags) {
  CliFlags flags;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", arg, "' (expected --flag)"));
    }
    std::string name = arg.substr(2), value;
    bool inline_value = false;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      inline_value = true;
    }
    if (bool_flags.count(name)) {
      if (inline_value) return absl::InvalidArgumentError(absl::StrCat("--", name, " takes no value"));
      flags.values_[name] = "true";
    } else if (value_flags.count(name)) {
      if (!inline_value) {
        if (i + 1 >= argc) return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
        value = argv[++i];
      }
      flags.values_[name] = value;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name, " (see --help)"));
    }
  }
  return flags;
}

std::optional<std::string> CliFlags::String(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) return std::nullopt;
  return it->second;
}

absl::StatusOr<int64_t> CliFlags::Int(const std::string& name, int64_t fallback, int64_t min_value) const {
  auto s = String(name);
  if (!s) return fallback;
  int64_t v;
  if (!absl::SimpleAtoi(*s, &v) || v < min_value) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, " '", *s, "' (expected an integer >= ", min_value, ")"));
  }
  return v;
}

absl::StatusOr<uint64_t> CliFlags::Uint64(const std::string& name, uint64_t fallback) const {
  auto s = String(name);
  if (!s) return fallback;
  uint64_t v;
  if (!absl::SimpleAtoi(*s, &v)) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, " '", *s, "' (expected an unsigned integer)"));
  }
  return v;
}

absl::StatusOr<double> CliFlags::Double(const std::string& name, double fallback) const {
  auto s = String(name);
  if (!s) return fallback;
  double v;
  if (!absl::SimpleAtod(*s, &v) || !std::isfinite(v)) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, " '", *s, "' (expected a number)"));
  }
  return v;
}

absl::StatusOr<std::vector<int32_t>> CliFlags::IntList(const std::string& name) const {
  auto s = String(name);
  std::vector<int32_t> out;
  if (!s) return out;
  for (absl::string_view part : absl::StrSplit(*s, ',')) {
    int32_t v;
    if (!absl::SimpleAtoi(part, &v)) {
      return absl::InvalidArgumentError(absl::StrCat("--", name, ": '", std::string(part),
                                                     "' is not an integer (expected e.g. 1,2,3)"));
    }
    out.push_back(v);
  }
  return out;
}

}  // namespace mla
