#include "runtime/cuda/cuda_context.h"

#include <climits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "runtime/cuda_status.h"

namespace mla::cuda {

absl::StatusOr<Stream> Stream::Create() {
  Stream s;
  MLA_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&s.stream_, cudaStreamNonBlocking));
  return s;
}

Stream::Stream(Stream&& o) noexcept : stream_(std::exchange(o.stream_, nullptr)) {}

Stream& Stream::operator=(Stream&& o) noexcept {
  if (this != &o) {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
    stream_ = std::exchange(o.stream_, nullptr);
  }
  return *this;
}

Stream::~Stream() {
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

absl::StatusOr<CublasHandle> CublasHandle::Create(cudaStream_t stream) {
  CublasHandle h;
  MLA_CUDA_RETURN_IF_ERROR(cublasCreate(&h.handle_));
  MLA_CUDA_RETURN_IF_ERROR(cublasSetStream(h.handle_, stream));
  return h;
}

CublasHandle::CublasHandle(CublasHandle&& o) noexcept : handle_(std::exchange(o.handle_, nullptr)) {}

CublasHandle& CublasHandle::operator=(CublasHandle&& o) noexcept {
  if (this != &o) {
    if (handle_ != nullptr) cublasDestroy(handle_);
    handle_ = std::exchange(o.handle_, nullptr);
  }
  return *this;
}

CublasHandle::~CublasHandle() {
  if (handle_ != nullptr) cublasDestroy(handle_);
}

absl::StatusOr<std::unique_ptr<CudaContext>> CudaContext::Create(int device) {
  int count = 0;
  MLA_CUDA_RETURN_IF_ERROR(cudaGetDeviceCount(&count));
  if (device < 0 || device >= count) {
    return absl::InvalidArgumentError(absl::StrCat("CUDA device ", device, " (expected 0 <= device < ", count, ")"));
  }
  MLA_CUDA_RETURN_IF_ERROR(cudaSetDevice(device));
  absl::StatusOr<Stream> stream = Stream::Create();
  if (!stream.ok()) return stream.status();
  absl::StatusOr<CublasHandle> cublas = CublasHandle::Create(stream->get());
  if (!cublas.ok()) return cublas.status();
  int sms = 0;
  MLA_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return std::unique_ptr<CudaContext>(new CudaContext(device, sms, std::move(*stream), std::move(*cublas)));
}

absl::Status CudaContext::Activate() const { return MLA_CUDA_STATUS(cudaSetDevice(device_)); }

absl::Status CudaContext::Synchronize() const { return MLA_CUDA_STATUS(cudaStreamSynchronize(stream_.get())); }

namespace {

cudaDataType_t CudaType(DType t) { return t == DType::kBF16 ? CUDA_R_16BF : CUDA_R_32F; }

bool FitsInt(int64_t v) { return v >= 0 && v <= INT_MAX; }

}  // namespace

absl::Status CudaContext::Gemm(const GemmParams& p) const {
  if (p.m == 0 || p.n == 0 || p.batch == 0) return absl::OkStatus();
  // Row-major out[m, n] = x[m, k] W^T is column-major out^T[n, m] = op(A)[n, k] x^T[k, m]:
  // A is the weight (row-major [n, k] is column-major k x n: transposed; row-major
  // [k, n] is column-major n x k: as is), B is x (column-major k x m, as is).
  const int64_t min_lw = p.w_is_k_by_n ? p.n : p.k;
  if (!FitsInt(p.m) || !FitsInt(p.n) || p.k <= 0 || !FitsInt(p.k) || p.batch < 0 || !FitsInt(p.x.ld) ||
      !FitsInt(p.w.ld) || !FitsInt(p.ldo) || p.x.ld < p.k || p.w.ld < min_lw || p.ldo < p.n) {
    return absl::InvalidArgumentError(absl::StrCat("GEMM m=", p.m, " n=", p.n, " k=", p.k, " ldx=", p.x.ld,
                                                   " ldw=", p.w.ld, " ldo=", p.ldo, " batch=", p.batch,
                                                   ": a dimension is out of range for cuBLAS"));
  }
  const float alpha = 1.0f, beta = p.beta;
  const cublasOperation_t op_a = p.w_is_k_by_n ? CUBLAS_OP_N : CUBLAS_OP_T;
  const int m = static_cast<int>(p.n), n = static_cast<int>(p.m), k = static_cast<int>(p.k);
  if (p.batch == 1) {
    MLA_CUDA_RETURN_IF_ERROR(cublasGemmEx(cublas_.get(), op_a, CUBLAS_OP_N, m, n, k, &alpha, p.w.data,
                                          CudaType(p.w.dtype), static_cast<int>(p.w.ld), p.x.data,
                                          CudaType(p.x.dtype), static_cast<int>(p.x.ld), &beta, p.out,
                                          CudaType(p.out_dtype), static_cast<int>(p.ldo), CUBLAS_COMPUTE_32F,
                                          CUBLAS_GEMM_DEFAULT));
    return absl::OkStatus();
  }
  MLA_CUDA_RETURN_IF_ERROR(cublasGemmStridedBatchedEx(
      cublas_.get(), op_a, CUBLAS_OP_N, m, n, k, &alpha, p.w.data, CudaType(p.w.dtype), static_cast<int>(p.w.ld),
      static_cast<long long>(p.w.stride), p.x.data, CudaType(p.x.dtype), static_cast<int>(p.x.ld),
      static_cast<long long>(p.x.stride), &beta, p.out, CudaType(p.out_dtype), static_cast<int>(p.ldo),
      static_cast<long long>(p.out_stride), p.batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return absl::OkStatus();
}

}  // namespace mla::cuda
