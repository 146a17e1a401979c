#include "bench/mla_decode_trace_summary.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <set>
#include <vector>

#include "kernels/cuda/mla_decode_trace.h"

namespace mla::bench {
namespace {

using cuda::kMlaDecodeTraceWords;

double Median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

MlaDecodeTracePhase Phase(const std::vector<double>& us) {
  MlaDecodeTracePhase p;
  p.count = static_cast<int>(us.size());
  p.median_us = Median(us);
  p.max_us = us.empty() ? 0.0 : *std::max_element(us.begin(), us.end());
  return p;
}

}  // namespace

MlaDecodeTraceSummary SummarizeMlaDecodeTrace(std::span<const uint64_t> trace,
                                              std::span<const cuda::MlaDecodeWorkItem> items, int latent) {
  using namespace cuda;  // the MlaDecodeTraceWord names
  MlaDecodeTraceSummary s;
  s.items = static_cast<int>(items.size());
  if (trace.size() < items.size() * kMlaDecodeTraceWords) return s;
  // The rows with every stamp in order (an empty item has no first tile).
  std::vector<size_t> rows;
  std::vector<double> rates;  // clock64 cycles per ns, per row
  for (size_t i = 0; i < items.size(); ++i) {
    const uint64_t* r = &trace[i * kMlaDecodeTraceWords];
    const bool empty = items[i].kv_end <= items[i].kv_begin;
    const uint64_t first = empty ? r[kTraceReadyClk] : r[kTraceFirstTileClk];
    const uint64_t loop_end = empty ? r[kTraceReadyClk] : r[kTraceLoopEndClk];
    if (r[kTraceStartNs] == 0 || r[kTraceEndNs] < r[kTraceStartNs] || r[kTraceStartClk] == 0 ||
        r[kTraceReadyClk] < r[kTraceStartClk] || first < r[kTraceReadyClk] || loop_end < first ||
        r[kTraceWrittenClk] < loop_end || r[kTraceEndClk] < r[kTraceWrittenClk]) {
      continue;
    }
    rows.push_back(i);
    // %globaltimer may tick coarsely (a microsecond on some parts): rows
    // shorter than 2 us give no rate of their own.
    const uint64_t ns = r[kTraceEndNs] - r[kTraceStartNs];
    if (ns >= 2000) rates.push_back(static_cast<double>(r[kTraceEndClk] - r[kTraceStartClk]) / ns);
  }
  s.traced = static_cast<int>(rows.size());
  if (rows.empty()) return s;
  const double rate = rates.empty() ? 1.0 : Median(rates);  // cycles per ns
  s.clock_ghz = rate;
  auto us = [rate](uint64_t from, uint64_t to) { return static_cast<double>(to - from) / rate / 1e3; };

  std::set<uint64_t> sms;
  std::vector<double> wait, first_tile, tile, epilogue, merge, ends, tile_wait, wait_share;
  uint64_t first_start = UINT64_MAX, last_start = 0, last_end = 0;
  double first_tile_ns = 1e300, last_loop_end_ns = 0, loop_bytes = 0;
  for (size_t i : rows) {
    const uint64_t* r = &trace[i * kMlaDecodeTraceWords];
    const MlaDecodeWorkItem& item = items[i];
    sms.insert(r[kTraceSm]);
    first_start = std::min(first_start, r[kTraceStartNs]);
    last_start = std::max(last_start, r[kTraceStartNs]);
    last_end = std::max(last_end, r[kTraceEndNs]);
    ends.push_back(static_cast<double>(r[kTraceEndNs]));
    wait.push_back(us(r[kTraceStartClk], r[kTraceReadyClk]));
    if (item.kv_end > item.kv_begin) {
      const int tiles = (item.kv_end - item.kv_begin + kMlaDecodeTileTokens - 1) / kMlaDecodeTileTokens;
      first_tile.push_back(us(r[kTraceReadyClk], r[kTraceFirstTileClk]));
      tile.push_back(us(r[kTraceFirstTileClk], r[kTraceLoopEndClk]) / tiles);
      if (tiles > 1) {
        tile_wait.push_back(us(0, r[kTraceTileWaitClk]) / (tiles - 1));
        const uint64_t loop = r[kTraceLoopEndClk] - r[kTraceFirstTileClk];
        wait_share.push_back(loop > 0 ? static_cast<double>(r[kTraceTileWaitClk]) / loop : 0.0);
      }
      epilogue.push_back(us(r[kTraceLoopEndClk], r[kTraceWrittenClk]));
      // The loop on the launch's timeline: the row's start plus its clock's cycles.
      const double start_ns = static_cast<double>(r[kTraceStartNs]);
      first_tile_ns = std::min(first_tile_ns, start_ns + us(r[kTraceStartClk], r[kTraceFirstTileClk]) * 1e3);
      last_loop_end_ns = std::max(last_loop_end_ns, start_ns + us(r[kTraceStartClk], r[kTraceLoopEndClk]) * 1e3);
      loop_bytes += 2.0 * latent * (item.kv_end - item.kv_begin);
    } else {
      epilogue.push_back(us(r[kTraceReadyClk], r[kTraceWrittenClk]));
    }
    merge.push_back(us(r[kTraceWrittenClk], r[kTraceEndClk]));
  }
  s.sms = static_cast<int>(sms.size());
  s.start_skew_us = static_cast<double>(last_start - first_start) / 1e3;
  s.span_us = static_cast<double>(last_end - first_start) / 1e3;
  s.end_skew_us = (static_cast<double>(last_end) - Median(ends)) / 1e3;
  s.wait = Phase(wait);
  s.first_tile = Phase(first_tile);
  s.tile = Phase(tile);
  s.epilogue = Phase(epilogue);
  s.merge = Phase(merge);
  s.tile_wait = Phase(tile_wait);
  s.tile_wait_share = Median(wait_share);
  if (last_loop_end_ns > first_tile_ns) s.stream_gbps = loop_bytes / (last_loop_end_ns - first_tile_ns);
  return s;
}

std::string MlaDecodeTraceText(const MlaDecodeTraceSummary& s) {
  char buf[640];
  if (s.traced == 0) {
    std::snprintf(buf, sizeof(buf), "0/%d items traced (a kernel that does not trace, or rows out of order)",
                  s.items);
    return buf;
  }
  char waiting[96] = "no item of two tiles: no waits";
  if (s.tile_wait.count > 0) {
    std::snprintf(waiting, sizeof(waiting), "waiting %.3f/%.3f, %.0f%% of the loop", s.tile_wait.median_us,
                  s.tile_wait.max_us, 100.0 * s.tile_wait_share);
  }
  std::snprintf(buf, sizeof(buf),
                "%d/%d items traced on %d SMs at %.3g GHz; us, median/max: start skew %.2f, wait %.2f/%.2f, first "
                "tile %.2f/%.2f, per tile %.3f/%.3f (%s), epilogue %.2f/%.2f, "
                "merge %.2f/%.2f, end skew %.2f, span %.1f; streaming %.0f GB/s",
                s.traced, s.items, s.sms, s.clock_ghz, s.start_skew_us, s.wait.median_us, s.wait.max_us,
                s.first_tile.median_us, s.first_tile.max_us, s.tile.median_us, s.tile.max_us, waiting, s.epilogue.median_us,
                s.epilogue.max_us, s.merge.median_us, s.merge.max_us, s.end_skew_us, s.span_us, s.stream_gbps);
  return buf;
}

std::string MlaDecodeTraceJson(const MlaDecodeTraceSummary& s) {
  char buf[800];
  auto pair = [](const MlaDecodeTracePhase& p) {  // null where no item has the phase
    char b[64];
    std::snprintf(b, sizeof(b), "[%.3f, %.3f]", p.median_us, p.max_us);
    return p.count > 0 ? std::string(b) : std::string("null");
  };
  char share[32] = "null";
  if (s.tile_wait.count > 0) std::snprintf(share, sizeof(share), "%.3f", s.tile_wait_share);
  std::snprintf(buf, sizeof(buf),
                "{\"items\": %d, \"traced\": %d, \"sms\": %d, \"clock_ghz\": %.4f, \"start_skew_us\": %.3f, "
                "\"span_us\": %.3f, \"end_skew_us\": %.3f, \"wait_us\": %s, \"first_tile_us\": %s, \"tile_us\": %s, "
                "\"tile_wait_us\": %s, \"tile_wait_share\": %s, \"epilogue_us\": %s, \"merge_us\": %s, "
                "\"stream_gbps\": %.1f}",
                s.items, s.traced, s.sms, s.clock_ghz, s.start_skew_us, s.span_us, s.end_skew_us,
                pair(s.wait).c_str(), pair(s.first_tile).c_str(), pair(s.tile).c_str(), pair(s.tile_wait).c_str(),
                share, pair(s.epilogue).c_str(),
                pair(s.merge).c_str(), s.stream_gbps);
  return buf;
}

KernelSpan MlaDecodeSpan(std::span<const uint64_t> trace, std::span<const cuda::MlaDecodeWorkItem> items) {
  KernelSpan k;
  if (trace.size() < items.size() * kMlaDecodeTraceWords) return k;
  uint64_t start = UINT64_MAX, end = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    const uint64_t* r = &trace[i * kMlaDecodeTraceWords];
    if (r[cuda::kTraceStartNs] == 0 || r[cuda::kTraceEndNs] < r[cuda::kTraceStartNs]) continue;
    start = std::min(start, r[cuda::kTraceStartNs]);
    end = std::max(end, r[cuda::kTraceEndNs]);
  }
  if (end != 0) k = {start, end};
  return k;
}

KernelSpan MlaDecodeMergeSpan(std::span<const uint64_t> trace, std::span<const cuda::MlaDecodeWorkItem> items) {
  if (trace.size() < (items.size() + 1) * kMlaDecodeTraceWords) return {};
  const uint64_t* r = &trace[items.size() * kMlaDecodeTraceWords];
  return {r[cuda::kTraceStartNs], r[cuda::kTraceEndNs]};
}

namespace {

struct NamedSpan {
  const char* name;  // in the text line
  const char* key;   // in the JSON object
  const KernelSpan* span;
};

std::array<NamedSpan, 4> Named(const MlaDecodePipelineSpans& p) {
  return {{{"W_UK GEMM", "absorb_us", &p.absorb},
           {"decode", "decode_us", &p.decode},
           {"merge kernel", "merge_us", &p.merge},
           {"W_UV GEMM", "unabsorb_us", &p.unabsorb}}};
}

uint64_t Origin(const MlaDecodePipelineSpans& p) {
  uint64_t origin = UINT64_MAX;
  for (const NamedSpan& n : Named(p)) {
    if (n.span->traced()) origin = std::min(origin, n.span->start_ns);
  }
  return origin;
}

}  // namespace

std::string MlaDecodePipelineText(const MlaDecodePipelineSpans& p) {
  const uint64_t origin = Origin(p);
  if (origin == UINT64_MAX) return "no kernel traced";
  std::string text = "us from the first start:";
  uint64_t last = 0;
  for (const NamedSpan& n : Named(p)) {
    char b[96];
    if (n.span->traced()) {
      std::snprintf(b, sizeof(b), " %s %.1f-%.1f,", n.name, (n.span->start_ns - origin) / 1e3,
                    (n.span->end_ns - origin) / 1e3);
      last = std::max(last, n.span->end_ns);
    } else {
      std::snprintf(b, sizeof(b), " %s -,", n.name);
    }
    text += b;
  }
  char b[64];
  std::snprintf(b, sizeof(b), " span %.1f", (last - origin) / 1e3);
  return text + b + " (-: not run, or cuBLAS's)";
}

std::string MlaDecodePipelineJson(const MlaDecodePipelineSpans& p) {
  const uint64_t origin = Origin(p);
  std::string json;
  for (const NamedSpan& n : Named(p)) {
    char b[96];
    const char* sep = json.empty() ? "{" : ", ";
    if (n.span->traced() && origin != UINT64_MAX) {
      std::snprintf(b, sizeof(b), "%s\"%s\": [%.3f, %.3f]", sep, n.key, (n.span->start_ns - origin) / 1e3,
                    (n.span->end_ns - origin) / 1e3);
    } else {
      std::snprintf(b, sizeof(b), "%s\"%s\": null", sep, n.key);
    }
    json += b;
  }
  return json + "}";
}

}  // namespace mla::bench
