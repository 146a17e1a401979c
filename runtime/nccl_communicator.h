// The GPU transport: NCCL collectives on device memory, bootstrapped through a
// KeyValueStore (no NCCL header leaks out of this file's .cc).
//
// Pointers are DEVICE pointers on options.device (the CUDA model passes its
// device buffers); the Gloo transport takes host pointers. The argument checks
// are the ones every transport runs (comm_internal): they compare addresses
// only and never dereference them.
//
// Each call enqueues its NCCL operation on the communicator's stream and returns
// when the stream has drained: like Gloo's, a call is synchronous (except
// EnqueueAllReduceSum, whose wait is the next call's). It waits by
// polling cudaStreamQuery and ncclCommGetAsyncError (spinning for the first
// millisecond, then sleeping with a backoff up to 1 ms) until options.timeout.
// A peer that died or hangs therefore gives DeadlineExceeded (or Unavailable,
// when NCCL notices a broken connection) rather than a hang; the communicator
// is then aborted (ncclCommAbort: its kernels quit, the group cannot hang) and
// every later call returns Unavailable.
//
// Determinism (unlike Gloo's rank-order sum): AllReduceSum adds in NCCL's order
// (ring, tree or NVLS, chunked), not ((x_0 + x_1) + x_2) + .... Every rank gets
// the same bits, and a rerun gives the same bits for the same world size,
// count, NCCL version, topology and algorithm/protocol choice; but NCCL picks
// the algorithm and chunking by message size, so the same row may round
// differently at another batch size, and results differ from Gloo's in the
// last bits. Pin NCCL_ALGO / NCCL_PROTO in the environment for reproducible
// runs; compare against CPU results with a tolerance.
#pragma once

#include <cuda_runtime_api.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "runtime/communicator.h"
#include "runtime/kv_store.h"

struct ncclComm;  // nccl.h: typedef struct ncclComm* ncclComm_t

namespace mla {

struct NcclOptions {
  // The CUDA device this rank runs on (one rank per device: NCCL refuses two
  // ranks of a group on one GPU).
  int device = 0;
  // Key prefix in the store, so a restarted group does not read a previous
  // group's unique id: use a fresh prefix per group incarnation.
  std::string prefix = "nccl";
  // Bounds waiting for the unique id in the store, then NCCL's initialisation,
  // then every collective, each on its own.
  absl::Duration timeout = absl::Seconds(30);
};

class NcclCommunicator final : public Communicator {
 public:
  // Joins the group of `size` ranks as `rank` on options.device: rank 0 creates
  // the NCCL unique id and Sets it under "<prefix>/unique_id" (the raw 128
  // bytes); the others Get it. Then a non-blocking ncclCommInitRankConfig,
  // polled until done. `store` is only used during this call. Size 1 is a real
  // one-rank NCCL group (device pointers: no host fallback). Errors:
  // InvalidArgument (rank, size, timeout, device); DeadlineExceeded when the id
  // or the other ranks do not arrive within the timeout; Unavailable when NCCL
  // reports a network or remote error; Internal for CUDA or NCCL failures.
  static absl::StatusOr<std::unique_ptr<NcclCommunicator>> Create(KeyValueStore& store, int rank, int size,
                                                                  const NcclOptions& options);

  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  // A healthy group is finalised (ncclCommFinalize, which waits for this node's
  // other ranks to finalise too, bounded by the timeout) and destroyed; a broken
  // one, or one whose finalise times out, is aborted. So destroy every rank's
  // communicator at about the same time (ranks that are threads of one process:
  // on their own threads, not one after another). Then the stream this object
  // created is destroyed; a stream set with SetStream is left to its owner.
  ~NcclCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int device() const { return device_; }

  // data: device [count].
  absl::Status AllReduceSum(float* data, size_t count) override;
  // in: device [count]; out: device [size][count].
  absl::Status AllGather(const float* in, size_t count, float* out) override;
  // in: device [count]; out: device [size][count] on root (ncclSend/ncclRecv in
  // one group: root receives every other rank's part, copies its own).
  absl::Status Gather(const float* in, size_t count, float* out, int root) override;
  // data: device [bytes] (ncclUint8, in place).
  absl::Status Broadcast(void* data, size_t bytes, int root) override;
  // A one-element all-reduce on an internal device scalar.
  absl::Status Barrier() override;

  // stream == this communicator's stream (SetStream) and the group healthy.
  bool CanEnqueueOn(const void* stream) const override;
  // data: device [count]. Returns once NCCL has the operation in the stream
  // (non-blocking mode: ncclInProgress waited out, within the timeout).
  absl::Status EnqueueAllReduceSum(float* data, size_t count) override;
  // Polls the stream until it drains, as every collective's wait does: a
  // peer that died or hangs gives DeadlineExceeded or Unavailable after the
  // timeout, and the communicator is aborted.
  absl::Status Wait() override;

  // Where collectives are enqueued: the model passes the stream its kernels run
  // on, so a collective is ordered after the kernels that produce its input
  // without an extra event (waiting for the collective then waits for those
  // kernels too). The stream must belong to device() and outlive its use here;
  // the caller keeps ownership. nullptr returns to the communicator's own
  // stream, a blocking one: ordered after the legacy default stream's work
  // (cudaMemcpy, cudaMemset), so inputs written there need no extra sync.
  void SetStream(cudaStream_t stream);
  cudaStream_t stream() const { return stream_; }

  // Aborts the group now, locally (no peer needed): later calls return
  // Unavailable and the destructor skips the graceful finalise. For a rank told
  // that another rank died (the coordinator knows before NCCL does).
  void Abort(absl::string_view reason);

  // OK, or the error that made the group unusable.
  const absl::Status& health() const { return broken_; }

 private:
  NcclCommunicator(int rank, int size, const NcclOptions& options);

  // Runs one collective: `enqueue` issues the NCCL calls (`call`, for messages)
  // on stream_ and returns their ncclResult_t; then waits for completion. The first transport error
  // aborts the communicator and marks the group out of step for good.
  template <typename Enqueue>
  absl::Status Run(absl::string_view op, absl::string_view call, Enqueue&& enqueue);
  // Run's and EnqueueOnly's first step: Unavailable once broken, then this device made current.
  absl::Status Prepare(absl::string_view op);
  // The same without waiting for the stream: only for NCCL to take the call.
  template <typename Enqueue>
  absl::Status EnqueueOnly(absl::string_view op, absl::string_view call, Enqueue&& enqueue);
  // enqueue_result: the ncclResult_t of the enqueue (an int here: no nccl.h in this header).
  absl::Status WaitForCompletion(absl::string_view op, absl::string_view call, int enqueue_result,
                                 absl::Time deadline);
  absl::Status Finalize();
  absl::Status Fail(absl::Status status);
  absl::Status Unusable(absl::string_view op) const;
  std::string Where(absl::string_view op) const;
  void AbortComm();

  const int rank_;
  const int size_;
  const int device_;
  const absl::Duration timeout_;
  ncclComm* comm_ = nullptr;            // null until initialised, and once aborted or destroyed
  cudaStream_t own_stream_ = nullptr;   // created here, destroyed by the destructor
  cudaStream_t stream_ = nullptr;       // own_stream_ or the one set with SetStream
  float* scratch_ = nullptr;            // device [1]: Barrier's operand
  bool stream_stuck_ = false;           // work still queued after an abort: scratch_ is leaked, not freed
  absl::Status broken_;                 // the first transport error, if any
};

// CreateNcclCommunicator = NcclCommunicator::Create behind the interface. The
// model reaches SetStream through NcclCommunicator::Create (or a static_cast:
// this returns only NcclCommunicator).
absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(KeyValueStore& store, int rank, int size,
                                                                     const NcclOptions& options);

}  // namespace mla
