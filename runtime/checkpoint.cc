#include "runtime/checkpoint.h"

#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/cpu/float_convert.h"
#include "nlohmann/json.hpp"
#include "runtime/status_macros.h"

namespace mla {
namespace {

using json = nlohmann::json;

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";
constexpr const char* kScaleSuffix = "_scale_inv";
// The V3 index is ~9 MB; anything past this is not an index.
constexpr std::streamoff kMaxIndexBytes = 256 << 20;

// This Abseil (Debian's) has its own string_view type, so StrCat takes no std::string_view.
absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

template <typename Int>
std::string ShapeString(std::span<const Int> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}
std::string ShapeString(const std::vector<int64_t>& shape) {
  return ShapeString(std::span<const int64_t>(shape));
}

std::string JoinPath(const std::string& dir, std::string_view name) {
  if (!dir.empty() && dir.back() == '/') return absl::StrCat(dir, Sv(name));
  return absl::StrCat(dir, "/", Sv(name));
}

bool PathExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

// A shard name from the index must stay inside the checkpoint directory.
bool IsSafeRelativePath(const std::string& file) {
  if (file.empty() || file.front() == '/') return false;
  std::string_view rest = file;
  while (true) {
    const size_t slash = rest.find('/');
    if (rest.substr(0, slash) == "..") return false;
    if (slash == std::string_view::npos) return true;
    rest.remove_prefix(slash + 1);
  }
}

absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return absl::NotFoundError(absl::StrCat("checkpoint index ", path, ": cannot open"));
  const std::streamoff size = in.tellg();
  if (size < 0 || size > kMaxIndexBytes) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint index ", path, ": size ", size,
                                                   " bytes, expected at most ", kMaxIndexBytes));
  }
  std::string text(static_cast<size_t>(size), '\0');
  in.seekg(0);
  if (!in.read(text.data(), size)) {
    return absl::DataLossError(absl::StrCat("checkpoint index ", path, ": read failed"));
  }
  return text;
}

// Lookup tables: one load per element instead of per-element bit fiddling and
// ldexp. Built once, on first use (thread-safe static initialisation).
const std::array<float, 256>& Fp8Table() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t;
    for (int i = 0; i < 256; ++i) t[i] = cpu::Fp8E4M3ToFloat(static_cast<uint8_t>(i));
    return t;
  }();
  return table;
}

const std::vector<float>& HalfTable() {  // 65536 entries, 256 KiB
  static const std::vector<float> table = [] {
    std::vector<float> t(1 << 16);
    for (uint32_t i = 0; i < t.size(); ++i) t[i] = cpu::HalfToFloat(static_cast<uint16_t>(i));
    return t;
  }();
  return table;
}

// d >= 0, b > 0; no overflow for any b (d + b - 1 could).
int64_t CeilDiv(int64_t d, int64_t b) { return d / b + (d % b != 0); }

bool IsFp8Nan(uint8_t b) { return (b & 0x7f) == 0x7f; }

// Row converters: `n` elements from `src` (unaligned storage) to `dst`.
void Bf16Row(const uint8_t* src, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, sizeof h);
    dst[i] = cpu::Bf16ToFloat(h);
  }
}

void HalfRow(const uint8_t* src, int64_t n, float* dst, const float* table) {
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, sizeof h);
    dst[i] = table[h];
  }
}

// Columns [c, c_end) of one FP8 row; `row_scales` are this row's block scales.
// Returns true when a NaN byte was seen (checked once per row, not per element).
bool Fp8Row(const uint8_t* src, int64_t c, int64_t c_end, int64_t block, const float* row_scales,
            const float* table, float* dst) {
  uint8_t nan_seen = 0;
  while (c < c_end) {
    const int64_t b = c / block;
    const int64_t block_end = std::min(c_end, (b + 1) * block);
    const float scale = row_scales[b];
    for (; c < block_end; ++c) {
      const uint8_t byte = src[c];
      nan_seen |= static_cast<uint8_t>(IsFp8Nan(byte));
      *dst++ = table[byte] * scale;
    }
  }
  return nan_seen != 0;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& dir) {
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat("checkpoint ", dir, ": directory does not exist"));
  }
  if (!S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint ", dir, ": not a directory"));
  }
  std::unique_ptr<Checkpoint> ckpt(new Checkpoint(dir));
  const std::string single = JoinPath(dir, kSingleFile);
  const std::string index = JoinPath(dir, kIndexFile);
  if (PathExists(single)) {
    MLA_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(single));
    MLA_RETURN_IF_ERROR(ckpt->AddFile(std::move(file)));
  } else if (PathExists(index)) {
    MLA_RETURN_IF_ERROR(ckpt->LoadIndex(index));
  } else {
    return absl::NotFoundError(absl::StrCat("checkpoint ", dir, ": neither ", kSingleFile, " nor ",
                                            kIndexFile, " exists"));
  }
  return ckpt;
}

absl::Status Checkpoint::AddFile(std::unique_ptr<SafetensorsFile> file) {
  for (const TensorView& t : file->tensors()) tensors_[t.name] = Entry{&t, file.get()};
  files_.push_back(std::move(file));
  return absl::OkStatus();
}

absl::Status Checkpoint::LoadIndex(const std::string& index_path) {
  auto error = [&](auto&&... args) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint index ", index_path, ": ", args...));
  };
  MLA_ASSIGN_OR_RETURN(std::string text, ReadTextFile(index_path));
  json index;
  try {
    index = json::parse(text);
  } catch (const json::exception& e) {
    return error("not valid JSON: ", e.what());
  }
  if (!index.is_object() || !index.contains("weight_map")) {
    return error("expected an object with a \"weight_map\" object");
  }
  const json& map = index["weight_map"];
  if (!map.is_object()) return error("\"weight_map\" must be an object, got ", map.type_name());

  // Group tensors by shard so that each shard is opened once.
  std::map<std::string, std::vector<std::string>> by_file;
  for (const auto& [tensor, file] : map.items()) {
    if (!file.is_string()) {
      return error("weight_map entry for tensor '", tensor, "' must be a file name string, got ",
                   file.type_name());
    }
    const std::string& name = file.get_ref<const std::string&>();
    if (!IsSafeRelativePath(name)) {
      return error("weight_map places tensor '", tensor, "' in '", name,
                   "', expected a file name inside ", dir_);
    }
    by_file[name].push_back(tensor);
  }
  for (const auto& [name, tensors] : by_file) {
    const std::string path = JoinPath(dir_, name);
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) {
      return absl::NotFoundError(absl::StrCat("checkpoint index ", index_path, ": file ", path,
                                              " (holding tensor '", tensors.front(),
                                              "') does not exist"));
    }
    if (!S_ISREG(st.st_mode)) {
      return error("file ", path, " (holding tensor '", tensors.front(),
                   "') is not a regular file");
    }
    MLA_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(path));
    for (const std::string& tensor : tensors) {
      const TensorView* view = file->Find(tensor);
      if (view == nullptr) {
        return error("weight_map places tensor '", tensor, "' in ", path,
                     ", which does not hold it");
      }
      tensors_[tensor] = Entry{view, file.get()};
    }
    files_.push_back(std::move(file));
  }
  return absl::OkStatus();
}

bool Checkpoint::Has(std::string_view name) const { return tensors_.find(name) != tensors_.end(); }

absl::StatusOr<const TensorView*> Checkpoint::Get(std::string_view name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    return absl::NotFoundError(
        absl::StrCat("checkpoint ", dir_, ": missing tensor '", Sv(name), "'"));
  }
  return it->second.view;
}

std::vector<std::string> Checkpoint::TensorNames() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& [name, entry] : tensors_) names.push_back(name);
  return names;
}

absl::StatusOr<std::vector<float>> Checkpoint::ReadScales(std::string_view name,
                                                          const Entry& weight,
                                                          int64_t block) const {
  const std::string scale_name = absl::StrCat(Sv(name), kScaleSuffix);
  const std::vector<int64_t>& shape = weight.view->shape;
  auto it = tensors_.find(scale_name);
  if (it == tensors_.end()) {
    return absl::NotFoundError(absl::StrCat("checkpoint ", dir_, ": F8_E4M3 tensor '", Sv(name),
                                            "' in ", weight.file->path(), " needs scale tensor '",
                                            scale_name, "', which is missing"));
  }
  const TensorView& scale = *it->second.view;
  std::vector<int64_t> expected;
  for (int64_t d : shape) expected.push_back(CeilDiv(d, block));
  if (scale.shape != expected) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint ", dir_, ": scale tensor '", scale_name, "' in ",
                     it->second.file->path(), " has shape ", ShapeString(scale.shape),
                     ", expected ", ShapeString(expected), " for tensor '", Sv(name), "' of shape ",
                     ShapeString(shape), " in ", block, "x", block, " blocks"));
  }
  std::vector<float> scales(static_cast<size_t>(scale.numel()));
  if (scale.dtype == DType::kF32) {
    if (!scales.empty()) std::memcpy(scales.data(), scale.data, scale.nbytes);
  } else if (scale.dtype == DType::kBF16) {
    Bf16Row(scale.data, scale.numel(), scales.data());
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint ", dir_, ": scale tensor '", scale_name, "' has dtype ",
                     Sv(DTypeName(scale.dtype)), ", expected F32 or BF16"));
  }
  for (size_t i = 0; i < scales.size(); ++i) {
    if (!std::isfinite(scales[i])) {
      return absl::InvalidArgumentError(absl::StrCat("checkpoint ", dir_, ": scale tensor '",
                                                     scale_name, "' holds ", scales[i],
                                                     " at flat index ", i, ", expected finite"));
    }
  }
  return scales;
}

absl::StatusOr<std::vector<float>> Checkpoint::ReadFloat32(std::string_view name,
                                                           std::span<const int64_t> expected_shape,
                                                           const Slice* slice,
                                                           int64_t fp8_block) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) return Get(name).status();
  const Entry& entry = it->second;
  const TensorView& t = *entry.view;
  auto error = [&](auto&&... args) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint ", dir_, ": tensor '", Sv(name),
                                                   "' in ", entry.file->path(), ": ", args...));
  };
  if (expected_shape.size() != 1 && expected_shape.size() != 2) {
    return error("ReadFloat32 reads 1-D or 2-D tensors, expected shape is ",
                 ShapeString(expected_shape));
  }
  if (!std::equal(t.shape.begin(), t.shape.end(), expected_shape.begin(), expected_shape.end())) {
    return error("shape ", ShapeString(t.shape), ", expected ", ShapeString(expected_shape));
  }
  // A 1-D tensor is read as [n, 1].
  const int64_t rows = t.shape[0];
  const int64_t cols = t.shape.size() == 2 ? t.shape[1] : 1;
  Slice s = slice != nullptr ? *slice : Slice{0, rows, 0, cols};
  if (t.shape.size() == 1) s.col_begin = 0, s.col_end = 1;
  if (s.row_begin < 0 || s.row_begin > s.row_end || s.row_end > rows || s.col_begin < 0 ||
      s.col_begin > s.col_end || s.col_end > cols) {
    return error("slice rows [", s.row_begin, ", ", s.row_end, ") x cols [", s.col_begin, ", ",
                 s.col_end, ") is outside shape ", ShapeString(t.shape));
  }
  const int64_t out_rows = s.row_end - s.row_begin, out_cols = s.col_end - s.col_begin;
  std::vector<float> out(static_cast<size_t>(out_rows * out_cols));
  const size_t elem = DTypeSize(t.dtype);
  // Start of row r's slice in the file, and in the output.
  auto src_row = [&](int64_t r) { return t.data + (r * cols + s.col_begin) * elem; };
  auto dst_row = [&](int64_t r) { return out.data() + (r - s.row_begin) * out_cols; };

  switch (t.dtype) {
    case DType::kF32:
      for (int64_t r = s.row_begin; r < s.row_end; ++r) {
        std::memcpy(dst_row(r), src_row(r), static_cast<size_t>(out_cols) * sizeof(float));
      }
      break;
    case DType::kBF16:
      for (int64_t r = s.row_begin; r < s.row_end; ++r) Bf16Row(src_row(r), out_cols, dst_row(r));
      break;
    case DType::kF16: {
      const float* table = HalfTable().data();
      for (int64_t r = s.row_begin; r < s.row_end; ++r) {
        HalfRow(src_row(r), out_cols, dst_row(r), table);
      }
      break;
    }
    case DType::kF8E4M3: {
      if (fp8_block <= 0) return error("fp8_block ", fp8_block, ", expected > 0");
      MLA_ASSIGN_OR_RETURN(std::vector<float> scales, ReadScales(name, entry, fp8_block));
      const int64_t scale_cols = CeilDiv(cols, fp8_block);
      const float* table = Fp8Table().data();
      for (int64_t r = s.row_begin; r < s.row_end; ++r) {
        const uint8_t* row = t.data + r * cols;  // full row: Fp8Row indexes by column
        const float* row_scales = scales.data() + (r / fp8_block) * scale_cols;
        if (Fp8Row(row, s.col_begin, s.col_end, fp8_block, row_scales, table, dst_row(r))) {
          int64_t c = s.col_begin;
          while (!IsFp8Nan(row[c])) ++c;
          const std::string at = t.shape.size() == 2 ? absl::StrCat(r, ", ", c) : absl::StrCat(r);
          return error("F8_E4M3 NaN (byte 0x", absl::Hex(unsigned{row[c]}, absl::kZeroPad2),
                       ") at element [", at, "], expected finite weights");
        }
      }
      break;
    }
  }
  return out;
}

}  // namespace mla
