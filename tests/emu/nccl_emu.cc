// NCCL for a group of one rank (what `--backend cuda --tp 1` uses), for
// binaries built on the emulator: collectives over one rank are copies, and
// everything completes at once. A group of more ranks is refused
// (ncclInvalidUsage, with ncclGetLastError saying why): those need real GPUs.
#include "tests/emu/cuda_emu.h"  // first: it must precede the CUDA headers

#include <nccl.h>

#include <cstring>

struct ncclComm {
  int nranks = 1;
};

namespace {

const char* g_last_error = "";

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

ncclResult_t Copy(const void* send, void* recv, size_t count, ncclDataType_t type, ncclComm_t comm) {
  if (comm == nullptr) return ncclInvalidArgument;
  const size_t bytes = count * TypeBytes(type);
  if (TypeBytes(type) == 0) return ncclInvalidArgument;
  if (bytes > 0 && send != recv) std::memmove(recv, send, bytes);
  return ncclSuccess;
}

}  // namespace

extern "C" {

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  if (id == nullptr) return ncclInvalidArgument;
  std::memset(id->internal, 0x5a, sizeof(id->internal));
  return ncclSuccess;
}

ncclResult_t ncclCommInitRankConfig(ncclComm_t* comm, int nranks, ncclUniqueId, int rank, ncclConfig_t*) {
  if (comm == nullptr) return ncclInvalidArgument;
  if (nranks != 1 || rank != 0) {
    g_last_error = "the emulator's NCCL serves a group of one rank only";
    return ncclInvalidUsage;
  }
  *comm = new ncclComm;
  return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* error) {
  if (comm == nullptr || error == nullptr) return ncclInvalidArgument;
  *error = ncclSuccess;
  return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, ncclDataType_t type, ncclRedOp_t,
                           ncclComm_t comm, cudaStream_t) {
  return Copy(send, recv, count, type, comm);
}

ncclResult_t ncclAllGather(const void* send, void* recv, size_t count, ncclDataType_t type, ncclComm_t comm,
                           cudaStream_t) {
  return Copy(send, recv, count, type, comm);
}

ncclResult_t ncclBroadcast(const void* send, void* recv, size_t count, ncclDataType_t type, int root,
                           ncclComm_t comm, cudaStream_t) {
  if (root != 0) return ncclInvalidArgument;
  return Copy(send, recv, count, type, comm);
}

ncclResult_t ncclSend(const void*, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t) {
  g_last_error = "send/recv need a peer: the emulator's NCCL has one rank";
  return ncclInvalidUsage;
}

ncclResult_t ncclRecv(void*, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t) {
  g_last_error = "send/recv need a peer: the emulator's NCCL has one rank";
  return ncclInvalidUsage;
}

ncclResult_t ncclGroupStart() { return ncclSuccess; }
ncclResult_t ncclGroupEnd() { return ncclSuccess; }

ncclResult_t ncclCommFinalize(ncclComm_t comm) { return comm == nullptr ? ncclInvalidArgument : ncclSuccess; }

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  delete comm;
  return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t comm) {
  delete comm;
  return ncclSuccess;
}

const char* ncclGetErrorString(ncclResult_t result) {
  switch (result) {
    case ncclSuccess: return "no error";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage";
    default: return "NCCL error (emulated)";
  }
}

const char* ncclGetLastError(ncclComm_t) { return g_last_error; }

}  // extern "C"
