// NCCL for binaries built on the emulator (tests/emu): the ranks are
// processes on one machine (one emulated device each, MLA_EMU_DEVICE_COUNT),
// meeting in a POSIX shared-memory segment named by the unique id. Each rank
// owns a slot; a collective writes the slots, meets at a barrier, reads them
// and meets again. Sums run in rank order, so every rank gets the same bits.
// Everything completes inside the call (the stream is ignored). A peer that
// never arrives fails the call after kPeerTimeout (ncclRemoteError) instead of
// hanging. Group send/recv (NcclCommunicator::Gather's only use) runs at
// ncclGroupEnd, which every rank of the communicator must reach.
#include "tests/emu/cuda_emu.h"  // first: it must precede the CUDA headers

#include <fcntl.h>
#include <nccl.h>
#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
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
  int sends[kMaxRanks];  // per rank: its entries of the current group
  SendEntry entries[kMaxRanks][kMaxSends];
};

struct PendingOp {
  bool send;
  void* buf;
  size_t bytes;
  int peer;
};

thread_local const char* g_last_error = "";
thread_local int g_group_depth = 0;
thread_local std::vector<std::pair<struct ncclComm*, PendingOp>> g_group;

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
  Header* header = nullptr;
  unsigned char* slots = nullptr;  // [nranks][kSlotBytes]
  size_t mapped = 0;

  unsigned char* Slot(int r) const { return slots + static_cast<size_t>(r) * kSlotBytes; }

  // All ranks meet; false after kPeerTimeout without them.
  bool Barrier() const {
    if (nranks == 1) return true;
    const int phase = header->phase.load(std::memory_order_acquire);
    if (header->arrived.fetch_add(1, std::memory_order_acq_rel) + 1 == nranks) {
      header->arrived.store(0, std::memory_order_relaxed);
      header->phase.fetch_add(1, std::memory_order_acq_rel);
      return true;
    }
    const auto deadline = std::chrono::steady_clock::now() + kPeerTimeout;
    while (header->phase.load(std::memory_order_acquire) == phase) {
      if (std::chrono::steady_clock::now() > deadline) {
        g_last_error = "a peer rank did not reach the collective in time (emulated NCCL)";
        return false;
      }
      sched_yield();
    }
    return true;
  }
};

namespace {

// Sum or max of the ranks' slots, in rank order, chunk by chunk.
ncclResult_t Reduce(const void* send, void* recv, size_t count, ncclDataType_t type, ncclRedOp_t op, ncclComm_t c) {
  if (c == nullptr || type != ncclFloat32 || (op != ncclSum && op != ncclMax)) return ncclInvalidArgument;
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

ncclResult_t RunGroup() {
  // Per communicator (the communicator uses one per group): sends into this
  // rank's slot with a directory, barrier, receives from the peers' slots.
  std::vector<std::pair<ncclComm*, PendingOp>> ops;
  ops.swap(g_group);
  if (ops.empty()) return ncclSuccess;
  ncclComm* c = ops.front().first;
  for (const auto& [comm, op] : ops) {
    if (comm != c) {
      g_last_error = "one communicator per group (emulated NCCL)";
      return ncclInvalidUsage;
    }
  }
  int sends = 0;
  size_t offset = 0;
  for (const auto& [comm, op] : ops) {
    if (!op.send) continue;
    if (sends == kMaxSends || offset + op.bytes > kSlotBytes) {
      g_last_error = "group sends exceed the emulated NCCL slot";
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
        g_last_error = "send and recv sizes differ (emulated NCCL)";
        result = ncclInvalidUsage;
      } else {
        std::memcpy(op.buf, c->Slot(peer) + entry.offset, entry.bytes);
      }
      found = true;
      break;
    }
    if (!found && result == ncclSuccess) {
      g_last_error = "a recv without its send (emulated NCCL)";
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

ncclResult_t ncclCommInitRankConfig(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank, ncclConfig_t*) {
  if (comm == nullptr || nranks < 1 || nranks > kMaxRanks || rank < 0 || rank >= nranks) return ncclInvalidArgument;
  auto c = std::make_unique<ncclComm>();
  c->nranks = nranks;
  c->rank = rank;
  if (nranks > 1) {
    char name[sizeof(id.internal) + 1] = {};
    std::memcpy(name, id.internal, sizeof(id.internal));
    const int fd = shm_open(name, O_CREAT | O_RDWR, 0600);
    if (fd < 0) {
      g_last_error = "shm_open failed (emulated NCCL)";
      return ncclSystemError;
    }
    c->mapped = sizeof(Header) + kSlotBytes * static_cast<size_t>(nranks);
    if (ftruncate(fd, static_cast<off_t>(c->mapped)) != 0) {
      close(fd);
      g_last_error = "ftruncate of the shared segment failed (emulated NCCL)";
      return ncclSystemError;
    }
    void* base = mmap(nullptr, c->mapped, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (base == MAP_FAILED) {
      g_last_error = "mmap of the shared segment failed (emulated NCCL)";
      return ncclSystemError;
    }
    c->header = static_cast<Header*>(base);  // zero-filled by ftruncate: counters start at 0
    c->slots = static_cast<unsigned char*>(base) + sizeof(Header);
    if (!c->Barrier()) {  // everyone has mapped it
      munmap(base, c->mapped);
      return ncclRemoteError;
    }
    if (rank == 0) shm_unlink(name);  // the mappings stay; the name is no longer needed
  }
  *comm = c.release();
  return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* error) {
  if (comm == nullptr || error == nullptr) return ncclInvalidArgument;
  *error = ncclSuccess;
  return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, ncclDataType_t type, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t) {
  return Reduce(send, recv, count, type, op, comm);
}

ncclResult_t ncclAllGather(const void* send, void* recv, size_t count, ncclDataType_t type, ncclComm_t c,
                           cudaStream_t) {
  const size_t bytes = count * TypeBytes(type);
  if (c == nullptr || TypeBytes(type) == 0) return ncclInvalidArgument;
  if (bytes > kSlotBytes) {
    g_last_error = "all-gather larger than the emulated NCCL slot";
    return ncclInvalidUsage;
  }
  std::memcpy(c->Slot(c->rank), send, bytes);
  if (!c->Barrier()) return ncclRemoteError;
  for (int r = 0; r < c->nranks; ++r) std::memcpy(static_cast<unsigned char*>(recv) + r * bytes, c->Slot(r), bytes);
  return c->Barrier() ? ncclSuccess : ncclRemoteError;
}

ncclResult_t ncclBroadcast(const void* send, void* recv, size_t count, ncclDataType_t type, int root, ncclComm_t c,
                           cudaStream_t) {
  const size_t bytes = count * TypeBytes(type);
  if (c == nullptr || TypeBytes(type) == 0 || root < 0 || root >= c->nranks) return ncclInvalidArgument;
  if (bytes > kSlotBytes) {
    g_last_error = "broadcast larger than the emulated NCCL slot";
    return ncclInvalidUsage;
  }
  if (c->rank == root) std::memcpy(c->Slot(root), send, bytes);
  if (!c->Barrier()) return ncclRemoteError;
  std::memmove(recv, c->Slot(root), bytes);
  return c->Barrier() ? ncclSuccess : ncclRemoteError;
}

ncclResult_t ncclGroupStart() {
  ++g_group_depth;
  return ncclSuccess;
}

ncclResult_t ncclGroupEnd() {
  if (g_group_depth == 0) return ncclInvalidUsage;
  return --g_group_depth == 0 ? RunGroup() : ncclSuccess;
}

ncclResult_t ncclSend(const void* buf, size_t count, ncclDataType_t type, int peer, ncclComm_t c, cudaStream_t) {
  if (c == nullptr || TypeBytes(type) == 0 || peer < 0 || peer >= c->nranks) return ncclInvalidArgument;
  if (g_group_depth == 0) {
    g_last_error = "send outside a group (emulated NCCL)";
    return ncclInvalidUsage;
  }
  g_group.push_back({c, PendingOp{true, const_cast<void*>(buf), count * TypeBytes(type), peer}});
  return ncclSuccess;
}

ncclResult_t ncclRecv(void* buf, size_t count, ncclDataType_t type, int peer, ncclComm_t c, cudaStream_t) {
  if (c == nullptr || TypeBytes(type) == 0 || peer < 0 || peer >= c->nranks) return ncclInvalidArgument;
  if (g_group_depth == 0) {
    g_last_error = "recv outside a group (emulated NCCL)";
    return ncclInvalidUsage;
  }
  g_group.push_back({c, PendingOp{false, buf, count * TypeBytes(type), peer}});
  return ncclSuccess;
}

ncclResult_t ncclCommFinalize(ncclComm_t comm) { return comm == nullptr ? ncclInvalidArgument : ncclSuccess; }

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (comm != nullptr && comm->header != nullptr) munmap(comm->header, comm->mapped);
  delete comm;
  return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t comm) { return ncclCommDestroy(comm); }

const char* ncclGetErrorString(ncclResult_t result) {
  switch (result) {
    case ncclSuccess: return "no error";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage";
    case ncclSystemError: return "system error";
    case ncclRemoteError: return "remote process exited or there was a network error";
    default: return "NCCL error (emulated)";
  }
}

const char* ncclGetLastError(ncclComm_t) { return g_last_error; }

}  // extern "C"
