// One device, one stream, one cuBLAS handle: what the CUDA model runs on. Every
// kernel launch, copy and GEMM of a model goes to this stream, in order, so the
// only synchronisation points are the ones the host asks for (MoE routing ids,
// collectives, the logits).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace mla::cuda {

// A non-blocking stream; destroyed with its owner.
class Stream {
 public:
  static absl::StatusOr<Stream> Create();
  Stream() = default;
  Stream(Stream&& o) noexcept;
  Stream& operator=(Stream&& o) noexcept;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  ~Stream();
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

// A cuBLAS handle bound to one stream; destroyed with its owner.
class CublasHandle {
 public:
  static absl::StatusOr<CublasHandle> Create(cudaStream_t stream);
  CublasHandle() = default;
  CublasHandle(CublasHandle&& o) noexcept;
  CublasHandle& operator=(CublasHandle&& o) noexcept;
  CublasHandle(const CublasHandle&) = delete;
  CublasHandle& operator=(const CublasHandle&) = delete;
  ~CublasHandle();
  cublasHandle_t get() const { return handle_; }

 private:
  cublasHandle_t handle_ = nullptr;
};

// Element types the GEMMs take.
enum class DType { kBF16, kF32 };

// One operand of a row-major GEMM, possibly one of a strided batch.
struct GemmOperand {
  const void* data = nullptr;
  DType dtype = DType::kBF16;
  int64_t ld = 0;      // elements between rows
  int64_t stride = 0;  // elements between batch entries (batch > 1)
};

// out[b][m, n] = sum_k x[b][m, k] * W[b](n, k)  (+ beta * out), row-major, FP32
// accumulation (CUBLAS_COMPUTE_32F: no TF32, no reduced-precision reduction).
// W(n, k) is w[n * ld + k] (a linear layer's weight as stored, [out, in]) or,
// with w_is_k_by_n, w[k * ld + n] (a [in, out] matrix, e.g. W_UK read as W_UK^T).
struct GemmParams {
  int64_t m = 0, n = 0, k = 0;
  GemmOperand x;  // [m, k]
  GemmOperand w;  // [n, k], or [k, n] with w_is_k_by_n
  bool w_is_k_by_n = false;
  void* out = nullptr;  // [m, n]
  DType out_dtype = DType::kBF16;
  int64_t ldo = 0;
  int64_t out_stride = 0;
  int batch = 1;
  float beta = 0.0f;
};

// The common case: x [m, k] times a linear layer's weight [n, k] (as stored)
// into out [m, n], every operand contiguous (ld k for x and W, n for out).
inline GemmParams DenseGemm(int64_t m, int64_t n, int64_t k, const void* x, DType x_dtype, const void* w,
                            DType w_dtype, void* out, DType out_dtype) {
  GemmParams g;
  g.m = m;
  g.n = n;
  g.k = k;
  g.x = {x, x_dtype, k};
  g.w = {w, w_dtype, k};
  g.out = out;
  g.out_dtype = out_dtype;
  g.ldo = n;
  return g;
}

class CudaContext {
 public:
  // Makes `device` current on this thread and creates the stream and handle.
  static absl::StatusOr<std::unique_ptr<CudaContext>> Create(int device);

  int device() const { return device_; }
  int sm_count() const { return sm_count_; }  // streaming multiprocessors of the device
  cudaStream_t stream() const { return stream_.get(); }
  cublasHandle_t cublas() const { return cublas_.get(); }

  // Makes this context's device current on the calling thread.
  absl::Status Activate() const;
  // Waits for everything queued on the stream; a kernel fault surfaces here.
  absl::Status Synchronize() const;
  // Queues one GEMM (or a strided batch of them) on the stream. m == 0,
  // n == 0 or batch == 0 queue nothing. InvalidArgument for shapes cuBLAS
  // cannot take (dimensions past INT32_MAX, leading dimensions too small).
  absl::Status Gemm(const GemmParams& p) const;

 private:
  CudaContext(int device, int sm_count, Stream stream, CublasHandle cublas)
      : device_(device), sm_count_(sm_count), stream_(std::move(stream)), cublas_(std::move(cublas)) {}

  int device_;
  int sm_count_;
  Stream stream_;
  CublasHandle cublas_;  // declared after the stream: destroyed before it
};

}  // namespace mla::cuda
