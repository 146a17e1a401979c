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

// The kept maps: a ring, searched from the last hit (a model's layers come
// in order, so that is usually the next entry).
struct KeptMaps {
  const void* cache[kMlaDecodeCacheMapsKept] = {};
  CUtensorMap map[kMlaDecodeCacheMapsKept];
  int used = 0;
  int next = 0;  // the slot the next new map takes
  int last = 0;  // the last hit or insertion
  int64_t encoded = 0;
};
thread_local KeptMaps kept;

}  // namespace

cudaError_t MlaDecodeCacheMap(const MlaDecodeParams& p, CUtensorMap* map) {
  if (p.kv_lora + p.qk_rope != kTmaLatent) return cudaErrorInvalidValue;
  for (int i = 0; i < kept.used; ++i) {
    const int slot = (kept.last + i) % kept.used;
    if (kept.cache[slot] == p.cache) {
      kept.last = slot;
      *map = kept.map[slot];
      return cudaSuccess;
    }
  }
  CUtensorMap fresh{};  // encoded aside: a failure leaves the kept maps as they were
  const cudaError_t err = EncodeCacheMap(p.cache, &fresh);
  if (err != cudaSuccess) return err;
  ++kept.encoded;
  const int slot = kept.next;
  kept.cache[slot] = p.cache;
  kept.map[slot] = fresh;
  kept.next = (slot + 1) % kMlaDecodeCacheMapsKept;
  if (kept.used < kMlaDecodeCacheMapsKept) ++kept.used;
  kept.last = slot;
  *map = kept.map[slot];
  return cudaSuccess;
}

int64_t MlaDecodeCacheMapsEncoded() { return kept.encoded; }

}  // namespace mla::cuda::detail
