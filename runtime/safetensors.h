// One memory-mapped safetensors file (https://github.com/huggingface/safetensors):
//   [u64 little-endian header length N][N bytes JSON header][data region]
// The header maps tensor names to {"dtype", "shape", "data_offsets": [begin, end]}
// with offsets relative to the data region. Every field is validated on Open, so a
// TensorView handed out always lies inside the mapping and matches its shape.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace mla {

// Storage types the loader understands (the ones DeepSeek releases ship).
enum class DType { kF32, kF16, kBF16, kF8E4M3 };

// "F32", "F16", "BF16", "F8_E4M3" (safetensors spelling); anything else is
// InvalidArgument naming the dtype and the supported ones.
absl::StatusOr<DType> ParseDType(std::string_view s);
size_t DTypeSize(DType dtype);            // bytes per element
std::string_view DTypeName(DType dtype);  // safetensors spelling, e.g. "BF16"

// A tensor inside a mapped file. Valid while its SafetensorsFile lives.
struct TensorView {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;  // every dim >= 0; [] is a scalar (one element)
  const uint8_t* data;         // inside the mapping; not necessarily aligned
  size_t nbytes;               // == numel() * DTypeSize(dtype)

  int64_t numel() const;
};

// Owns the read-only mapping of one file; unmaps it on destruction. Immutable after
// Open, so concurrent readers need no locking.
class SafetensorsFile {
 public:
  // NotFound when the file does not exist; InvalidArgument (naming the path, the
  // tensor and the bad and expected values) for any malformed header or layout.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);

  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const TensorView* Find(std::string_view name) const;                 // nullptr when absent
  const std::vector<TensorView>& tensors() const { return tensors_; }  // sorted by name
  // The optional "__metadata__" string map (e.g. {"format": "pt"}).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile(std::string path, const uint8_t* base, size_t size)
      : path_(std::move(path)), base_(base), size_(size) {}
  absl::Status ParseHeader();

  std::string path_;
  const uint8_t* base_;  // the whole file, mapped PROT_READ / MAP_PRIVATE
  size_t size_;          // bytes mapped (the file size, >= 8)
  std::vector<TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace mla
