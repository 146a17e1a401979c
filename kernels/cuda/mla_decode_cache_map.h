// The latent cache as a TMA tensor map, for the wgmma decode kernels' TMA
// staging (mla_decode_tma.cuh). Host code: no device code, so host-compiled
// tests can include it. Internal to kernels/cuda.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/mla_decode.cuh"

namespace mla::cuda::detail {

inline constexpr int kTmaLatent = 576;  // BF16 per cached position: DeepSeek-V3's 512 + 64

// The tensor map of p.cache ([rows, 576] BF16, 64 x 64 boxes, 128-byte
// swizzle) into *map. Encoded through cudaGetDriverEntryPointByVersion (no
// link against the driver library), about a microsecond of host time, and
// kept per host thread for up to kMlaDecodeCacheMapsKept cache addresses
// (the oldest replaced beyond): a model's layers each have their own cache,
// and the map depends on nothing else, so a decode step encodes none once
// every layer has run. cudaErrorInvalidValue unless kv_lora + qk_rope is 576;
// cudaErrorNotSupported where the driver has no cuTensorMapEncodeTiled.
inline constexpr int kMlaDecodeCacheMapsKept = 128;  // DeepSeek-V3: 61 layers (and an MTP layer)
cudaError_t MlaDecodeCacheMap(const MlaDecodeParams& p, CUtensorMap* map);

// How many maps this host thread has encoded so far (tests: that kept maps
// are not encoded again).
int64_t MlaDecodeCacheMapsEncoded();

}  // namespace mla::cuda::detail
