#include "runtime/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <system_error>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "runtime/status_macros.h"

namespace mla {
namespace {

using json = nlohmann::json;

static_assert(std::endian::native == std::endian::little,
              "the header length and tensor data are little-endian");

// The reference implementation's limit: real headers are at most a few MB, so a
// larger length is a corrupt or hostile file, not something to allocate for.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr size_t kLengthPrefixBytes = 8;

template <typename... Args>
absl::Status Invalid(const std::string& path, const Args&... args) {
  return absl::InvalidArgumentError(absl::StrCat("safetensors ", path, ": ", args...));
}

// This Abseil (Debian's) has its own string_view type, so StrCat takes no std::string_view.
absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// A JSON value for an error message. Containers are named by type only: printing
// them would recurse over arbitrarily deep (hostile) nesting.
std::string Describe(const json& v) {
  if (v.is_structured()) return v.type_name();
  std::string s = v.dump(-1, ' ', /*ensure_ascii=*/true, json::error_handler_t::replace);
  if (s.size() > 64) s = s.substr(0, 61) + "...";
  return absl::StrCat(v.type_name(), " ", s);
}

// Reads a non-negative JSON integer; false for floats, negatives and non-numbers.
bool GetUnsigned(const json& v, uint64_t* out) {
  if (!v.is_number_unsigned()) return false;  // nlohmann stores n >= 0 as unsigned
  *out = v.get<uint64_t>();
  return true;
}

absl::Status ErrnoError(const std::string& path, const char* what, int err) {
  return absl::Status(absl::ErrnoToStatusCode(err),
                      absl::StrCat("safetensors ", path, ": ", what, ": ",
                                   std::error_code(err, std::generic_category()).message()));
}

// Closes a descriptor on every return path; the mapping outlives it.
struct FdCloser {
  int fd;
  ~FdCloser() { ::close(fd); }
};

absl::StatusOr<std::vector<int64_t>> ParseShape(const std::string& path, const std::string& name,
                                                const json& v) {
  if (!v.is_array()) {
    return Invalid(path, "tensor '", name, "': \"shape\" must be an array of integers, got ",
                   Describe(v));
  }
  std::vector<int64_t> shape;
  shape.reserve(v.size());
  for (const json& d : v) {
    if (d.is_number_integer() && !d.is_number_unsigned()) {
      return Invalid(path, "tensor '", name, "': negative dimension ", d.get<int64_t>(),
                     " in \"shape\", expected dimensions >= 0");
    }
    uint64_t dim;
    if (!GetUnsigned(d, &dim)) {
      return Invalid(path, "tensor '", name, "': \"shape\" must hold integers, got ", Describe(d));
    }
    if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return Invalid(path, "tensor '", name, "': dimension ", dim, " exceeds ",
                     std::numeric_limits<int64_t>::max());
    }
    shape.push_back(static_cast<int64_t>(dim));
  }
  return shape;
}

// Byte count of a tensor of `shape` x `dtype`, or an error when it overflows.
absl::StatusOr<size_t> ByteSize(const std::string& path, const std::string& name,
                                const std::vector<int64_t>& shape, DType dtype) {
  int64_t numel = 1;
  for (int64_t d : shape) {
    if (__builtin_mul_overflow(numel, d, &numel)) {
      return Invalid(path, "tensor '", name, "': shape ", ShapeString(shape),
                     " has more elements than fit in 64 bits");
    }
  }
  size_t nbytes;
  if (__builtin_mul_overflow(static_cast<size_t>(numel), DTypeSize(dtype), &nbytes)) {
    return Invalid(path, "tensor '", name, "': shape ", ShapeString(shape), " x ",
                   Sv(DTypeName(dtype)), " has more bytes than fit in 64 bits");
  }
  return nbytes;
}

// Checks `entry` ({"dtype", "shape", "data_offsets"}) against a data region of
// `data_size` bytes at `data` and fills `out`. Keys other than these are ignored.
absl::Status ParseEntry(const std::string& path, const std::string& name, const json& entry,
                        const uint8_t* data, size_t data_size, TensorView* out) {
  if (!entry.is_object()) {
    return Invalid(
        path, "tensor '", name,
        "': entry must be an object with \"dtype\", \"shape\" and \"data_offsets\", got ",
        Describe(entry));
  }
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    if (!entry.contains(key)) {
      return Invalid(path, "tensor '", name, "': missing key \"", key, "\"");
    }
  }
  const json& dtype_json = entry["dtype"];
  if (!dtype_json.is_string()) {
    return Invalid(path, "tensor '", name, "': \"dtype\" must be a string, got ",
                   Describe(dtype_json));
  }
  absl::StatusOr<DType> dtype = ParseDType(dtype_json.get_ref<const std::string&>());
  if (!dtype.ok()) return Invalid(path, "tensor '", name, "': ", dtype.status().message());
  MLA_ASSIGN_OR_RETURN(std::vector<int64_t> shape, ParseShape(path, name, entry["shape"]));
  MLA_ASSIGN_OR_RETURN(size_t nbytes, ByteSize(path, name, shape, *dtype));

  const json& offsets = entry["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2) {
    return Invalid(path, "tensor '", name,
                   "': \"data_offsets\" must be an array [begin, end], got ",
                   offsets.is_array() ? absl::StrCat("an array of ", offsets.size(), " elements")
                                      : Describe(offsets));
  }
  uint64_t begin = 0, end = 0;
  for (auto [i, out] : {std::pair{0, &begin}, std::pair{1, &end}}) {
    if (!GetUnsigned(offsets[i], out)) {
      return Invalid(path, "tensor '", name,
                     "': \"data_offsets\" must hold non-negative integers, got ",
                     Describe(offsets[i]));
    }
  }
  const std::string range = absl::StrCat("data_offsets [", begin, ", ", end, "]");
  if (begin > end) {
    return Invalid(path, "tensor '", name, "': ", range, " has begin > end, expected begin <= end");
  }
  if (end > data_size) {
    return Invalid(path, "tensor '", name, "': ", range, " reach beyond the data region of ",
                   data_size, " bytes");
  }
  if (end - begin != nbytes) {
    return Invalid(path, "tensor '", name, "': ", range, " hold ", end - begin, " bytes, expected ",
                   nbytes, " (shape ", ShapeString(shape), " x ", Sv(DTypeName(*dtype)), ")");
  }
  *out = TensorView{name, *dtype, std::move(shape), data + begin, nbytes};
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<DType> ParseDType(std::string_view s) {
  if (s == "F32") return DType::kF32;
  if (s == "F16") return DType::kF16;
  if (s == "BF16") return DType::kBF16;
  if (s == "F8_E4M3") return DType::kF8E4M3;
  return absl::InvalidArgumentError(
      absl::StrCat("unsupported dtype \"", Sv(s), "\", expected one of F32, F16, BF16, F8_E4M3"));
}

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return 4;
    case DType::kF16:
      return 2;
    case DType::kBF16:
      return 2;
    case DType::kF8E4M3:
      return 1;
  }
  return 0;  // unreachable: the switch covers every enumerator
}

std::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kF16:
      return "F16";
    case DType::kBF16:
      return "BF16";
    case DType::kF8E4M3:
      return "F8_E4M3";
  }
  return "?";
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // cannot overflow: checked when the header was parsed
  return n;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError(path, "cannot open", errno);
  FdCloser closer{fd};
  struct stat st;
  if (::fstat(fd, &st) != 0) return ErrnoError(path, "cannot stat", errno);
  if (!S_ISREG(st.st_mode)) return Invalid(path, "not a regular file");
  const size_t size = static_cast<size_t>(st.st_size);
  if (size < kLengthPrefixBytes) {
    return Invalid(path, "file is ", size, " bytes, shorter than the ", kLengthPrefixBytes,
                   "-byte header length");
  }
  void* base = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  if (base == MAP_FAILED) return ErrnoError(path, "cannot mmap", errno);
  std::unique_ptr<SafetensorsFile> file(
      new SafetensorsFile(path, static_cast<const uint8_t*>(base), size));
  MLA_RETURN_IF_ERROR(file->ParseHeader());
  return file;
}

SafetensorsFile::~SafetensorsFile() { ::munmap(const_cast<uint8_t*>(base_), size_); }

const TensorView* SafetensorsFile::Find(std::string_view name) const {
  auto it = std::lower_bound(tensors_.begin(), tensors_.end(), name,
                             [](const TensorView& t, std::string_view n) { return t.name < n; });
  return it != tensors_.end() && it->name == name ? &*it : nullptr;
}

absl::Status SafetensorsFile::ParseHeader() {
  uint64_t header_len;
  std::memcpy(&header_len, base_, sizeof header_len);
  if (header_len > kMaxHeaderBytes) {
    return Invalid(path_, "header length ", header_len, " exceeds the limit of ", kMaxHeaderBytes,
                   " bytes");
  }
  const size_t available = size_ - kLengthPrefixBytes;
  if (header_len > available) {
    return Invalid(path_, "header length ", header_len, " runs past the end of the file (",
                   available, " bytes follow the length)");
  }
  const char* text = reinterpret_cast<const char*>(base_ + kLengthPrefixBytes);
  json header;
  try {
    header = json::parse(text, text + header_len);
  } catch (const json::exception& e) {
    return Invalid(path_, "header is not valid JSON: ", e.what());
  }
  if (!header.is_object()) {
    return Invalid(path_, "header must be a JSON object, got ", Describe(header));
  }

  const uint8_t* data = base_ + kLengthPrefixBytes + header_len;
  const size_t data_size = available - header_len;
  // nlohmann objects iterate in key order, so tensors_ comes out sorted by name.
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      if (!value.is_object()) {
        return Invalid(path_, "\"__metadata__\" must be an object of strings, got ",
                       Describe(value));
      }
      for (const auto& [key, item] : value.items()) {
        if (!item.is_string()) {
          return Invalid(path_, "\"__metadata__\" value for '", key, "' must be a string, got ",
                         Describe(item));
        }
        metadata_[key] = item.get<std::string>();
      }
      continue;
    }
    TensorView view;
    MLA_RETURN_IF_ERROR(ParseEntry(path_, name, value, data, data_size, &view));
    tensors_.push_back(std::move(view));
  }

  // Byte ranges must not overlap (empty tensors own no bytes). Sorted by begin, an
  // overlap always shows between neighbours.
  std::vector<const TensorView*> by_offset;
  for (const TensorView& t : tensors_) {
    if (t.nbytes > 0) by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorView* a, const TensorView* b) { return a->data < b->data; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const TensorView& prev = *by_offset[i - 1];
    const TensorView& cur = *by_offset[i];
    if (prev.data + prev.nbytes > cur.data) {
      auto offsets = [&](const TensorView& t) {
        const size_t begin = static_cast<size_t>(t.data - data);
        return absl::StrCat("[", begin, ", ", begin + t.nbytes, "]");
      };
      return Invalid(path_, "tensors '", prev.name, "' data_offsets ", offsets(prev), " and '",
                     cur.name, "' data_offsets ", offsets(cur),
                     " overlap, expected disjoint byte ranges");
    }
  }
  return absl::OkStatus();
}

}  // namespace mla
