// Collectives between the tensor-parallel ranks: one interface, two transports
// (Gloo over TCP on CPUs, NCCL on GPUs), the same tests over both.
//
// Every rank of a group calls the same collectives in the same order with the same
// count, bytes and root; a call returns when this rank's part is done. One
// Communicator is used by one thread at a time.
//
// Errors: InvalidArgument for a bad argument (checked before any traffic, so the
// group stays usable); Unavailable when a peer is dead or unreachable;
// DeadlineExceeded when a peer does not take part within the transport's timeout;
// Internal otherwise. After a transport error the group is out of step: every
// later call returns Unavailable, and the group must be rebuilt.
#pragma once

#include <cstddef>
#include <memory>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace mla {

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;

  // data: [count], summed over the ranks in place. Every rank gets the same
  // bits on every run. Gloo: ((x_0 + x_1) + x_2) + ... in rank order,
  // elementwise, whatever `count` is (no dependence on batch size). NCCL: the
  // order is NCCL's, fixed for a world size, algorithm and message size.
  virtual absl::Status AllReduceSum(float* data, size_t count) = 0;

  // in: [count]; out: [size][count], rank r's input at out + r * count. `in` may be
  // out + rank * count (in place); otherwise the two must not overlap.
  virtual absl::Status AllGather(const float* in, size_t count, float* out) = 0;

  // in: [count]; out: [size][count] in rank order on `root` only (may be null
  // elsewhere). On root, `in` may be out + root * count.
  virtual absl::Status Gather(const float* in, size_t count, float* out, int root) = 0;

  // data: [bytes], root's bytes copied to every rank.
  virtual absl::Status Broadcast(void* data, size_t bytes, int root) = 0;

  // Returns once every rank has entered the barrier.
  virtual absl::Status Barrier() = 0;

  // AllReduceSum without the wait, for a transport whose collectives run in
  // a device stream's order (NCCL): CanEnqueueOn(stream) says whether it
  // enqueues on `stream` (a cudaStream_t, opaque here); then
  // EnqueueAllReduceSum returns once the operation is in that stream, ordered
  // after the caller's kernels before it and before those after, and its
  // failure is reported by the next call that waits (any collective above, or
  // Wait), within that call's timeout. Elsewhere (Gloo, the local group, NCCL
  // on another stream) CanEnqueueOn is false and EnqueueAllReduceSum is
  // AllReduceSum.
  virtual bool CanEnqueueOn(const void* stream) const {
    (void)stream;
    return false;
  }
  virtual absl::Status EnqueueAllReduceSum(float* data, size_t count) { return AllReduceSum(data, count); }
  // Waits for everything enqueued so far, as a collective's own wait does
  // (the same timeout and errors). OK at once where nothing is enqueued.
  virtual absl::Status Wait() { return absl::OkStatus(); }
};

// Size 1, rank 0: every collective is a copy or a no-op.
std::unique_ptr<Communicator> MakeLocalCommunicator();

// Argument checks every transport runs before any traffic; the message names the
// operation and the argument. count == 0 (bytes == 0) passes with null pointers:
// the collective is then a no-op.
namespace comm_internal {
absl::Status CheckRoot(absl::string_view op, int root, int size);
absl::Status CheckAllReduce(const float* data, size_t count);
absl::Status CheckAllGather(const float* in, size_t count, const float* out, int rank, int size);
absl::Status CheckGather(const float* in, size_t count, const float* out, int root, int rank, int size);
absl::Status CheckBroadcast(const void* data, size_t bytes, int root, int size);
}  // namespace comm_internal

}  // namespace mla
