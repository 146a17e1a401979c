// A small command-line flag parser with errors as values: a bad flag gives a
// message naming it and what was expected, never an exit inside the parser.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace mla {

class CliFlags {
 public:
  // `value_flags` take a value (--name V or --name=V); `bool_flags` take none.
  static absl::StatusOr<CliFlags> Parse(int argc, char** argv, const std::set<std::string>& value_flags,
                                        const std::set<std::string>& bool_flags);

  bool Has(const std::string& name) const { return values_.count(name) > 0; }
  std::optional<std::string> String(const std::string& name) const;
  absl::StatusOr<int64_t> Int(const std::string& name, int64_t fallback, int64_t min_value) const;
  absl::StatusOr<uint64_t> Uint64(const std::string& name, uint64_t fallback) const;
  absl::StatusOr<double> Double(const std::string& name, double fallback) const;
  // A comma-separated list of integers, e.g. "1,2,3".
  absl::StatusOr<std::vector<int32_t>> IntList(const std::string& name) const;

 private:
  std::map<std::string, std::string> values_;
};

}  // namespace mla
