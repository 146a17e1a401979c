// A work item's timeline inside the tensor-core decode kernels
// (MlaDecodeParams.trace), for mla-bench-decode's --trace: where a launch's
// time goes, block by block, on hardware: the blocks' start skew, the wait for
// the kernel ahead (PDL), the first tile's latency, the streaming, the
// epilogue, the last-block merge, the tail. Plain C++: the benchmark reads the
// rows on the host (bench/mla_decode_trace_summary.h).
#pragma once

#include <cstdint>

namespace mla::cuda {

// The words of an item's row, [num_work_items][kMlaDecodeTraceWords] uint64,
// each written by the block's thread 0 as it passes that point. *Ns words are
// %globaltimer (ns, one clock for every SM); *Clk words are clock64 (the SM's
// cycles: finer, but per SM; a row's two ends in both clocks give its rate).
// A kernel that does not trace (the simple one) leaves the rows as they were.
// One more row, after the items' (so [num_work_items + 1] rows in all): the
// merge kernel's span where it runs (kernel_span.cuh: word kTraceStartNs its
// earliest block start, kTraceEndNs its latest block end; the caller sets
// them to UINT64_MAX and 0 first).
enum MlaDecodeTraceWord : int {
  kTraceStartNs,       // at entry
  kTraceEndNs,         // at exit
  kTraceStartClk,      // at entry
  kTraceReadyClk,      // past the wait for the kernel ahead (GridDependencyWait)
  kTraceFirstTileClk,  // the item's first tile (and its query) in shared memory
  kTraceLoopEndClk,    // the last tile's P V done
  kTraceWrittenClk,    // the output or partial written (before the last-block merge)
  kTraceEndClk,        // at exit (after the last-block merge)
  kTraceSm,            // %smid
  // Cycles thread 0 spent at the top of the loop for each tile after the
  // first: waiting for the tile's copies and for the other warps at the
  // barrier after them (the rest of the loop is the tiles' compute).
  kTraceTileWaitClk,
  kMlaDecodeTraceWords
};

}  // namespace mla::cuda
