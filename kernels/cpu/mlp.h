#pragma once

#include <cstdint>

namespace mla::cpu {

// SiLU-gated product of a fused gate/up projection:
//   gate_up: [rows, 2 * inter] (gate in the first half, up in the second)
//   out:     [rows, inter] = silu(gate) * up
void SiluMul(const float* gate_up, int64_t rows, int64_t inter, float* out);

// y[i] += x[i] for n values.
void AddInPlace(float* y, const float* x, int64_t n);

}  // namespace mla::cpu
