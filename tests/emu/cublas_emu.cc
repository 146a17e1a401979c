// The cuBLAS calls of runtime/cuda (handles, streams, GemmEx and its strided
// batch, BF16/FP32 operands, FP32 compute) for binaries built on the emulator:
// plain loops over the column-major operands, accumulating in double, so the
// CUDA model's host code and kernels run end to end on the CPU.
#include "tests/emu/cuda_emu.h"  // first: it must precede the CUDA headers

#include <cublas_v2.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/cpu/float_convert.h"

namespace {

struct Handle {
  cudaStream_t stream = nullptr;
};

float Load(const void* base, cudaDataType type, int64_t index) {
  return type == CUDA_R_32F ? static_cast<const float*>(base)[index]
                            : mla::cpu::Bf16ToFloat(static_cast<const uint16_t*>(base)[index]);
}

void Store(void* base, cudaDataType type, int64_t index, float v) {
  if (type == CUDA_R_32F) {
    static_cast<float*>(base)[index] = v;
  } else {
    static_cast<uint16_t*>(base)[index] = mla::cpu::FloatToBf16(v);
  }
}

bool Supported(cudaDataType t) { return t == CUDA_R_32F || t == CUDA_R_16BF; }

// What cuBLAS would refuse of a GEMM's shape, types and leading dimensions.
cublasStatus_t Check(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, cudaDataType at, int lda,
                     cudaDataType bt, int ldb, cudaDataType ct, int ldc, int batch, cublasComputeType_t compute) {
  if (m < 0 || n < 0 || k < 0 || batch < 0 || !Supported(at) || !Supported(bt) || !Supported(ct) ||
      (compute != CUBLAS_COMPUTE_32F && compute != CUBLAS_COMPUTE_32F_PEDANTIC) ||
      (ta != CUBLAS_OP_N && ta != CUBLAS_OP_T) || (tb != CUBLAS_OP_N && tb != CUBLAS_OP_T)) {
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  if (lda < (ta == CUBLAS_OP_N ? m : k) || ldb < (tb == CUBLAS_OP_N ? k : n) || ldc < m || lda < 1 || ldb < 1) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  return CUBLAS_STATUS_SUCCESS;
}

// C = al op(A) op(B) + be C, column-major; C is not read when be == 0. The
// arguments are those Check passed.
void Gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float al, const void* a, cudaDataType at,
          int lda, long long sa, const void* b, cudaDataType bt, int ldb, long long sb, float be, void* c,
          cudaDataType ct, int ldc, long long sc, int batch) {
  // op(A) as rows of k and op(B) as columns of k, in float, so the inner loop is contiguous.
  std::vector<float> a_rows(static_cast<size_t>(m) * k), b_cols(static_cast<size_t>(n) * k);
  for (int64_t p = 0; p < batch; ++p) {
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t l = 0; l < k; ++l) {
        a_rows[i * k + l] = Load(a, at, p * sa + (ta == CUBLAS_OP_N ? i + l * lda : l + i * lda));
      }
    }
    for (int64_t j = 0; j < n; ++j) {
      for (int64_t l = 0; l < k; ++l) {
        b_cols[j * k + l] = Load(b, bt, p * sb + (tb == CUBLAS_OP_N ? l + j * ldb : j + l * ldb));
      }
    }
    for (int64_t j = 0; j < n; ++j) {
      for (int64_t i = 0; i < m; ++i) {
        double sum = 0.0;
        const float* ar = &a_rows[i * k];
        const float* bc = &b_cols[j * k];
        for (int64_t l = 0; l < k; ++l) sum += static_cast<double>(ar[l]) * bc[l];
        const int64_t ci = p * sc + i + j * ldc;
        float v = al * static_cast<float>(sum);
        if (be != 0.0f) v += be * Load(c, ct, ci);
        Store(c, ct, ci, v);
      }
    }
  }
}

// Gemm on the handle's stream: now, or when the graph runs if the stream
// captures (a bad call fails at the call; alpha and beta, host pointers, are
// read at the call, as cuBLAS reads them).
cublasStatus_t StridedBatched(cublasHandle_t handle, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                              const void* alpha, const void* a, cudaDataType at, int lda, long long sa, const void* b,
                              cudaDataType bt, int ldb, long long sb, const void* beta, void* c, cudaDataType ct,
                              int ldc, long long sc, int batch, cublasComputeType_t compute) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  const cublasStatus_t status = Check(ta, tb, m, n, k, at, lda, bt, ldb, ct, ldc, batch, compute);
  if (status != CUBLAS_STATUS_SUCCESS) return status;
  const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
  mla::emu::StreamRun(reinterpret_cast<Handle*>(handle)->stream, [=] {
    Gemm(ta, tb, m, n, k, al, a, at, lda, sa, b, bt, ldb, sb, be, c, ct, ldc, sc, batch);
  });
  return CUBLAS_STATUS_SUCCESS;
}

}  // namespace

extern "C" {

cublasStatus_t cublasCreate_v2(cublasHandle_t* handle) {
  if (handle == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *handle = reinterpret_cast<cublasHandle_t>(new Handle);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy_v2(cublasHandle_t handle) {
  delete reinterpret_cast<Handle*>(handle);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t stream) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  reinterpret_cast<Handle*>(handle)->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}

// The workspace is the caller's (a graph's kernels use it); the emulated GEMMs need none.
cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t handle, void* workspace, size_t bytes) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  return workspace == nullptr && bytes > 0 ? CUBLAS_STATUS_INVALID_VALUE : CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                            int k, const void* alpha, const void* A, cudaDataType Atype, int lda, const void* B,
                            cudaDataType Btype, int ldb, const void* beta, void* C, cudaDataType Ctype, int ldc,
                            cublasComputeType_t computeType, cublasGemmAlgo_t) {
  return StridedBatched(handle, transa, transb, m, n, k, alpha, A, Atype, lda, 0, B, Btype, ldb, 0, beta, C, Ctype, ldc,
                        0, 1, computeType);
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                          int m, int n, int k, const void* alpha, const void* A, cudaDataType Atype,
                                          int lda, long long int strideA, const void* B, cudaDataType Btype, int ldb,
                                          long long int strideB, const void* beta, void* C, cudaDataType Ctype,
                                          int ldc, long long int strideC, int batchCount,
                                          cublasComputeType_t computeType, cublasGemmAlgo_t) {
  return StridedBatched(handle, transa, transb, m, n, k, alpha, A, Atype, lda, strideA, B, Btype, ldb, strideB, beta,
                        C, Ctype, ldc, strideC, batchCount, computeType);
}

const char* cublasGetStatusName(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "CUBLAS_STATUS (emulated)";
  }
}

const char* cublasGetStatusString(cublasStatus_t status) { return cublasGetStatusName(status); }

}  // extern "C"
