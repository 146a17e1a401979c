#include "runtime/nccl_communicator.h"

#include <cuda_runtime_api.h>
#include <glog/logging.h>
#include <nccl.h>

#include <algorithm>
#include <cstring>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "runtime/cuda_status.h"
#include "runtime/status_macros.h"

namespace mla {
namespace {

// Waiting for a collective: spin this long first (a decode step's all-reduce
// takes tens of microseconds; a sleep would cost more than the collective),
// then sleep from kFirstSleep doubling up to kMaxSleep between polls.
constexpr absl::Duration kSpin = absl::Milliseconds(1);
constexpr absl::Duration kFirstSleep = absl::Microseconds(10);
constexpr absl::Duration kMaxSleep = absl::Milliseconds(1);
// After ncclCommAbort, NCCL's kernels see the abort flag and quit; the stream is
// given this long to drain before it is declared stuck.
constexpr absl::Duration kDrainAfterAbort = absl::Seconds(5);

// Paces one wait loop.
class Backoff {
 public:
  void Pause() {
    if (absl::Now() - start_ < kSpin) {
      std::this_thread::yield();
      return;
    }
    absl::SleepFor(sleep_);
    sleep_ = std::min(sleep_ * 2, kMaxSleep);
  }

 private:
  const absl::Time start_ = absl::Now();
  absl::Duration sleep_ = kFirstSleep;
};

// An NCCL failure as the Communicator contract codes it: a broken connection or
// a remote failure is Unavailable; anything else (CUDA, internal, misuse) Internal.
absl::Status NcclError(absl::string_view where, absl::string_view call, ncclResult_t result, ncclComm_t comm) {
  std::string message = absl::StrCat(where, ": ", call, " failed: ", cuda_internal::NcclResultName(result), " (",
                                     ncclGetErrorString(result), ")");
  const char* detail = ncclGetLastError(comm);
  if (detail != nullptr && detail[0] != '\0') absl::StrAppend(&message, "; last NCCL error: ", detail);
  if (result == ncclSystemError || result == ncclRemoteError) return absl::UnavailableError(message);
  return absl::InternalError(message);
}

// `status` with `where: ` in front of its message, its code kept.
absl::Status Prefixed(absl::string_view where, const absl::Status& status) {
  return absl::Status(status.code(), absl::StrCat(where, ": ", status.message()));
}

// Polls a non-blocking communicator until its pending operation (init, enqueue,
// finalize) is done: OK, the NCCL error, or DeadlineExceeded at `deadline`.
absl::Status WaitUntilReady(ncclComm_t comm, absl::string_view where, absl::string_view call, absl::Time deadline,
                            absl::Duration timeout) {
  Backoff backoff;
  while (true) {
    ncclResult_t state = ncclInProgress;
    const ncclResult_t query = ncclCommGetAsyncError(comm, &state);
    if (query != ncclSuccess) return NcclError(where, "ncclCommGetAsyncError", query, comm);
    if (state == ncclSuccess) return absl::OkStatus();
    if (state != ncclInProgress) return NcclError(where, call, state, comm);
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(where, ": ", call, " not done within ",
                                                      absl::FormatDuration(timeout)));
    }
    backoff.Pause();
  }
}

// Waits up to `limit` for `stream` to drain; false when work is still queued.
bool DrainStream(cudaStream_t stream, absl::Duration limit) {
  const absl::Time deadline = absl::Now() + limit;
  Backoff backoff;
  while (cudaStreamQuery(stream) == cudaErrorNotReady) {
    if (absl::Now() >= deadline) return false;
    backoff.Pause();
  }
  return true;
}

}  // namespace

NcclCommunicator::NcclCommunicator(int rank, int size, const NcclOptions& options)
    : rank_(rank), size_(size), device_(options.device), timeout_(options.timeout) {}

absl::StatusOr<std::unique_ptr<NcclCommunicator>> NcclCommunicator::Create(KeyValueStore& store, int rank, int size,
                                                                           const NcclOptions& options) {
  if (size < 1) return absl::InvalidArgumentError(absl::StrCat("CreateNcclCommunicator: size ", size, " < 1"));
  if (rank < 0 || rank >= size) {
    return absl::InvalidArgumentError(
        absl::StrCat("CreateNcclCommunicator: rank ", rank, " is outside [0, ", size, ")"));
  }
  if (options.timeout < absl::Milliseconds(1) || options.timeout == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("CreateNcclCommunicator: timeout ",
                                                   absl::FormatDuration(options.timeout),
                                                   " must be finite and at least 1ms"));
  }
  int devices = 0;
  if (const cudaError_t err = cudaGetDeviceCount(&devices); err != cudaSuccess) {
    return absl::FailedPreconditionError(absl::StrCat("CreateNcclCommunicator: no usable CUDA device: ",
                                                      cudaGetErrorName(err), " (", cudaGetErrorString(err), ")"));
  }
  if (options.device < 0 || options.device >= devices) {
    return absl::InvalidArgumentError(absl::StrCat("CreateNcclCommunicator: device ", options.device,
                                                   " is outside [0, ", devices, ")"));
  }

  const std::string where = absl::StrCat("NCCL rendezvous of rank ", rank, " of ", size, " on device ",
                                         options.device, " (prefix '", options.prefix, "')");
  // NCCL binds the communicator to the current device; the stream and the
  // scratch value must live there too.
  if (absl::Status s = MLA_CUDA_STATUS(cudaSetDevice(options.device)); !s.ok()) return Prefixed(where, s);

  // Owns the stream and the scratch value from here: an early return frees them.
  std::unique_ptr<NcclCommunicator> self(new NcclCommunicator(rank, size, options));
  // A blocking stream: ordered after work on the legacy default stream, so an
  // input written there (cudaMemcpy, cudaMemset, a kernel launched without a
  // stream) is complete before a collective reads it.
  if (absl::Status s = MLA_CUDA_STATUS(cudaStreamCreateWithFlags(&self->own_stream_, cudaStreamDefault)); !s.ok()) {
    return Prefixed(where, s);
  }
  self->stream_ = self->own_stream_;
  if (absl::Status s = MLA_CUDA_STATUS(cudaMalloc(&self->scratch_, sizeof(float))); !s.ok()) {
    return Prefixed(where, s);
  }
  if (absl::Status s = MLA_CUDA_STATUS(cudaMemset(self->scratch_, 0, sizeof(float))); !s.ok()) {
    return Prefixed(where, s);
  }

  // The unique id: rank 0 creates it (it also opens rank 0's bootstrap socket,
  // whose address the id carries) and publishes the raw bytes.
  ncclUniqueId id;
  std::memset(&id, 0, sizeof(id));
  const std::string key = absl::StrCat(options.prefix, "/unique_id");
  if (rank == 0) {
    if (const ncclResult_t r = ncclGetUniqueId(&id); r != ncclSuccess) {
      return NcclError(where, "ncclGetUniqueId", r, nullptr);
    }
    if (absl::Status s = store.Set(key, std::string(id.internal, sizeof(id.internal))); !s.ok()) {
      return Prefixed(where, s);
    }
  } else {
    absl::StatusOr<std::string> value = store.Get(key, options.timeout);
    if (!value.ok()) {
      if (absl::IsDeadlineExceeded(value.status())) {
        return absl::DeadlineExceededError(absl::StrCat(where, ": key '", key, "' not in the store within ",
                                                        absl::FormatDuration(options.timeout),
                                                        " (has rank 0 started?)"));
      }
      return Prefixed(where, value.status());
    }
    if (value->size() != sizeof(id.internal)) {
      return absl::InternalError(absl::StrCat(where, ": key '", key, "' holds ", value->size(), " bytes, not the ",
                                              sizeof(id.internal), " of an NCCL unique id"));
    }
    std::memcpy(id.internal, value->data(), sizeof(id.internal));
  }

  // Non-blocking: the init returns at once (ncclInProgress) and connects in the
  // background, so a rank that never arrives costs the timeout, not a hang.
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm = nullptr;
  const absl::Time deadline = absl::Now() + options.timeout;
  const ncclResult_t init = ncclCommInitRankConfig(&comm, size, id, rank, &config);
  absl::Status status;
  if (init != ncclSuccess && init != ncclInProgress) {
    status = NcclError(where, "ncclCommInitRankConfig", init, comm);
  } else if (comm == nullptr) {
    status = absl::InternalError(absl::StrCat(where, ": ncclCommInitRankConfig returned no communicator"));
  } else {
    status = WaitUntilReady(comm, where, "ncclCommInitRankConfig", deadline, options.timeout);
    if (absl::IsDeadlineExceeded(status)) {
      status = absl::DeadlineExceededError(absl::StrCat(status.message(), " (has every rank started?)"));
    }
  }
  if (!status.ok()) {
    if (comm == nullptr) return status;
    ncclCommAbort(comm);
    return absl::Status(status.code(), absl::StrCat(status.message(), "; communicator aborted"));
  }
  self->comm_ = comm;
  return self;
}

NcclCommunicator::~NcclCommunicator() {
  if (const cudaError_t err = cudaSetDevice(device_); err != cudaSuccess) {
    LOG(WARNING) << Where("teardown") << ": cudaSetDevice: " << cudaGetErrorString(err);
  }
  if (comm_ != nullptr) {
    if (absl::Status s = Finalize(); !s.ok()) {
      LOG(WARNING) << s.message() << "; aborting instead";
      AbortComm();
    } else if (const ncclResult_t r = ncclCommDestroy(comm_); r != ncclSuccess && r != ncclInProgress) {
      LOG(WARNING) << NcclError(Where("teardown"), "ncclCommDestroy", r, nullptr).message();
    }
    comm_ = nullptr;
  }
  if (scratch_ != nullptr && !stream_stuck_) cudaFree(scratch_);
  if (own_stream_ != nullptr) cudaStreamDestroy(own_stream_);
}

absl::Status NcclCommunicator::Finalize() {
  const absl::Time deadline = absl::Now() + timeout_;
  const ncclResult_t r = ncclCommFinalize(comm_);
  if (r != ncclSuccess && r != ncclInProgress) return NcclError(Where("teardown"), "ncclCommFinalize", r, comm_);
  return WaitUntilReady(comm_, Where("teardown"), "ncclCommFinalize (waits for this node's other ranks)", deadline,
                        timeout_);
}

void NcclCommunicator::SetStream(cudaStream_t stream) { stream_ = stream != nullptr ? stream : own_stream_; }

void NcclCommunicator::Abort(absl::string_view reason) {
  if (broken_.ok()) broken_ = absl::UnavailableError(absl::StrCat(Where("Abort"), ": ", reason));
  if (comm_ != nullptr) {
    if (const cudaError_t err = cudaSetDevice(device_); err != cudaSuccess) {
      LOG(WARNING) << Where("Abort") << ": cudaSetDevice: " << cudaGetErrorString(err);
    }
    AbortComm();
  }
}

void NcclCommunicator::AbortComm() {
  if (comm_ == nullptr) return;
  if (const ncclResult_t r = ncclCommAbort(comm_); r != ncclSuccess && r != ncclInProgress) {
    LOG(WARNING) << NcclError(Where("abort"), "ncclCommAbort", r, nullptr).message();
  }
  comm_ = nullptr;
  // A kernel that never quits would make cudaFree (which waits for the device)
  // hang in the destructor: then the scratch value is leaked instead.
  if (!DrainStream(stream_, kDrainAfterAbort)) {
    stream_stuck_ = true;
    LOG(ERROR) << Where("abort") << ": the stream still has work " << absl::FormatDuration(kDrainAfterAbort)
               << " after ncclCommAbort";
  }
}

std::string NcclCommunicator::Where(absl::string_view op) const {
  return absl::StrCat("NCCL ", op, " on rank ", rank_, " of ", size_, " (device ", device_, ")");
}

absl::Status NcclCommunicator::Unusable(absl::string_view op) const {
  return absl::UnavailableError(
      absl::StrCat(Where(op), ": group unusable after an earlier failure: ", broken_.message()));
}

absl::Status NcclCommunicator::Fail(absl::Status status) {
  broken_ = absl::Status(status.code(), absl::StrCat(status.message(), "; communicator aborted"));
  AbortComm();
  return broken_;
}

absl::Status NcclCommunicator::Prepare(absl::string_view op) {
  if (!broken_.ok()) return Unusable(op);
  // The calling thread may have another device current; NCCL and the stream
  // need this one. (Not restored: a rank's thread works on its own device.)
  // Failing here skips a collective the peers do take part in: the group is
  // out of step, as after any transport error.
  if (absl::Status s = MLA_CUDA_STATUS(cudaSetDevice(device_)); !s.ok()) return Fail(Prefixed(Where(op), s));
  return absl::OkStatus();
}

template <typename Enqueue>
absl::Status NcclCommunicator::Run(absl::string_view op, absl::string_view call, Enqueue&& enqueue) {
  MLA_RETURN_IF_ERROR(Prepare(op));
  const absl::Time deadline = absl::Now() + timeout_;
  const ncclResult_t result = enqueue();
  return WaitForCompletion(op, call, result, deadline);
}

template <typename Enqueue>
absl::Status NcclCommunicator::EnqueueOnly(absl::string_view op, absl::string_view call, Enqueue&& enqueue) {
  MLA_RETURN_IF_ERROR(Prepare(op));
  const ncclResult_t result = enqueue();
  const std::string where = Where(op);
  if (result == ncclSuccess) return absl::OkStatus();
  if (result != ncclInProgress) return Fail(NcclError(where, call, result, comm_));
  // Non-blocking mode: the stream holds the operation only once NCCL says so.
  absl::Status s = WaitUntilReady(comm_, where, call, absl::Now() + timeout_, timeout_);
  return s.ok() ? s : Fail(std::move(s));
}

absl::Status NcclCommunicator::WaitForCompletion(absl::string_view op, absl::string_view call, int enqueue_result,
                                                 absl::Time deadline) {
  const auto result = static_cast<ncclResult_t>(enqueue_result);
  const std::string where = Where(op);
  if (result != ncclSuccess && result != ncclInProgress) return Fail(NcclError(where, call, result, comm_));
  auto timed_out = [&] {
    return Fail(absl::DeadlineExceededError(absl::StrCat(
        where, ": ", call, " not complete within ", absl::FormatDuration(timeout_),
        " (a peer that died, hangs, or did not call ", op, " with the same arguments?)")));
  };
  // Non-blocking mode: until NCCL reports the enqueue done, the stream may not
  // hold the operation yet (and must not be touched).
  if (result == ncclInProgress) {
    absl::Status s = WaitUntilReady(comm_, where, call, deadline, timeout_);
    if (absl::IsDeadlineExceeded(s)) return timed_out();
    if (!s.ok()) return Fail(std::move(s));
  }
  Backoff backoff;
  while (true) {
    const cudaError_t query = cudaStreamQuery(stream_);
    ncclResult_t state = ncclSuccess;
    if (const ncclResult_t r = ncclCommGetAsyncError(comm_, &state); r != ncclSuccess) {
      return Fail(NcclError(where, "ncclCommGetAsyncError", r, comm_));
    }
    if (state != ncclSuccess && state != ncclInProgress) return Fail(NcclError(where, call, state, comm_));
    if (query == cudaSuccess) return absl::OkStatus();
    if (query != cudaErrorNotReady) {
      return Fail(absl::InternalError(absl::StrCat(where, ": cudaStreamQuery failed: ", cudaGetErrorName(query), " (",
                                                   cudaGetErrorString(query), ")")));
    }
    if (absl::Now() >= deadline) return timed_out();
    backoff.Pause();
  }
}

absl::Status NcclCommunicator::AllReduceSum(float* data, size_t count) {
  if (absl::Status s = comm_internal::CheckAllReduce(data, count); !s.ok()) return s;
  if (count == 0) return absl::OkStatus();
  return Run("AllReduceSum", "ncclAllReduce",
             [&] { return ncclAllReduce(data, data, count, ncclFloat32, ncclSum, comm_, stream_); });
}

bool NcclCommunicator::CanEnqueueOn(const void* stream) const {
  return stream == static_cast<const void*>(stream_) && broken_.ok() && comm_ != nullptr;
}

absl::Status NcclCommunicator::EnqueueAllReduceSum(float* data, size_t count) {
  if (absl::Status s = comm_internal::CheckAllReduce(data, count); !s.ok()) return s;
  if (count == 0) return absl::OkStatus();
  return EnqueueOnly("AllReduceSum (enqueued)", "ncclAllReduce",
                     [&] { return ncclAllReduce(data, data, count, ncclFloat32, ncclSum, comm_, stream_); });
}

absl::Status NcclCommunicator::Wait() {
  return Run("Wait", "the enqueued collectives", [] { return ncclSuccess; });
}

absl::Status NcclCommunicator::AllGather(const float* in, size_t count, float* out) {
  if (absl::Status s = comm_internal::CheckAllGather(in, count, out, rank_, size_); !s.ok()) return s;
  if (count == 0) return absl::OkStatus();
  // NCCL's in-place form is exactly the interface's: in == out + rank * count.
  return Run("AllGather", "ncclAllGather", [&] { return ncclAllGather(in, out, count, ncclFloat32, comm_, stream_); });
}

absl::Status NcclCommunicator::Gather(const float* in, size_t count, float* out, int root) {
  if (absl::Status s = comm_internal::CheckGather(in, count, out, root, rank_, size_); !s.ok()) return s;
  if (count == 0) return absl::OkStatus();
  return Run("Gather", "ncclSend/ncclRecv group", [&] {
    // Every call of the group is made, and ncclGroupEnd always reached, even
    // after a failed one: the group is then cancelled as a whole.
    ncclResult_t first_error = ncclSuccess;
    auto note = [&](ncclResult_t r) {
      if (first_error == ncclSuccess && r != ncclSuccess && r != ncclInProgress) first_error = r;
    };
    note(ncclGroupStart());
    if (rank_ == root) {
      for (int peer = 0; peer < size_; ++peer) {
        float* slot = out + static_cast<size_t>(peer) * count;
        if (peer != root) {
          note(ncclRecv(slot, count, ncclFloat32, peer, comm_, stream_));
        } else if (in != slot) {
          // Root's own part: a send to itself, so the whole gather is one NCCL group.
          note(ncclSend(in, count, ncclFloat32, root, comm_, stream_));
          note(ncclRecv(slot, count, ncclFloat32, root, comm_, stream_));
        }
      }
    } else {
      note(ncclSend(in, count, ncclFloat32, root, comm_, stream_));
    }
    const ncclResult_t end = ncclGroupEnd();
    return first_error != ncclSuccess ? first_error : end;
  });
}

absl::Status NcclCommunicator::Broadcast(void* data, size_t bytes, int root) {
  if (absl::Status s = comm_internal::CheckBroadcast(data, bytes, root, size_); !s.ok()) return s;
  if (bytes == 0) return absl::OkStatus();
  return Run("Broadcast", "ncclBroadcast",
             [&] { return ncclBroadcast(data, data, bytes, ncclUint8, root, comm_, stream_); });
}

absl::Status NcclCommunicator::Barrier() {
  // ncclMax keeps the scratch value at 0 however many barriers run.
  return Run("Barrier", "ncclAllReduce",
             [&] { return ncclAllReduce(scratch_, scratch_, 1, ncclFloat32, ncclMax, comm_, stream_); });
}

absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(KeyValueStore& store, int rank, int size,
                                                                     const NcclOptions& options) {
  absl::StatusOr<std::unique_ptr<NcclCommunicator>> comm = NcclCommunicator::Create(store, rank, size, options);
  if (!comm.ok()) return comm.status();
  return std::unique_ptr<Communicator>(*std::move(comm));
}

}  // namespace mla
