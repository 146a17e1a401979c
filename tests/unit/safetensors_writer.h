// Test utility: writes safetensors files (well-formed, or with a verbatim header to
// craft corrupt ones), Hugging Face index files, and owns a scratch directory.
// I/O failures are reported as GoogleTest failures.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace mla::test {

struct TensorSpec {
  std::string name;
  std::string dtype;           // written verbatim, so "F64" makes an unsupported file
  std::vector<int64_t> shape;  // written verbatim (may disagree with bytes)
  std::vector<uint8_t> bytes;  // raw little-endian payload
};

// Well-formed file: payloads back to back in the given order, the header padded
// with spaces to a multiple of 8 bytes as the reference writer does.
void WriteSafetensors(const std::string& path, const std::vector<TensorSpec>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// [u64 header.size()][header][data], all verbatim.
void WriteRawSafetensors(const std::string& path, std::string_view header,
                         std::string_view data = {});
// Same with an explicit (possibly lying) header length.
void WriteRawSafetensors(const std::string& path, uint64_t header_len, std::string_view header,
                         std::string_view data);

// {"weight_map": {tensor: file}}, plus the usual "metadata" object.
void WriteIndex(const std::string& path, const std::map<std::string, std::string>& weight_map);

void WriteFile(const std::string& path, std::string_view bytes);

// Payload encoders.
std::vector<uint8_t> F32Bytes(const std::vector<float>& values);
std::vector<uint8_t> Bf16Bytes(const std::vector<float>& values);  // round to nearest even
std::vector<uint8_t> U16Bytes(const std::vector<uint16_t>& bits);  // e.g. F16 bit patterns

// A fresh directory under ::testing::TempDir(), removed with its contents on destruction.
class ScopedTempDir {
 public:
  ScopedTempDir();
  ~ScopedTempDir();
  ScopedTempDir(const ScopedTempDir&) = delete;
  ScopedTempDir& operator=(const ScopedTempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string File(std::string_view name) const;  // path()/name

 private:
  std::string path_;
};

}  // namespace mla::test
