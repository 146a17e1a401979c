#include "kernels/cuda/mla_decode_tma.cuh"

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_bf16.h>

#include <cstdint>

namespace mla::cuda::detail {
namespace {

// [rows, 576] BF16 rows of 1152 bytes, 64 x 64 boxes, 128-byte swizzle.
// MlaDecodeParams carries no block count, so the map claims 2^31 rows (the
// most a box's row coordinate reaches): the block tables bound what is read,
// as for every decode kernel.
cudaError_t EncodeCacheMap(const __nv_bfloat16* cache, CUtensorMap* map) {
  static const PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found) !=
            cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      fn = nullptr;
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  if (encode == nullptr) return cudaErrorNotSupported;
  const cuuint64_t dims[2] = {kTmaLatent, cuuint64_t{1} << 31};
  const cuuint64_t strides[1] = {kTmaLatent * sizeof(__nv_bfloat16)};
  const cuuint32_t box[2] = {64, kMlaDecodeTileTokens}, unit[2] = {1, 1};
  const CUresult r = encode(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<__nv_bfloat16*>(cache), dims,
                            strides, box, unit, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

}  // namespace

cudaError_t MlaDecodeCacheMap(const MlaDecodeParams& p, CUtensorMap* map) {
  if (p.kv_lora + p.qk_rope != kTmaLatent) return cudaErrorInvalidValue;
  thread_local const void* mapped_cache = nullptr;
  thread_local CUtensorMap cached{};
  if (mapped_cache != p.cache) {
    const cudaError_t err = EncodeCacheMap(p.cache, &cached);
    if (err != cudaSuccess) return err;
    mapped_cache = p.cache;
  }
  *map = cached;
  return cudaSuccess;
}

}  // namespace mla::cuda::detail
