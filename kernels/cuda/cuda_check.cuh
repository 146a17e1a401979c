// Error plumbing shared by the CUDA launchers: every launcher returns the
// cudaError_t of its first failing call (the runtime turns it into a Status).
#pragma once

#include <cuda_runtime.h>

// Returns the error of a CUDA runtime call from the enclosing function.
#define MLA_CUDA_RETURN_IF_ERROR(expr)                  \
  do {                                                  \
    const cudaError_t mla_cuda_err_ = (expr);           \
    if (mla_cuda_err_ != cudaSuccess) return mla_cuda_err_; \
  } while (0)
