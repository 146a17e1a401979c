// The paged latent KV cache on the device: per layer [num_blocks, block_size,
// kv_lora + qk_rope] in BF16 (FlashMLA's layout, DESIGN.md section 5), the
// CUDA counterpart of runtime/kv_cache.h PagedLatentCache. Block ids and block
// tables are the same as on the CPU (BlockAllocator, BlockTable).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "runtime/cuda/device_buffer.h"
#include "runtime/cuda_status.h"

namespace mla::cuda {

class CudaLatentCache {
 public:
  // Allocates (uninitialised) on the current device.
  static absl::StatusOr<CudaLatentCache> Create(int64_t num_layers, int64_t num_blocks, int64_t block_size,
                                                int64_t latent_dim) {
    if (num_layers < 0 || num_blocks < 0 || block_size <= 0 || latent_dim <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("latent cache of ", num_layers, " layers x ", num_blocks,
                                                     " blocks x ", block_size, " x ", latent_dim));
    }
    CudaLatentCache c;
    c.num_layers_ = num_layers;
    c.num_blocks_ = num_blocks;
    c.block_size_ = block_size;
    c.latent_dim_ = latent_dim;
    absl::StatusOr<DeviceBuffer> b = DeviceBuffer::Allocate(c.bytes());
    if (!b.ok()) return b.status();
    c.storage_ = std::move(*b);
    return c;
  }

  int64_t num_layers() const { return num_layers_; }
  int64_t num_blocks() const { return num_blocks_; }
  int64_t block_size() const { return block_size_; }
  int64_t latent_dim() const { return latent_dim_; }
  size_t bytes() const {
    return static_cast<size_t>(num_layers_ * num_blocks_ * block_size_ * latent_dim_) * sizeof(__nv_bfloat16);
  }
  // [num_blocks, block_size, latent_dim] of `layer`.
  __nv_bfloat16* Layer(int64_t layer) const {
    return static_cast<__nv_bfloat16*>(storage_.data()) + layer * num_blocks_ * block_size_ * latent_dim_;
  }
  // Every byte 0xff (BF16 NaN), synchronously: a read of a row no step wrote
  // shows up as NaN (tests).
  absl::Status Poison() const {
    if (bytes() == 0) return absl::OkStatus();
    MLA_CUDA_RETURN_IF_ERROR(cudaMemset(storage_.data(), 0xff, bytes()));
    return MLA_CUDA_STATUS(cudaDeviceSynchronize());
  }
  // The whole cache as BF16 bits [num_layers, num_blocks, block_size, latent_dim] (tests).
  absl::StatusOr<std::vector<uint16_t>> Download() const {
    std::vector<uint16_t> host(bytes() / sizeof(uint16_t));
    // The model's stream does not order with the legacy default stream.
    MLA_CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());
    if (!host.empty()) {
      MLA_CUDA_RETURN_IF_ERROR(cudaMemcpy(host.data(), storage_.data(), bytes(), cudaMemcpyDeviceToHost));
    }
    return host;
  }

 private:
  int64_t num_layers_ = 0, num_blocks_ = 0, block_size_ = 0, latent_dim_ = 0;
  DeviceBuffer storage_;
};

}  // namespace mla::cuda
