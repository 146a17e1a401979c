// Propagation helpers for absl::Status / absl::StatusOr.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define MLA_CONCAT_INNER(a, b) a##b
#define MLA_CONCAT(a, b) MLA_CONCAT_INNER(a, b)

// Returns the status from the enclosing function when `expr` is not OK.
#define MLA_RETURN_IF_ERROR(expr)                  \
  do {                                             \
    ::absl::Status mla_status_ = (expr);           \
    if (!mla_status_.ok()) return mla_status_;     \
  } while (0)

// `MLA_ASSIGN_OR_RETURN(auto x, F());` binds x to F()'s value or returns its error.
#define MLA_ASSIGN_OR_RETURN(lhs, rexpr) \
  MLA_ASSIGN_OR_RETURN_IMPL(MLA_CONCAT(mla_statusor_, __LINE__), lhs, rexpr)
#define MLA_ASSIGN_OR_RETURN_IMPL(tmp, lhs, rexpr) \
  auto tmp = (rexpr);                              \
  if (!tmp.ok()) return tmp.status();              \
  lhs = std::move(tmp).value()
