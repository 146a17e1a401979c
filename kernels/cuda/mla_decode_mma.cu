#include "kernels/cuda/mla_decode_mma.cuh"

#include <atomic>

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/mla_decode_mma_kernel.cuh"

namespace mla::cuda::detail {
namespace {

using decode_mma::kMaxSharedBytes;
using decode_mma::kMergeThreads;
using decode_mma::kThreads;
using decode_mma::MlaDecodeMergeKernel;
using decode_mma::MlaDecodeMmaKernel;
using decode_mma::MlaDecodeMmaSharedBytes;

constexpr int kMaxDevices = 64;

// Opts the kernel into kMaxSharedBytes of dynamic shared memory, once per
// device (the attribute belongs to the current device; setting it twice from
// two threads is harmless).
template <int MT>
cudaError_t OptIntoSharedMemory() {
  static std::atomic<bool> done[kMaxDevices];
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  if (device >= 0 && device < kMaxDevices && done[device].load(std::memory_order_acquire)) return cudaSuccess;
  err = cudaFuncSetAttribute(reinterpret_cast<const void*>(&MlaDecodeMmaKernel<MT>),
                             cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(kMaxSharedBytes));
  if (err == cudaSuccess && device >= 0 && device < kMaxDevices) done[device].store(true, std::memory_order_release);
  return err;
}

template <int MT>
cudaError_t Launch(const MlaDecodeParams& p, size_t smem, cudaStream_t stream) {
  const cudaError_t err = OptIntoSharedMemory<MT>();
  if (err != cudaSuccess) return err;
  detail::LaunchKernel(MlaDecodeMmaKernel<MT>, p.num_work_items, kThreads, smem, stream, p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchMlaDecodeMma(const MlaDecodeParams& p, cudaStream_t stream) {
  const int latent = p.kv_lora + p.qk_rope;
  const size_t smem = MlaDecodeMmaSharedBytes(latent, p.heads_per_block);
  if (!MlaDecodeUsesTensorCores(p.kv_lora, p.qk_rope) || p.heads_per_block != MlaDecodeHeadsPerBlock(p.num_heads) ||
      smem > kMaxSharedBytes || p.num_work_items <= 0 || p.num_merge_items < 0 ||
      (p.num_merge_items > 0 && (p.partial_out == nullptr || p.partial_lse == nullptr))) {
    return cudaErrorInvalidValue;
  }
  cudaError_t err = p.heads_per_block == 16 ? Launch<1>(p, smem, stream) : Launch<2>(p, smem, stream);
  if (err != cudaSuccess || p.num_merge_items == 0) return err;
  const dim3 grid(static_cast<unsigned>(p.num_merge_items), static_cast<unsigned>(p.heads_per_block));
  detail::LaunchKernel(MlaDecodeMergeKernel, grid, kMergeThreads, 0, stream, p);
  return cudaGetLastError();
}

}  // namespace mla::cuda::detail
