// mla-bench-decode --trace's summary (bench/mla_decode_trace_summary.h) on
// rows made by hand: known phases, clocks at 2 GHz, one row out of order.
#include "bench/mla_decode_trace_summary.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cuda/mla_decode_trace.h"

namespace mla::bench {
namespace {

using cuda::MlaDecodeWorkItem;

// A row of an item starting at start_ns on SM `sm`, its phases in ns (the SM
// clock at 2 cycles a ns, from an arbitrary origin), tile_wait of its loop
// spent waiting.
std::vector<uint64_t> Row(uint64_t start_ns, uint64_t sm, uint64_t wait, uint64_t first, uint64_t loop,
                          uint64_t epilogue, uint64_t merge, uint64_t tile_wait = 0) {
  using namespace cuda;
  std::vector<uint64_t> r(kMlaDecodeTraceWords, 0);
  const uint64_t clk0 = 1000000 + 17 * sm;
  r[kTraceStartNs] = start_ns;
  r[kTraceStartClk] = clk0;
  r[kTraceReadyClk] = clk0 + 2 * wait;
  r[kTraceFirstTileClk] = r[kTraceReadyClk] + 2 * first;
  r[kTraceLoopEndClk] = r[kTraceFirstTileClk] + 2 * loop;
  r[kTraceWrittenClk] = r[kTraceLoopEndClk] + 2 * epilogue;
  r[kTraceEndClk] = r[kTraceWrittenClk] + 2 * merge;
  r[kTraceEndNs] = start_ns + (r[kTraceEndClk] - clk0) / 2;
  r[kTraceSm] = sm;
  r[kTraceTileWaitClk] = 2 * tile_wait;
  return r;
}

TEST(MlaDecodeTraceSummaryTest, PhasesAndTimeline) {
  // Three items of 4, 4 and 2 tiles (the last one's second tile partial), the
  // third merging; a fourth whose rows are out of order (not traced).
  const std::vector<MlaDecodeWorkItem> items = {
      {0, 0, 0, 256, 0, 0}, {0, 0, 256, 512, 1, 0}, {1, 0, 0, 100, -1, -1}, {2, 0, 0, 64, -1, -1}};
  std::vector<uint64_t> trace;
  for (const auto& r : {Row(1000000, 3, 500, 2000, 8000, 400, 100, 6000), Row(1001000, 4, 700, 3000, 10000, 600, 2100, 9000),
                        Row(1000500, 4, 300, 1000, 4000, 200, 0, 1000), Row(1000000, 5, 0, 0, 0, 0, 0)}) {
    trace.insert(trace.end(), r.begin(), r.end());
  }
  // Item 3: the loop's end before its first tile.
  trace[3 * cuda::kMlaDecodeTraceWords + cuda::kTraceLoopEndClk] = 1;
  const MlaDecodeTraceSummary s = SummarizeMlaDecodeTrace(trace, items, 576);
  EXPECT_EQ(s.items, 4);
  EXPECT_EQ(s.traced, 3);
  EXPECT_EQ(s.sms, 2);
  EXPECT_DOUBLE_EQ(s.clock_ghz, 2.0);
  EXPECT_DOUBLE_EQ(s.start_skew_us, 1.0);
  // Ends: 1000000 + 11000, 1001000 + 16400, 1000500 + 5500 ns.
  EXPECT_DOUBLE_EQ(s.span_us, 17.4);
  EXPECT_DOUBLE_EQ(s.end_skew_us, (1017400.0 - 1011000.0) / 1e3);
  EXPECT_DOUBLE_EQ(s.wait.median_us, 0.5);
  EXPECT_DOUBLE_EQ(s.wait.max_us, 0.7);
  EXPECT_DOUBLE_EQ(s.first_tile.median_us, 2.0);
  EXPECT_DOUBLE_EQ(s.first_tile.max_us, 3.0);
  EXPECT_EQ(s.tile.count, 3);
  EXPECT_DOUBLE_EQ(s.tile.median_us, 2.0);  // 8000 / 4, 10000 / 4, 4000 / 2 ns
  EXPECT_DOUBLE_EQ(s.tile.max_us, 2.5);
  // Waits per tile after the first: 6000 / 3, 9000 / 3, 1000 / 1 ns; shares 0.75, 0.9, 0.25.
  EXPECT_EQ(s.tile_wait.count, 3);
  EXPECT_DOUBLE_EQ(s.tile_wait.median_us, 2.0);
  EXPECT_DOUBLE_EQ(s.tile_wait.max_us, 3.0);
  EXPECT_DOUBLE_EQ(s.tile_wait_share, 0.75);
  EXPECT_DOUBLE_EQ(s.epilogue.median_us, 0.4);
  EXPECT_DOUBLE_EQ(s.merge.max_us, 2.1);
  EXPECT_DOUBLE_EQ(s.merge.median_us, 0.1);
  // Loops from 1000500 + 1300 (item 2's first tile) to 1001000 + 13700 ns,
  // over 612 positions of 1152 bytes.
  EXPECT_NEAR(s.stream_gbps, 612.0 * 1152 / (1014700.0 - 1001800.0), 1e-9);
  const std::string text = MlaDecodeTraceText(s);
  EXPECT_NE(text.find("3/4 items traced on 2 SMs at 2 GHz"), std::string::npos) << text;
  EXPECT_NE(text.find("per tile 2.000/2.500 (waiting 2.000/3.000, 75% of the loop)"), std::string::npos) << text;
  const std::string json = MlaDecodeTraceJson(s);
  EXPECT_NE(json.find("\"traced\": 3"), std::string::npos) << json;
  EXPECT_NE(json.find("\"tile_us\": [2.000, 2.500]"), std::string::npos) << json;
}

TEST(MlaDecodeTraceSummaryTest, UntracedRowsSayNone) {
  const std::vector<MlaDecodeWorkItem> items = {{0, 0, 0, 64, -1, -1}};
  const std::vector<uint64_t> zeros(cuda::kMlaDecodeTraceWords, 0);
  const MlaDecodeTraceSummary s = SummarizeMlaDecodeTrace(zeros, items, 576);
  EXPECT_EQ(s.traced, 0);
  EXPECT_EQ(MlaDecodeTraceText(s).rfind("0/1 items traced", 0), 0u);
  // Too few words for the items: nothing is read.
  EXPECT_EQ(SummarizeMlaDecodeTrace(std::span<const uint64_t>(zeros).first(3), items, 576).traced, 0);
}

// The pipeline's kernels on one clock: the decode's span from its rows, the
// merge kernel's from the row after them; untraced spans as "-" and null.
TEST(MlaDecodeTraceSummaryTest, PipelineSpans) {
  using namespace cuda;
  const std::vector<MlaDecodeWorkItem> items = {{0, 0, 0, 64, 0, 0}, {0, 0, 64, 128, 1, 0}};
  std::vector<uint64_t> trace((items.size() + 1) * kMlaDecodeTraceWords, 0);
  trace[kTraceStartNs] = 5000;
  trace[kTraceEndNs] = 9000;
  trace[kMlaDecodeTraceWords + kTraceStartNs] = 4500;
  trace[kMlaDecodeTraceWords + kTraceEndNs] = 9500;
  trace[2 * kMlaDecodeTraceWords + kTraceStartNs] = 10000;  // the merge kernel
  trace[2 * kMlaDecodeTraceWords + kTraceEndNs] = 11000;
  MlaDecodePipelineSpans p;
  p.absorb = {1000, 4000};
  p.decode = MlaDecodeSpan(trace, items);
  p.merge = MlaDecodeMergeSpan(trace, items);
  EXPECT_EQ(p.decode.start_ns, 4500u);
  EXPECT_EQ(p.decode.end_ns, 9500u);
  EXPECT_EQ(p.merge.start_ns, 10000u);
  EXPECT_FALSE(p.unabsorb.traced());
  EXPECT_EQ(MlaDecodePipelineText(p),
            "us from the first start: W_UK GEMM 0.0-3.0, decode 3.5-8.5, merge kernel 9.0-10.0, W_UV GEMM -, span "
            "10.0 (-: not run, or cuBLAS's)");
  EXPECT_EQ(MlaDecodePipelineJson(p),
            "{\"absorb_us\": [0.000, 3.000], \"decode_us\": [3.500, 8.500], \"merge_us\": [9.000, 10.000], "
            "\"unabsorb_us\": null}");
  // A merge row left as the caller set it ({UINT64_MAX, 0}: the last blocks merged): not traced.
  trace[2 * kMlaDecodeTraceWords + kTraceStartNs] = UINT64_MAX;
  trace[2 * kMlaDecodeTraceWords + kTraceEndNs] = 0;
  EXPECT_FALSE(MlaDecodeMergeSpan(trace, items).traced());
  EXPECT_EQ(MlaDecodePipelineText(MlaDecodePipelineSpans{}), "no kernel traced");
}

}  // namespace
}  // namespace mla::bench
