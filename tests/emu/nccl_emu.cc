// NCCL for binaries built on the emulator (tests/emu): the ranks are
// processes (or threads) on one machine, one emulated device each
// (MLA_EMU_DEVICE_COUNT), meeting in a POSIX shared-memory segment named by
// the unique id. Each rank owns a slot; a collective writes the slots, meets
// at a barrier, reads them and meets again. Sums run in rank order, so every
// rank gets the same bits.
//
// As NCCL does, a communicator works in the background: its operations run
// on a thread of their own, in order, and keep their CUDA stream busy until
// done (cuda_runtime_emu.cc), so cudaStreamQuery says cudaErrorNotReady while
// a peer is missing. With config.blocking = 0 the init returns ncclInProgress
// and ncclCommGetAsyncError reports ncclInProgress until every rank has
// joined; a failed operation leaves its error there. ncclCommAbort stops a
// waiting operation; a rank joining on a device another rank already uses
// fails the init with ncclInvalidUsage ("Duplicate GPU detected"), as NCCL
// does. A peer that never arrives fails the operation after kPeerTimeout
// (ncclRemoteError) where nobody aborts first. Group send/recv
// (NcclCommunicator::Gather's only use) runs at ncclGroupEnd, which every
// rank of the communicator must reach.
#include "tests/emu/cuda_emu.h"  // first: it must precede the CUDA headers

#include <fcntl.h>
#include <nccl.h>
#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr size_t kSlotBytes = size_t{64} << 20;  // per rank (sparse: only what is written takes memory)
constexpr int kMaxRanks = 16;
constexpr int kMaxSends = 32;  // per rank and group
constexpr auto kPeerTimeout = std::chrono::seconds(60);

struct SendEntry {
  int dest;
  size_t offset;
  size_t bytes;
};

struct Header {
  std::atomic<int> arrived;
  std::atomic<int> phase;
  int devices[kMaxRanks];  // each rank's device, for the duplicate check at init
  int sends[kMaxRanks];  // per rank: its entries of the current group
  SendEntry entries[kMaxRanks][kMaxSends];
};

struct PendingOp {
  bool send;
  void* buf;
  size_t bytes;
  int peer;
};

// Errors of calls without a communicator (ncclGetLastError(nullptr) also
// reads it, process-wide as in NCCL).
std::mutex g_error_mutex;
std::string g_last_error;
void SetLastError(const std::string& text) {
  const std::lock_guard<std::mutex> lock(g_error_mutex);
  g_last_error = text;
}
thread_local int g_group_depth = 0;
thread_local std::vector<std::pair<struct ncclComm*, PendingOp>> g_group;
thread_local std::vector<cudaStream_t> g_group_streams;  // each group op's stream

size_t TypeBytes(ncclDataType_t t) {
  switch (t) {
    case ncclInt8:
    case ncclUint8: return 1;
    case ncclFloat16:
    case ncclBfloat16: return 2;
    case ncclInt32:
    case ncclUint32:
    case ncclFloat32: return 4;
    case ncclInt64:
    case ncclUint64:
    case ncclFloat64: return 8;
    default: return 0;
  }
}

}  // namespace

struct ncclComm {
  int nranks = 1;
  int rank = 0;
  int device = 0;
  std::string shm_name;
  Header* header = nullptr;
  unsigned char* slots = nullptr;  // [nranks][kSlotBytes]
  size_t mapped = 0;
  bool joined = false;  // the init's rendezvous is done (the worker's)

  std::atomic<bool> aborted{false};
  // ncclInProgress while the init (or a finalize) runs; then ncclSuccess, or
  // the first failed operation's error, for good.
  std::atomic<ncclResult_t> async_error{ncclInProgress};

  // The background: operations in order, each with its stream (busy until it is done).
  struct Op {
    mla::emu::StreamWork stream;
    bool has_stream;
    std::function<ncclResult_t()> run;
  };
  std::mutex mutex;
  std::condition_variable wake;
  std::deque<Op> queue;
  bool stop = false;
  std::thread worker;

  unsigned char* Slot(int r) const { return slots + static_cast<size_t>(r) * kSlotBytes; }

  // The first error stays (the operation's own message is already the last error).
  void Fail(ncclResult_t result) {
    ncclResult_t expected = async_error.load();
    while ((expected == ncclSuccess || expected == ncclInProgress) &&
           !async_error.compare_exchange_weak(expected, result)) {
    }
  }

  // All ranks meet; false after kPeerTimeout without them, or on an abort.
  bool Barrier() {
    if (nranks == 1) return true;
    const int phase = header->phase.load(std::memory_order_acquire);
    if (header->arrived.fetch_add(1, std::memory_order_acq_rel) + 1 == nranks) {
      header->arrived.store(0, std::memory_order_relaxed);
      header->phase.fetch_add(1, std::memory_order_acq_rel);
      return true;
    }
    const auto deadline = std::chrono::steady_clock::now() + kPeerTimeout;
    while (header->phase.load(std::memory_order_acquire) == phase) {
      if (aborted.load()) return false;
      if (std::chrono::steady_clock::now() > deadline) {
        SetLastError("a peer rank did not reach the collective in time (emulated NCCL)");
        return false;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    return true;
  }

  void Enqueue(cudaStream_t stream, bool has_stream, std::function<ncclResult_t()> run) {
    mla::emu::StreamWork work{device, stream};
    if (has_stream) work = mla::emu::StreamBeginWork(stream);
    {
      const std::lock_guard<std::mutex> lock(mutex);
      queue.push_back(Op{work, has_stream, std::move(run)});
    }
    wake.notify_all();
  }

  // The worker: runs each operation unless the communicator has failed or
  // was aborted (then it only releases the stream).
  void Work() {
    while (true) {
      Op op;
      {
        std::unique_lock<std::mutex> lock(mutex);
        wake.wait(lock, [&] { return stop || !queue.empty(); });
        if (queue.empty()) return;  // stop, and nothing left
        op = std::move(queue.front());
        queue.pop_front();
      }
      const ncclResult_t state = async_error.load();
      if (!aborted.load() && (state == ncclSuccess || state == ncclInProgress)) {
        const ncclResult_t r = op.run();
        if (r != ncclSuccess && aborted.load()) SetLastError("communicator aborted (emulated NCCL)");
        if (r != ncclSuccess) Fail(r);
      }
      if (op.has_stream) mla::emu::StreamEndWork(op.stream);
    }
  }

  void Start() { worker = std::thread([this] { Work(); }); }

  // Stops the worker after the queued operations (all of them skipped when aborted).
  void StopWorker() {
    {
      const std::lock_guard<std::mutex> lock(mutex);
      stop = true;
    }
    wake.notify_all();
    if (worker.joinable()) worker.join();
  }
};

namespace {

// The init's rendezvous, on the worker: map the segment, meet, check devices.
ncclResult_t Rendezvous(ncclComm* c) {
  if (c->nranks == 1) {  // a private segment: the slots, no peers
    c->mapped = sizeof(Header) + kSlotBytes;
    void* base = mmap(nullptr, c->mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) {
      SetLastError("mmap of the slots failed (emulated NCCL)");
      return ncclSystemError;
    }
    c->header = static_cast<Header*>(base);
    c->slots = static_cast<unsigned char*>(base) + sizeof(Header);
  } else {
    const int fd = shm_open(c->shm_name.c_str(), O_CREAT | O_RDWR, 0600);
    if (fd < 0) {
      SetLastError("shm_open failed (emulated NCCL)");
      return ncclSystemError;
    }
    c->mapped = sizeof(Header) + kSlotBytes * static_cast<size_t>(c->nranks);
    if (ftruncate(fd, static_cast<off_t>(c->mapped)) != 0) {
      close(fd);
      SetLastError("ftruncate of the shared segment failed (emulated NCCL)");
      return ncclSystemError;
    }
    void* base = mmap(nullptr, c->mapped, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (base == MAP_FAILED) {
      SetLastError("mmap of the shared segment failed (emulated NCCL)");
      return ncclSystemError;
    }
    c->header = static_cast<Header*>(base);  // zero-filled by ftruncate: counters start at 0
    c->slots = static_cast<unsigned char*>(base) + sizeof(Header);
    c->header->devices[c->rank] = c->device;
    if (!c->Barrier()) return ncclRemoteError;  // everyone has mapped it and said its device
    if (c->rank == 0) shm_unlink(c->shm_name.c_str());  // the mappings stay; the name is no longer needed
    for (int r = 0; r < c->nranks; ++r) {
      if (r != c->rank && c->header->devices[r] == c->device) {
        SetLastError("Duplicate GPU detected : rank " + std::to_string(std::min(r, c->rank)) + " and rank " +
                     std::to_string(std::max(r, c->rank)) + " both on CUDA device " + std::to_string(c->device) +
                     " (emulated NCCL)");
        return ncclInvalidUsage;
      }
    }
  }
  c->joined = true;
  return ncclSuccess;
}

// Waits for a blocking communicator's pending init or finalize.
ncclResult_t WaitDone(ncclComm* c) {
  while (c->async_error.load() == ncclInProgress) std::this_thread::sleep_for(std::chrono::microseconds(100));
  return c->async_error.load();
}

// Sum or max of the ranks' slots, in rank order, chunk by chunk.
ncclResult_t Reduce(const void* send, void* recv, size_t count, ncclRedOp_t op, ncclComm_t c) {
  const size_t per_chunk = kSlotBytes / sizeof(float);
  for (size_t begin = 0; begin < count || begin == 0; begin += per_chunk) {
    const size_t n = std::min(per_chunk, count - begin);
    std::memcpy(c->Slot(c->rank), static_cast<const float*>(send) + begin, n * sizeof(float));
    if (!c->Barrier()) return ncclRemoteError;
    float* out = static_cast<float*>(recv) + begin;
    for (size_t i = 0; i < n; ++i) {
      float v = reinterpret_cast<const float*>(c->Slot(0))[i];
      for (int r = 1; r < c->nranks; ++r) {
        const float x = reinterpret_cast<const float*>(c->Slot(r))[i];
        v = op == ncclSum ? v + x : std::max(v, x);
      }
      out[i] = v;
    }
    if (!c->Barrier()) return ncclRemoteError;  // the slots may be reused
    if (count == 0) break;
  }
  return ncclSuccess;
}

// One communicator's group (sends into this rank's slot with a directory,
// barrier, receives from the peers' slots), on its worker.
ncclResult_t RunGroup(ncclComm* c, const std::vector<std::pair<ncclComm*, PendingOp>>& ops) {
  int sends = 0;
  size_t offset = 0;
  for (const auto& [comm, op] : ops) {
    if (!op.send) continue;
    if (sends == kMaxSends || offset + op.bytes > kSlotBytes) {
      SetLastError("group sends exceed the emulated NCCL slot");
      return ncclInvalidUsage;
    }
    std::memcpy(c->Slot(c->rank) + offset, op.buf, op.bytes);
    c->header->entries[c->rank][sends++] = SendEntry{op.peer, offset, op.bytes};
    offset += op.bytes;
  }
  c->header->sends[c->rank] = sends;
  if (!c->Barrier()) return ncclRemoteError;
  std::vector<int> taken(static_cast<size_t>(c->nranks), 0);  // per peer: its entries to us consumed
  ncclResult_t result = ncclSuccess;
  for (const auto& [comm, op] : ops) {
    if (op.send) continue;
    const int peer = op.peer;
    int seen = 0;
    bool found = false;
    for (int e = 0; e < c->header->sends[peer]; ++e) {
      const SendEntry& entry = c->header->entries[peer][e];
      if (entry.dest != c->rank) continue;
      if (seen++ < taken[static_cast<size_t>(peer)]) continue;
      ++taken[static_cast<size_t>(peer)];
      if (entry.bytes != op.bytes) {
        SetLastError("send and recv sizes differ (emulated NCCL)");
        result = ncclInvalidUsage;
      } else {
        std::memcpy(op.buf, c->Slot(peer) + entry.offset, entry.bytes);
      }
      found = true;
      break;
    }
    if (!found && result == ncclSuccess) {
      SetLastError("a recv without its send (emulated NCCL)");
      result = ncclInvalidUsage;
    }
  }
  if (!c->Barrier()) return ncclRemoteError;
  return result;
}

}  // namespace

extern "C" {

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  if (id == nullptr) return ncclInvalidArgument;
  std::memset(id->internal, 0, sizeof(id->internal));
  std::random_device rd;
  std::snprintf(id->internal, sizeof(id->internal), "/mla-nccl-emu-%d-%08x%08x", static_cast<int>(getpid()), rd(),
                rd());
  return ncclSuccess;
}

ncclResult_t ncclCommInitRankConfig(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank, ncclConfig_t* config) {
  if (comm == nullptr || nranks < 1 || nranks > kMaxRanks || rank < 0 || rank >= nranks) return ncclInvalidArgument;
  auto c = std::make_unique<ncclComm>();
  c->nranks = nranks;
  c->rank = rank;
  if (cudaGetDevice(&c->device) != cudaSuccess) return ncclUnhandledCudaError;
  char name[sizeof(id.internal) + 1] = {};
  std::memcpy(name, id.internal, sizeof(id.internal));
  c->shm_name = name;
  const bool blocking = config == nullptr || config->blocking != 0;
  ncclComm* raw = c.get();
  raw->Start();
  raw->Enqueue(nullptr, false, [raw] {
    const ncclResult_t r = Rendezvous(raw);
    if (r == ncclSuccess) raw->async_error.store(ncclSuccess);
    return r;
  });
  *comm = c.release();
  return blocking ? WaitDone(raw) : ncclInProgress;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* error) {
  if (comm == nullptr || error == nullptr) return ncclInvalidArgument;
  *error = comm->async_error.load();
  return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, ncclDataType_t type, ncclRedOp_t op,
                           ncclComm_t c, cudaStream_t stream) {
  if (c == nullptr || type != ncclFloat32 || (op != ncclSum && op != ncclMax)) return ncclInvalidArgument;
  c->Enqueue(stream, true, [=] { return Reduce(send, recv, count, op, c); });
  return ncclSuccess;
}

ncclResult_t ncclAllGather(const void* send, void* recv, size_t count, ncclDataType_t type, ncclComm_t c,
                           cudaStream_t stream) {
  const size_t bytes = count * TypeBytes(type);
  if (c == nullptr || TypeBytes(type) == 0) return ncclInvalidArgument;
  if (bytes > kSlotBytes) {
    SetLastError("all-gather larger than the emulated NCCL slot");
    return ncclInvalidUsage;
  }
  c->Enqueue(stream, true, [=] {
    std::memcpy(c->Slot(c->rank), send, bytes);
    if (!c->Barrier()) return ncclRemoteError;
    for (int r = 0; r < c->nranks; ++r) std::memcpy(static_cast<unsigned char*>(recv) + r * bytes, c->Slot(r), bytes);
    return c->Barrier() ? ncclSuccess : ncclRemoteError;
  });
  return ncclSuccess;
}

ncclResult_t ncclBroadcast(const void* send, void* recv, size_t count, ncclDataType_t type, int root, ncclComm_t c,
                           cudaStream_t stream) {
  const size_t bytes = count * TypeBytes(type);
  if (c == nullptr || TypeBytes(type) == 0 || root < 0 || root >= c->nranks) return ncclInvalidArgument;
  if (bytes > kSlotBytes) {
    SetLastError("broadcast larger than the emulated NCCL slot");
    return ncclInvalidUsage;
  }
  c->Enqueue(stream, true, [=] {
    if (c->rank == root) std::memcpy(c->Slot(root), send, bytes);
    if (!c->Barrier()) return ncclRemoteError;
    std::memmove(recv, c->Slot(root), bytes);
    return c->Barrier() ? ncclSuccess : ncclRemoteError;
  });
  return ncclSuccess;
}

ncclResult_t ncclGroupStart() {
  ++g_group_depth;
  return ncclSuccess;
}

ncclResult_t ncclGroupEnd() {
  if (g_group_depth == 0) return ncclInvalidUsage;
  if (--g_group_depth > 0) return ncclSuccess;
  std::vector<std::pair<ncclComm*, PendingOp>> ops;
  std::vector<cudaStream_t> streams;
  ops.swap(g_group);
  std::swap(streams, g_group_streams);
  if (ops.empty()) return ncclSuccess;
  ncclComm* c = ops.front().first;
  for (size_t i = 0; i < ops.size(); ++i) {
    if (ops[i].first != c || streams[i] != streams.front()) {
      SetLastError("one communicator and one stream per group (emulated NCCL)");
      return ncclInvalidUsage;
    }
  }
  c->Enqueue(streams.front(), true, [c, ops = std::move(ops)] { return RunGroup(c, ops); });
  return ncclSuccess;
}

ncclResult_t ncclSend(const void* buf, size_t count, ncclDataType_t type, int peer, ncclComm_t c, cudaStream_t stream) {
  if (c == nullptr || TypeBytes(type) == 0 || peer < 0 || peer >= c->nranks) return ncclInvalidArgument;
  if (g_group_depth == 0) {
    SetLastError("send outside a group (emulated NCCL)");
    return ncclInvalidUsage;
  }
  g_group.push_back({c, PendingOp{true, const_cast<void*>(buf), count * TypeBytes(type), peer}});
  g_group_streams.push_back(stream);
  return ncclSuccess;
}

ncclResult_t ncclRecv(void* buf, size_t count, ncclDataType_t type, int peer, ncclComm_t c, cudaStream_t stream) {
  if (c == nullptr || TypeBytes(type) == 0 || peer < 0 || peer >= c->nranks) return ncclInvalidArgument;
  if (g_group_depth == 0) {
    SetLastError("recv outside a group (emulated NCCL)");
    return ncclInvalidUsage;
  }
  g_group.push_back({c, PendingOp{false, buf, count * TypeBytes(type), peer}});
  g_group_streams.push_back(stream);
  return ncclSuccess;
}

// Flushes the queued operations and meets the other ranks (so that none is
// destroyed while a peer still needs it); ncclInProgress until then.
ncclResult_t ncclCommFinalize(ncclComm_t comm) {
  if (comm == nullptr) return ncclInvalidArgument;
  ncclResult_t state = comm->async_error.load();
  if (state != ncclSuccess) return state == ncclInProgress ? ncclInvalidUsage : state;
  comm->async_error.store(ncclInProgress);
  comm->Enqueue(nullptr, false, [comm] {
    if (!comm->Barrier()) return ncclRemoteError;
    comm->async_error.store(ncclSuccess);
    return ncclSuccess;
  });
  return ncclInProgress;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (comm == nullptr) return ncclSuccess;
  comm->StopWorker();
  if (!comm->joined && comm->nranks > 1) shm_unlink(comm->shm_name.c_str());  // an init that never met
  if (comm->header != nullptr) munmap(comm->header, comm->mapped);
  delete comm;
  return ncclSuccess;
}

// Stops whatever the worker waits for (its operation fails), skips the rest, frees.
ncclResult_t ncclCommAbort(ncclComm_t comm) {
  if (comm == nullptr) return ncclSuccess;
  comm->aborted.store(true);
  return ncclCommDestroy(comm);
}

const char* ncclGetErrorString(ncclResult_t result) {
  switch (result) {
    case ncclSuccess: return "no error";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage";
    case ncclSystemError: return "system error";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
    default: return "NCCL error (emulated)";
  }
}

// The process's last error, as NCCL keeps it: a copy per calling thread, valid
// until that thread's next call.
const char* ncclGetLastError(ncclComm_t) {
  thread_local std::string copy;
  const std::lock_guard<std::mutex> lock(g_error_mutex);
  copy = g_last_error;
  return copy.c_str();
}

}  // extern "C"
