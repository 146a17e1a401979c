#include "kernels/cpu/latent_cache.h"

#include <cstring>

#include "kernels/cpu/float_convert.h"

namespace mla::cpu {
namespace {

int64_t RowOffset(const PagedLatentView& cache, const int32_t* block_table, int64_t pos) {
  int64_t block = block_table[pos / cache.block_size];
  return (block * cache.block_size + pos % cache.block_size) * cache.latent_dim;
}

}  // namespace

void WriteLatent(const PagedLatentView& cache, const int32_t* block_table, int64_t pos, const float* latent) {
  int64_t off = RowOffset(cache, block_table, pos);
  if (cache.dtype == CacheDType::kF32) {
    std::memcpy(static_cast<float*>(cache.base) + off, latent, sizeof(float) * cache.latent_dim);
  } else {
    uint16_t* dst = static_cast<uint16_t*>(cache.base) + off;
    for (int64_t i = 0; i < cache.latent_dim; ++i) dst[i] = FloatToBf16(latent[i]);
  }
}

void ReadLatent(const PagedLatentView& cache, const int32_t* block_table, int64_t pos, float* out) {
  int64_t off = RowOffset(cache, block_table, pos);
  if (cache.dtype == CacheDType::kF32) {
    std::memcpy(out, static_cast<const float*>(cache.base) + off, sizeof(float) * cache.latent_dim);
  } else {
    const uint16_t* src = static_cast<const uint16_t*>(cache.base) + off;
    for (int64_t i = 0; i < cache.latent_dim; ++i) out[i] = Bf16ToFloat(src[i]);
  }
}

void GatherLatents(const PagedLatentView& cache, const int32_t* block_table, int64_t len, float* out) {
  for (int64_t t = 0; t < len; ++t) ReadLatent(cache, block_table, t, out + t * cache.latent_dim);
}

}  // namespace mla::cpu
