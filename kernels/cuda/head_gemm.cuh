// The per-head GEMMs around MLA's absorbed decode attention (DESIGN.md
// section 2): q_latent = q_nope W_UK per head before it, out = o_latent W_UV^T
// per head after it. Each is `heads` small GEMMs with M = the decoding
// sequences (1 to a few hundred), and cuBLAS's strided-batched GEMMs took 19
// us for the pair at 16 heads and 64 sequences on an H200 (bench/RESULTS.md,
// "gemm ms"), where reading the weights (4 MiB) takes about 1 us. This kernel is one launch of
// 32 x BN output tiles of every head (mma.sync BF16, FP32 accumulation, BF16
// or FP32 out), sized so that small M still fills the SMs, each block requesting all
// of its k at once up to k = 512 (one memory latency, not one a k-step: the
// math is tiny). Measured on an H200, before that last change
// (session 5): 0.017-0.018 ms for the pair at 16 heads against cuBLAS's
// 0.024-0.029 timed alone, but no change in the whole decode pipeline's time,
// and slower at 64 sequences x 128 heads; so the CUDA model keeps cuBLAS.
// The same kernel runs the routed experts' GEMMs grouped on the device
// (HeadGemmParams.group_rows: experts as heads, each over its own rows), so
// that a MoE layer needs no expert counts on the host.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace mla::cuda {

// out[m, h, n] = sum_k x[m, h, k] W_h(k, n) for m < rows, h < heads, n < n, k < k.
// Element (m, h, k) of x lies at x + m * x_ld + h * x_head_stride + k, and
// (m, h, n) of out at out + m * out_ld + h * out_head_stride + n. W_h(k, n) is
// w[h * w_head_stride + k * w_ld + n] when w_is_k_by_n (W_UK read out of
// kv_b), else w[h * w_head_stride + n * w_ld + k] (W_UV: a linear layer's [n, k]).
struct HeadGemmParams {
  const __nv_bfloat16* x = nullptr;
  int64_t x_ld = 0, x_head_stride = 0;
  const __nv_bfloat16* w = nullptr;
  int64_t w_ld = 0, w_head_stride = 0;
  bool w_is_k_by_n = false;
  __nv_bfloat16* out = nullptr;
  // FP32 output instead (out null): the MoE down projection, whose outputs
  // are summed in FP32.
  float* out_f32 = nullptr;
  int64_t out_ld = 0, out_head_stride = 0;
  int64_t rows = 0;  // M (grouped: the most rows any head has)
  int n = 0, k = 0, heads = 0;
  // Grouped rows (the routed experts as heads, over rows grouped by expert:
  // moe_dispatch.cuh): when set (device, [heads + 1], which the kernels ahead
  // of this one in the stream may write), head h computes rows [group_rows[h],
  // group_rows[h + 1]) of x and out, that is x + r * x_ld and out + r * out_ld
  // for row r (x_head_stride and out_head_stride must be 0), and at most
  // `rows` of them (the grid's size: more are not computed). The blocks of a
  // head with fewer rows than theirs exit before reading anything else.
  const int32_t* group_rows = nullptr;
  // Programmatic dependent launch (launch.cuh's LaunchKernelPdl): the kernel
  // may start while the one ahead of it in the stream finishes, and requests
  // its tiles of w before waiting for it (x after). So with pdl, w must not be
  // written by the kernels ahead of this one in the stream (model weights).
  bool pdl = false;
  // The launch's span (kernel_span.cuh: {earliest block start, latest block
  // end} in %globaltimer ns, set to {UINT64_MAX, 0} by the caller), for
  // mla-bench-decode --trace; null (the default): none.
  uint64_t* span = nullptr;
};

// Whether LaunchHeadGemm takes these operands: n and k multiples of 8, every
// leading dimension and head stride a multiple of 8 elements and x, w and the
// one output (out or out_f32) 16-byte aligned (16-byte copies); grouped, no x
// or out head strides. Otherwise use cuBLAS.
bool HeadGemmTakes(const HeadGemmParams& p);

// cudaErrorInvalidValue where !HeadGemmTakes. rows 0 launches nothing.
cudaError_t LaunchHeadGemm(const HeadGemmParams& p, cudaStream_t stream);

}  // namespace mla::cuda
