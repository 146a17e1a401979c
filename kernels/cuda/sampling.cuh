// Token sampling on the GPU, one block per row of logits, choosing exactly the
// token runtime/sampler.cc SampleToken chooses: greedy argmax (ties to the
// lowest id); else candidates in descending logit order (ties to the lower id),
// the top_k cut, probabilities exp((l - max) / temperature) in double, the
// nucleus cut (the shortest prefix whose normalised mass reaches top_p), and the
// draw CounterUniform(seed, step) * mass walked along that order. No sort: each
// cut is found by a radix select over (logit, id) keys. Logits must be free of NaN.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace mla::cuda {

struct ArgmaxParams {
  const float* logits = nullptr;  // [num_rows, vocab], rows ld floats apart
  int32_t* token_ids = nullptr;   // [num_rows] out
  int64_t num_rows = 0;
  int64_t vocab = 0;
  int64_t ld = 0;
};
cudaError_t LaunchArgmax(const ArgmaxParams& p, cudaStream_t stream);

struct SampleParams {
  const float* logits = nullptr;       // [num_rows, vocab], rows ld floats apart
  const float* temperature = nullptr;  // [num_rows]: 0 = greedy
  const int32_t* top_k = nullptr;      // [num_rows]: 0 = no cut
  const float* top_p = nullptr;        // [num_rows]: in (0, 1]; 1 = no cut
  const uint64_t* seed = nullptr;      // [num_rows]
  const uint64_t* step = nullptr;      // [num_rows]: the request's generated-token index
  int32_t* token_ids = nullptr;        // [num_rows] out
  int64_t num_rows = 0;
  int64_t vocab = 0;
  int64_t ld = 0;
};
cudaError_t LaunchSample(const SampleParams& p, cudaStream_t stream);

// out[i] = CounterUniform(seed[i], step[i]) computed on the device (pins the
// device hash to the host one in tests).
struct CounterUniformParams {
  const uint64_t* seed = nullptr;  // [n]
  const uint64_t* step = nullptr;  // [n]
  double* out = nullptr;           // [n]
  int64_t n = 0;
};
cudaError_t LaunchCounterUniform(const CounterUniformParams& p, cudaStream_t stream);

}  // namespace mla::cuda
