#include "runtime/communicator.h"

#include <cstdint>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"

namespace mla {
namespace comm_internal {
namespace {

// True when [a, a + a_bytes) and [b, b + b_bytes) share a byte.
bool Overlaps(const void* a, size_t a_bytes, const void* b, size_t b_bytes) {
  const auto a0 = reinterpret_cast<uintptr_t>(a);
  const auto b0 = reinterpret_cast<uintptr_t>(b);
  return a0 < b0 + b_bytes && b0 < a0 + a_bytes;
}

// `in` ([count]) must be out's slot `slot` exactly or lie outside out ([size][count]).
absl::Status CheckInOut(absl::string_view op, const float* in, size_t count, const float* out, int slot,
                        int size) {
  if (count > std::numeric_limits<size_t>::max() / sizeof(float) / static_cast<size_t>(size)) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": count ", count, " times size ", size, " overflows"));
  }
  const size_t in_bytes = count * sizeof(float);
  if (in == out + static_cast<size_t>(slot) * count) return absl::OkStatus();
  if (Overlaps(in, in_bytes, out, in_bytes * static_cast<size_t>(size))) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": in overlaps out but is not out + ", slot, " * count (the in-place slot of rank ", slot, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckRoot(absl::string_view op, int root, int size) {
  if (root < 0 || root >= size) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": root ", root, " is outside [0, ", size, ")"));
  }
  return absl::OkStatus();
}

absl::Status CheckAllReduce(const float* data, size_t count) {
  if (count > 0 && data == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("AllReduceSum: data is null with count ", count));
  }
  return absl::OkStatus();
}

absl::Status CheckAllGather(const float* in, size_t count, const float* out, int rank, int size) {
  if (count == 0) return absl::OkStatus();
  if (in == nullptr) return absl::InvalidArgumentError(absl::StrCat("AllGather: in is null with count ", count));
  if (out == nullptr) return absl::InvalidArgumentError(absl::StrCat("AllGather: out is null with count ", count));
  return CheckInOut("AllGather", in, count, out, rank, size);
}

absl::Status CheckGather(const float* in, size_t count, const float* out, int root, int rank, int size) {
  if (absl::Status s = CheckRoot("Gather", root, size); !s.ok()) return s;
  if (count == 0) return absl::OkStatus();
  if (in == nullptr) return absl::InvalidArgumentError(absl::StrCat("Gather: in is null with count ", count));
  if (rank != root) return absl::OkStatus();
  if (out == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("Gather: out is null on root ", root, " with count ", count));
  }
  return CheckInOut("Gather", in, count, out, root, size);
}

absl::Status CheckBroadcast(const void* data, size_t bytes, int root, int size) {
  if (absl::Status s = CheckRoot("Broadcast", root, size); !s.ok()) return s;
  if (bytes > 0 && data == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("Broadcast: data is null with bytes ", bytes));
  }
  return absl::OkStatus();
}

}  // namespace comm_internal

namespace {

class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }

  absl::Status AllReduceSum(float* data, size_t count) override { return comm_internal::CheckAllReduce(data, count); }

  absl::Status AllGather(const float* in, size_t count, float* out) override {
    if (absl::Status s = comm_internal::CheckAllGather(in, count, out, 0, 1); !s.ok()) return s;
    if (count > 0 && in != out) std::memcpy(out, in, count * sizeof(float));
    return absl::OkStatus();
  }

  absl::Status Gather(const float* in, size_t count, float* out, int root) override {
    if (absl::Status s = comm_internal::CheckGather(in, count, out, root, 0, 1); !s.ok()) return s;
    if (count > 0 && in != out) std::memcpy(out, in, count * sizeof(float));
    return absl::OkStatus();
  }

  absl::Status Broadcast(void* data, size_t bytes, int root) override {
    return comm_internal::CheckBroadcast(data, bytes, root, 1);
  }

  absl::Status Barrier() override { return absl::OkStatus(); }
};

}  // namespace

std::unique_ptr<Communicator> MakeLocalCommunicator() { return std::make_unique<LocalCommunicator>(); }

}  // namespace mla
