// What a traced decode launch's rows (kernels/cuda/mla_decode_trace.h) say,
// summed up for mla-bench-decode --trace: per phase of a work item its median
// and largest time, and on the launch's one timeline (%globaltimer) the
// blocks' start skew, the tail and the streaming rate. Plain C++.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "kernels/cuda/mla_decode_plan.h"

namespace mla::bench {

struct MlaDecodeTracePhase {
  double median_us = 0.0, max_us = 0.0;
  int count = 0;  // items that have this phase
};

struct MlaDecodeTraceSummary {
  int items = 0;   // rows
  int traced = 0;  // rows with every stamp, in order
  int sms = 0;     // distinct SMs of those
  double clock_ghz = 0.0;  // the rows' median clock64 rate
  // On the launch's timeline, in us: the last block's start after the first's;
  // the first start to the last end; the last end after the median end.
  double start_skew_us = 0.0, span_us = 0.0, end_skew_us = 0.0;
  // Per item: entry to past the wait for the kernel ahead; then to the first
  // tile in shared memory; then the loop over the tiles, per tile (items with
  // tiles); the output or partial written; the last-block merge (near 0 for
  // the items that do not merge).
  MlaDecodeTracePhase wait, first_tile, tile, epilogue, merge;
  // Per tile after the first (items of two tiles or more): thread 0's time at
  // the loop's top, waiting for the tile and for the other warps; and that
  // wait's share of the item's loop (a memory-bound loop waits most of it, an
  // issue-bound one little), median over the items.
  MlaDecodeTracePhase tile_wait;
  double tile_wait_share = 0.0;
  // The cache bytes the items' loops read, over the time from the first
  // item's first tile in to the last loop's end (GB/s, 1e9 bytes a second).
  double stream_gbps = 0.0;
};

// trace: the launch's rows, items.size() x kMlaDecodeTraceWords; items: its
// plan's work items (their positions); latent: BF16 values a position.
MlaDecodeTraceSummary SummarizeMlaDecodeTrace(std::span<const uint64_t> trace,
                                              std::span<const cuda::MlaDecodeWorkItem> items, int latent);

// One line of text ("N/M items traced on K SMs, ..."), and one JSON object.
std::string MlaDecodeTraceText(const MlaDecodeTraceSummary& s);
std::string MlaDecodeTraceJson(const MlaDecodeTraceSummary& s);

// A kernel of the traced pipeline on the GPU's one clock (%globaltimer, ns):
// its earliest block start and latest block end (kernel_span.cuh), end 0
// where it did not run or was not traced (cuBLAS's GEMMs).
struct KernelSpan {
  uint64_t start_ns = 0, end_ns = 0;
  bool traced() const { return end_ns != 0 && end_ns >= start_ns; }
};
struct MlaDecodePipelineSpans {
  KernelSpan absorb, decode, merge, unabsorb;  // W_UK GEMM, decode, merge kernel, W_UV GEMM
};

// The decode kernel's span from its traced rows, and the merge kernel's from
// the row after them (trace: items.size() + 1 rows).
KernelSpan MlaDecodeSpan(std::span<const uint64_t> trace, std::span<const cuda::MlaDecodeWorkItem> items);
KernelSpan MlaDecodeMergeSpan(std::span<const uint64_t> trace, std::span<const cuda::MlaDecodeWorkItem> items);

// Each kernel's span in us from the earliest traced start ("W_UK GEMM
// 0.0-4.1, decode 3.0-84.2, ..."), as a line and as a JSON object (null
// spans where not traced): the gaps and overlaps between the kernels, which
// the pipeline's fixed cost is made of.
std::string MlaDecodePipelineText(const MlaDecodePipelineSpans& p);
std::string MlaDecodePipelineJson(const MlaDecodePipelineSpans& p);

}  // namespace mla::bench
