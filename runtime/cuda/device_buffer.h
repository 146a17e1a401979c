// RAII owners of CUDA memory: a device allocation, a pinned host allocation,
// and a bump allocator that carves one device allocation into aligned pieces
// (the weights, the per-step workspace). Each frees what it owns exactly once.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "runtime/cuda_status.h"

namespace mla::cuda {

// cudaMalloc'ed bytes on the current device; cudaFree on destruction.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  static absl::StatusOr<DeviceBuffer> Allocate(size_t bytes) {
    DeviceBuffer b;
    if (bytes == 0) return b;
    MLA_CUDA_RETURN_IF_ERROR(cudaMalloc(&b.ptr_, bytes));
    b.bytes_ = bytes;
    return b;
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      Reset();
      ptr_ = std::exchange(o.ptr_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { Reset(); }

  // Frees now. A failing cudaFree (a sticky error from an earlier fault) cannot
  // be reported from here; the error resurfaces at the next checked call.
  void Reset() {
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }
  void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// cudaMallocHost'ed (page-locked) host bytes: asynchronous copies to and from
// the device; cudaFreeHost on destruction.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  static absl::StatusOr<PinnedBuffer> Allocate(size_t bytes) {
    PinnedBuffer b;
    if (bytes == 0) return b;
    MLA_CUDA_RETURN_IF_ERROR(cudaMallocHost(&b.ptr_, bytes));
    b.bytes_ = bytes;
    return b;
  }
  PinnedBuffer(PinnedBuffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  PinnedBuffer& operator=(PinnedBuffer&& o) noexcept {
    if (this != &o) {
      Reset();
      ptr_ = std::exchange(o.ptr_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  ~PinnedBuffer() { Reset(); }

  void Reset() {
    if (ptr_ != nullptr) cudaFreeHost(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }
  // Grows to at least `bytes` (contents are not kept). Only call when no copy
  // from or to this buffer is in flight.
  absl::Status Reserve(size_t bytes) {
    if (bytes <= bytes_) return absl::OkStatus();
    Reset();
    absl::StatusOr<PinnedBuffer> b = Allocate(bytes);
    if (!b.ok()) return b.status();
    *this = std::move(*b);
    return absl::OkStatus();
  }
  void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

inline constexpr size_t kDeviceAlignment = 256;  // what cudaMalloc guarantees; cuBLAS likes 16+

inline size_t AlignUp(size_t n, size_t a = kDeviceAlignment) { return (n + a - 1) / a * a; }

// Lays out pieces of one allocation: Add() hands out aligned offsets, then one
// Allocate() covers them all and Pointer() turns an offset into an address.
class DeviceArena {
 public:
  // Reserves `bytes` (aligned) and returns its offset.
  size_t Add(size_t bytes) {
    const size_t offset = size_;
    size_ = AlignUp(size_ + bytes);
    return offset;
  }
  size_t size() const { return size_; }

  // Allocates the laid-out size, or keeps the current allocation when it is
  // large enough (the workspace grows, never shrinks). Call only when no
  // kernel that uses the old allocation can still run.
  absl::Status Allocate() {
    if (size_ <= buffer_.bytes() && buffer_.data() != nullptr) return absl::OkStatus();
    buffer_.Reset();
    absl::StatusOr<DeviceBuffer> b = DeviceBuffer::Allocate(size_);
    if (!b.ok()) {
      return absl::Status(b.status().code(), absl::StrCat("allocating ", size_, " bytes of device memory: ",
                                                          b.status().message()));
    }
    buffer_ = std::move(*b);
    return absl::OkStatus();
  }
  // Forgets the layout (keeps the allocation).
  void Clear() { size_ = 0; }

  template <typename T>
  T* Pointer(size_t offset) const {
    return reinterpret_cast<T*>(static_cast<unsigned char*>(buffer_.data()) + offset);
  }
  size_t allocated_bytes() const { return buffer_.bytes(); }

 private:
  size_t size_ = 0;
  DeviceBuffer buffer_;
};

}  // namespace mla::cuda
