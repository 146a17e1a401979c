// This rank's weights on the device: the float32 ModelWeights the CPU loader
// reads (runtime/weights.h: FP8 already dequantised, already sliced for tensor
// parallelism) uploaded as BF16 GEMM operands, in one device allocation.
//
// Kept in FP32 (they are small and feed FP32 math): every RMSNorm weight, the
// router (gate) and its correction bias: the router logits are an FP32 GEMM
// over FP32 hidden states, so routing decisions see the CPU's inputs up to the
// BF16 rounding upstream of them. Everything else is rounded to nearest-even
// BF16 (exact for BF16 checkpoints; one rounding for FP8-dequantised and F16
// ones). W_UK^T is read out of kv_b directly (no transposed copy on the device).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/config.h"
#include "runtime/cuda/device_buffer.h"
#include "runtime/weights.h"

namespace mla::cuda {

struct DeviceMlp {
  int64_t inter = 0;                          // this rank's intermediate size
  const __nv_bfloat16* gate_up = nullptr;     // [2 * inter, hidden]: gate rows, then up rows
  const __nv_bfloat16* down = nullptr;        // [hidden, inter]
};

struct DeviceAttention {
  const __nv_bfloat16* q_a = nullptr;   // [q_lora, hidden] (null without q_lora_rank)
  const float* q_a_norm = nullptr;      // [q_lora]
  const __nv_bfloat16* q_b = nullptr;   // [heads * qk_head_dim, q_lora] or q_proj [heads * qk_head_dim, hidden]
  const __nv_bfloat16* kv_a = nullptr;  // [kv_lora + qk_rope, hidden]
  const float* kv_a_norm = nullptr;     // [kv_lora]
  const __nv_bfloat16* kv_b = nullptr;  // [heads * (qk_nope + v_head), kv_lora]: per head W_UK rows, then W_UV rows
  const __nv_bfloat16* o_proj = nullptr;  // [hidden, heads * v_head]
};

struct DeviceMoe {
  const float* router = nullptr;       // [n_routed_experts, hidden], FP32
  const float* router_bias = nullptr;  // [n_routed_experts] (noaux_tc only, else null)
  std::vector<DeviceMlp> experts;
  DeviceMlp shared;  // inter == 0 when there are no shared experts
  // UploadWeights lays the routed experts' gate_up matrices out one after
  // another at a uniform stride, then their down matrices, so that one launch
  // can run every expert (HeadGemmParams.w_head_stride): expert e's gate_up
  // is experts[0].gate_up + e * gate_up_stride, its down experts[0].down + e *
  // down_stride (BF16 elements). False where that does not hold.
  bool experts_strided = false;
  int64_t gate_up_stride = 0, down_stride = 0;
};

struct DeviceLayer {
  const float* input_norm = nullptr;  // [hidden]
  const float* post_norm = nullptr;   // [hidden]
  DeviceAttention attn;
  bool is_moe = false;
  DeviceMlp dense;
  DeviceMoe moe;
};

struct DeviceWeights {
  int64_t local_heads = 0;
  int64_t vocab_begin = 0;
  int64_t local_vocab = 0;
  const __nv_bfloat16* embed = nullptr;    // [local_vocab, hidden]
  const float* final_norm = nullptr;       // [hidden]
  const __nv_bfloat16* lm_head = nullptr;  // [local_vocab, hidden] (the embedding when tied)
  std::vector<DeviceLayer> layers;
  int64_t bytes = 0;     // device bytes held (with arena alignment)
  WeightBytes by_kind;   // the tensors' bytes by kind, as runtime/weights.h counts them
  DeviceArena arena;  // owns every pointer above
};

// Uploads `weights` (consumed: each host tensor is freed once it is on the
// device, so the host peak stays near the float32 model plus one tensor).
// Call with the target device current. Synchronous.
absl::StatusOr<DeviceWeights> UploadWeights(const ModelConfig& config, ModelWeights weights);

}  // namespace mla::cuda
