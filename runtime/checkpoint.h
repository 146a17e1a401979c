// A Hugging Face model directory: model.safetensors, or
// model.safetensors.index.json ({"weight_map": {tensor: file}}) over shard files.
// Every shard is mmapped once; reads convert (and dequantise FP8) to float32.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/safetensors.h"

namespace mla {

// Half-open rectangle of a 2-D tensor: rows [row_begin, row_end) x cols
// [col_begin, col_end). For a 1-D tensor only the row range is used.
struct Slice {
  int64_t row_begin, row_end, col_begin, col_end;
};

// Immutable after Open: concurrent reads need no locking.
class Checkpoint {
 public:
  // Prefers model.safetensors when both it and the index exist (as transformers does).
  // Neither: NotFound naming the directory and both file names. Index problems
  // (bad JSON, no "weight_map" object, a shard missing or not a regular file, a
  // tensor absent from the shard the map names) are errors naming index, file and
  // tensor. Only the tensors the weight_map lists are visible.
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  bool Has(std::string_view name) const;
  // NotFound: "checkpoint <dir>: missing tensor '<name>'". The view lives as long as *this.
  absl::StatusOr<const TensorView*> Get(std::string_view name) const;
  std::vector<std::string> TensorNames() const;  // sorted

  // A 1-D or 2-D tensor as float32, row-major, after checking that its shape equals
  // expected_shape (the error names tensor, file, actual and expected shape).
  // F32/F16/BF16 are converted. F8_E4M3 is dequantised with "<name>_scale_inv" (F32
  // or BF16, shape [ceil(rows/B), ceil(cols/B)], or [ceil(n/B)] for 1-D, B =
  // fp8_block): value = fp8(byte) * scale[r/B][c/B]; edge blocks are partial. An FP8
  // NaN is an error naming the tensor and the element.
  // With `slice`, returns only that rectangle ([row_end-row_begin, col_end-col_begin]),
  // with scales indexed in the full tensor's coordinates; a slice outside the
  // tensor is InvalidArgument.
  absl::StatusOr<std::vector<float>> ReadFloat32(std::string_view name,
                                                 std::span<const int64_t> expected_shape,
                                                 const Slice* slice = nullptr,
                                                 int64_t fp8_block = 128) const;
  // Same, for a literal shape: ReadFloat32(name, {320, 256}) (a braced list does not
  // convert to std::span in C++20).
  absl::StatusOr<std::vector<float>> ReadFloat32(std::string_view name,
                                                 std::initializer_list<int64_t> expected_shape,
                                                 const Slice* slice = nullptr,
                                                 int64_t fp8_block = 128) const {
    return ReadFloat32(name,
                       std::span<const int64_t>(expected_shape.begin(), expected_shape.size()),
                       slice, fp8_block);
  }

 private:
  struct Entry {
    const TensorView* view;
    const SafetensorsFile* file;  // the shard holding it, for messages
  };

  explicit Checkpoint(std::string dir) : dir_(std::move(dir)) {}
  absl::Status AddFile(std::unique_ptr<SafetensorsFile> file);  // exposes all its tensors
  absl::Status LoadIndex(const std::string& index_path);
  // The "<name>_scale_inv" blocks of an F8_E4M3 tensor as float32, checked.
  absl::StatusOr<std::vector<float>> ReadScales(std::string_view name, const Entry& weight,
                                                int64_t block) const;

  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, Entry, std::less<>> tensors_;
};

}  // namespace mla
