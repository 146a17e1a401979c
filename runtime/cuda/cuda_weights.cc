#include "runtime/cuda/cuda_weights.h"

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/float_convert.h"
#include "runtime/cuda_status.h"

namespace mla::cuda {
namespace {

// Every host tensor to upload, laid out in one arena, then copied in order.
class Uploader {
 public:
  Uploader(DeviceArena& arena, WeightBytes& by_kind) : arena_(arena), by_kind_(by_kind) {}

  // The kind the following tensors count under (runtime/weights.h's kinds).
  void Kind(int64_t WeightBytes::*kind) { kind_ = kind; }

  void Bf16(std::vector<float>& host, const __nv_bfloat16** slot) {
    if (host.empty()) return;
    by_kind_.*kind_ += static_cast<int64_t>(host.size() * sizeof(uint16_t));
    entries_.push_back({&host, arena_.Add(host.size() * sizeof(uint16_t)), slot, nullptr});
  }
  void F32(std::vector<float>& host, const float** slot) {
    if (host.empty()) return;
    by_kind_.*kind_ += static_cast<int64_t>(host.size() * sizeof(float));
    entries_.push_back({&host, arena_.Add(host.size() * sizeof(float)), nullptr, slot});
  }

  // Allocates, then converts and copies each tensor, freeing its host copy.
  absl::Status Run() {
    if (absl::Status s = arena_.Allocate(); !s.ok()) return s;
    std::vector<uint16_t> staging;
    for (const Entry& e : entries_) {
      std::vector<float>& host = *e.host;
      void* dst = arena_.Pointer<unsigned char>(e.offset);
      if (e.bf16_slot != nullptr) {
        staging.resize(host.size());
        for (size_t i = 0; i < host.size(); ++i) staging[i] = cpu::FloatToBf16(host[i]);
        MLA_CUDA_RETURN_IF_ERROR(cudaMemcpy(dst, staging.data(), staging.size() * sizeof(uint16_t),
                                            cudaMemcpyHostToDevice));
        *e.bf16_slot = static_cast<const __nv_bfloat16*>(dst);
      } else {
        MLA_CUDA_RETURN_IF_ERROR(cudaMemcpy(dst, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice));
        *e.f32_slot = static_cast<const float*>(dst);
      }
      std::vector<float>().swap(host);  // the host copy is no longer needed
    }
    // A pageable cudaMemcpy may return before its DMA lands, and the model's
    // stream does not wait for the legacy default stream: wait here.
    return MLA_CUDA_STATUS(cudaDeviceSynchronize());
  }

 private:
  struct Entry {
    std::vector<float>* host;
    size_t offset;
    const __nv_bfloat16** bf16_slot;
    const float** f32_slot;
  };
  DeviceArena& arena_;
  WeightBytes& by_kind_;
  int64_t WeightBytes::*kind_ = &WeightBytes::replicated;
  std::vector<Entry> entries_;
};

void AddMlp(Uploader& up, MlpWeights& host, DeviceMlp& dev) {
  dev.inter = host.inter;
  up.Bf16(host.gate_up, &dev.gate_up);
  up.Bf16(host.down, &dev.down);
}

// The routed experts: every gate_up, then every down (DeviceMoe.experts_strided).
void AddExperts(Uploader& up, std::vector<MlpWeights>& host, std::vector<DeviceMlp>& dev) {
  dev.resize(host.size());
  for (size_t e = 0; e < host.size(); ++e) {
    dev[e].inter = host[e].inter;
    up.Bf16(host[e].gate_up, &dev[e].gate_up);
  }
  for (size_t e = 0; e < host.size(); ++e) up.Bf16(host[e].down, &dev[e].down);
}

// Whether expert e's matrices lie at e times one stride from expert 0's (after the upload).
void FindExpertStrides(DeviceMoe& moe) {
  const std::vector<DeviceMlp>& x = moe.experts;
  moe.experts_strided = false;
  if (x.empty() || x.front().gate_up == nullptr || x.front().down == nullptr) return;
  moe.gate_up_stride = x.size() > 1 ? x[1].gate_up - x[0].gate_up : 0;
  moe.down_stride = x.size() > 1 ? x[1].down - x[0].down : 0;
  for (size_t e = 0; e < x.size(); ++e) {
    const int64_t i = static_cast<int64_t>(e);
    if (x[e].inter != x[0].inter || x[e].gate_up != x[0].gate_up + i * moe.gate_up_stride ||
        x[e].down != x[0].down + i * moe.down_stride) {
      return;
    }
  }
  moe.experts_strided = true;
}

}  // namespace

absl::StatusOr<DeviceWeights> UploadWeights(const ModelConfig& config, ModelWeights weights) {
  DeviceWeights d;
  d.local_heads = weights.local_heads;
  d.vocab_begin = weights.vocab_begin;
  d.local_vocab = weights.local_vocab;
  if (static_cast<int64_t>(weights.layers.size()) != config.num_hidden_layers) {
    return absl::InvalidArgumentError(absl::StrCat("weights hold ", weights.layers.size(), " layers (expected ",
                                                   config.num_hidden_layers, ")"));
  }
  Uploader up(d.arena, d.by_kind);
  up.Kind(&WeightBytes::embeddings);
  up.Bf16(weights.embed, &d.embed);
  up.Kind(&WeightBytes::replicated);
  up.F32(weights.final_norm, &d.final_norm);
  // Tied embeddings: the loader copied embed into lm_head; one device copy serves both.
  const bool tied = config.tie_word_embeddings;
  up.Kind(&WeightBytes::embeddings);
  if (!tied) up.Bf16(weights.lm_head, &d.lm_head);
  d.layers.resize(weights.layers.size());
  for (size_t l = 0; l < weights.layers.size(); ++l) {
    LayerWeights& hw = weights.layers[l];
    DeviceLayer& dl = d.layers[l];
    up.Kind(&WeightBytes::replicated);
    up.F32(hw.input_norm, &dl.input_norm);
    up.F32(hw.post_norm, &dl.post_norm);
    AttentionWeights& a = hw.attn;
    up.Bf16(a.q_a, &dl.attn.q_a);
    up.F32(a.q_a_norm, &dl.attn.q_a_norm);
    up.Bf16(a.kv_a, &dl.attn.kv_a);
    up.F32(a.kv_a_norm, &dl.attn.kv_a_norm);
    up.Kind(&WeightBytes::attention);
    up.Bf16(a.q_b, &dl.attn.q_b);
    up.Bf16(a.kv_b, &dl.attn.kv_b);
    up.Bf16(a.o_proj, &dl.attn.o_proj);
    std::vector<float>().swap(a.w_uk_t);  // read out of kv_b on the device
    dl.is_moe = hw.is_moe;
    up.Kind(&WeightBytes::experts);
    if (hw.is_moe) {
      up.Kind(&WeightBytes::replicated);
      up.F32(hw.moe.router, &dl.moe.router);
      up.F32(hw.moe.router_bias, &dl.moe.router_bias);
      up.Kind(&WeightBytes::experts);
      AddExperts(up, hw.moe.experts, dl.moe.experts);
      AddMlp(up, hw.moe.shared, dl.moe.shared);
    } else {
      AddMlp(up, hw.dense, dl.dense);
    }
  }
  if (absl::Status s = up.Run(); !s.ok()) return s;
  for (DeviceLayer& l : d.layers) {
    if (l.is_moe) FindExpertStrides(l.moe);
  }
  if (tied) d.lm_head = d.embed;
  d.bytes = static_cast<int64_t>(d.arena.allocated_bytes());
  return d;
}

}  // namespace mla::cuda
