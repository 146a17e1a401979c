// CUDA runtime, NCCL and cuBLAS results as absl::Status (DESIGN.md section 4):
// a failure becomes Internal naming the call, the library's error name and text,
// and file:line, e.g.
//
//   cudaMalloc(&ptr, bytes) failed: cudaErrorMemoryAllocation (out of memory) at runtime/model.cc:42
//
// Use in host code (.cc); kernel launchers return cudaError_t and the runtime
// converts it here.
//
//   MLA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream));
//   absl::Status s = MLA_CUDA_STATUS(cublasGemmEx(...));   // no early return
//
// One pair of macros for the three libraries: the result's type picks the
// overload. The NCCL and cuBLAS overloads exist when their headers are on the
// include path (__has_include), so a file that uses neither library needs
// neither, and links neither (the overloads are inline: an unused one emits no
// reference). Self-contained: includes only the CUDA runtime API and Abseil.
//
// NCCL: ncclInProgress counts as a failure here: these macros are for calls
// that must be done when they return. A non-blocking communicator polls
// ncclCommGetAsyncError instead (runtime/nccl_communicator.cc).
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

#if __has_include(<nccl.h>)
#include <nccl.h>
#define MLA_CUDA_STATUS_HAVE_NCCL 1
#endif
#if __has_include(<cublas_api.h>)
#include <cublas_api.h>
#define MLA_CUDA_STATUS_HAVE_CUBLAS 1
#endif

namespace mla::cuda_internal {

// The last two components of a path ("runtime/model.cc"): __FILE__ is absolute
// under CMake, and a file name alone is ambiguous (kernels/cpu/rope.cc, kernels/cuda/rope.cu).
constexpr const char* ShortFile(const char* path) {
  const char* last = nullptr;
  const char* before_last = nullptr;
  for (const char* p = path; *p != '\0'; ++p) {
    if (*p == '/') {
      before_last = last;
      last = p;
    }
  }
  return before_last != nullptr ? before_last + 1 : path;
}

inline absl::Status Failure(const char* call, absl::string_view name, absl::string_view text, const char* file,
                            int line) {
  return absl::InternalError(absl::StrCat(call, " failed: ", name, " (", text, ") at ", ShortFile(file), ":", line));
}

inline absl::Status ToStatus(cudaError_t result, const char* call, const char* file, int line) {
  if (result == cudaSuccess) return absl::OkStatus();
  return Failure(call, cudaGetErrorName(result), cudaGetErrorString(result), file, line);
}

#ifdef MLA_CUDA_STATUS_HAVE_NCCL
// NCCL's name for a result; ncclGetErrorString gives the sentence.
inline const char* NcclResultName(ncclResult_t result) {
  switch (result) {
    case ncclSuccess: return "ncclSuccess";
    case ncclUnhandledCudaError: return "ncclUnhandledCudaError";
    case ncclSystemError: return "ncclSystemError";
    case ncclInternalError: return "ncclInternalError";
    case ncclInvalidArgument: return "ncclInvalidArgument";
    case ncclInvalidUsage: return "ncclInvalidUsage";
    case ncclRemoteError: return "ncclRemoteError";
    case ncclInProgress: return "ncclInProgress";
    default: return "ncclResult_t(unknown)";
  }
}

inline absl::Status ToStatus(ncclResult_t result, const char* call, const char* file, int line) {
  if (result == ncclSuccess) return absl::OkStatus();
  // NCCL's last error names the cause (which peer, which CUDA call); it is
  // process-wide, so it may belong to another call: it is added, not trusted.
  const char* detail = ncclGetLastError(nullptr);
  std::string text = ncclGetErrorString(result);
  if (detail != nullptr && detail[0] != '\0') absl::StrAppend(&text, "; last NCCL error: ", detail);
  return Failure(call, NcclResultName(result), text, file, line);
}
#endif

#ifdef MLA_CUDA_STATUS_HAVE_CUBLAS
inline absl::Status ToStatus(cublasStatus_t result, const char* call, const char* file, int line) {
  if (result == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return Failure(call, cublasGetStatusName(result), cublasGetStatusString(result), file, line);
}
#endif

}  // namespace mla::cuda_internal

// absl::Status of a cudaError_t / ncclResult_t / cublasStatus_t expression: OK, or
// Internal naming the expression and file:line.
#define MLA_CUDA_STATUS(expr) ::mla::cuda_internal::ToStatus((expr), #expr, __FILE__, __LINE__)

// Returns Internal from the enclosing function (absl::Status or absl::StatusOr<T>)
// when the CUDA, NCCL or cuBLAS call `expr` fails.
#define MLA_CUDA_RETURN_IF_ERROR(expr)                                     \
  do {                                                                     \
    ::absl::Status mla_cuda_status_ = MLA_CUDA_STATUS(expr);               \
    if (!mla_cuda_status_.ok()) return mla_cuda_status_;                   \
  } while (0)
