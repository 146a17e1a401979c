#include "tests/unit/safetensors_writer.h"

#include <stdlib.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "gtest/gtest.h"
#include "kernels/cpu/float_convert.h"
#include "nlohmann/json.hpp"

namespace mla::test {

void WriteFile(const std::string& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) ADD_FAILURE() << "cannot write " << path;
}

void WriteRawSafetensors(const std::string& path, uint64_t header_len, std::string_view header,
                         std::string_view data) {
  std::string bytes(sizeof header_len, '\0');
  for (size_t i = 0; i < sizeof header_len; ++i) {
    bytes[i] = static_cast<char>(header_len >> (8 * i));  // little-endian
  }
  bytes.append(header).append(data);
  WriteFile(path, bytes);
}

void WriteRawSafetensors(const std::string& path, std::string_view header, std::string_view data) {
  WriteRawSafetensors(path, header.size(), header, data);
}

void WriteSafetensors(const std::string& path, const std::vector<TensorSpec>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string data;
  for (const TensorSpec& t : tensors) {
    const size_t begin = data.size();
    data.append(reinterpret_cast<const char*>(t.bytes.data()), t.bytes.size());
    header[t.name] = {
        {"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {begin, data.size()}}};
  }
  std::string text = header.dump();
  text.resize((text.size() + 7) / 8 * 8, ' ');
  WriteRawSafetensors(path, text, data);
}

void WriteIndex(const std::string& path, const std::map<std::string, std::string>& weight_map) {
  nlohmann::json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}};
  WriteFile(path, index.dump(2));
}

std::vector<uint8_t> F32Bytes(const std::vector<float>& values) {
  std::vector<uint8_t> bytes(values.size() * sizeof(float));
  if (!values.empty()) std::memcpy(bytes.data(), values.data(), bytes.size());
  return bytes;
}

std::vector<uint8_t> U16Bytes(const std::vector<uint16_t>& bits) {
  std::vector<uint8_t> bytes;
  for (uint16_t b : bits) {
    bytes.push_back(static_cast<uint8_t>(b & 0xff));
    bytes.push_back(static_cast<uint8_t>(b >> 8));
  }
  return bytes;
}

std::vector<uint8_t> Bf16Bytes(const std::vector<float>& values) {
  std::vector<uint16_t> bits;
  for (float v : values) bits.push_back(cpu::FloatToBf16(v));
  return U16Bytes(bits);
}

ScopedTempDir::ScopedTempDir() {
  std::string pattern = ::testing::TempDir();
  if (!pattern.empty() && pattern.back() != '/') pattern += '/';
  pattern += "mla_test_XXXXXX";
  if (::mkdtemp(pattern.data()) == nullptr) {
    ADD_FAILURE() << "mkdtemp " << pattern << ": " << std::strerror(errno);
  }
  path_ = pattern;
}

ScopedTempDir::~ScopedTempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string ScopedTempDir::File(std::string_view name) const {
  return path_ + "/" + std::string(name);
}

}  // namespace mla::test
