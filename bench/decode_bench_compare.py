"""Joins mla-bench-decode's JSON lines with the PyTorch baseline's
(../shared/bench/mla_decode_torch_baseline.py), both run in the same call on the
same card, and prints one table with the issue's targets:
  - at least 70% of the baseline's measured copy bandwidth on the 16-head shapes,
  - at least 2x faster than the PyTorch baseline on every shape.
Both are judged on "ms", timed as the baseline times itself (the GPU idle at
the start event). "queued ms" and its "% copy" (the GPU busy at the start
event: no host launch latency in the time) stand beside it for reference.

    python3 decode_bench_compare.py OURS.jsonl TORCH.jsonl

Exit status 0 whatever the numbers (a benchmark, not a test); 2 when an input is
missing or unreadable.
"""
import json
import sys


def json_rows(path):
    """The per-shape JSON objects of a benchmark log, in order (other lines skipped)."""
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            obj = json.loads(line)
            if "batch" in obj:  # the baseline's closing summary has no "batch"
                yield obj


def shape_of(obj):
    return (obj["batch"], obj["context"], obj["heads"])


def read_rows(path):
    return {shape_of(obj): obj for obj in json_rows(path)}


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        ours, torch = read_rows(sys.argv[1]), read_rows(sys.argv[2])
    except (OSError, ValueError) as e:
        print(f"decode_bench_compare: {e}", file=sys.stderr)
        return 2
    print(f"{'BxLxH':<14} {'ours ms':>9} {'torch ms':>9} {'speedup':>8} {'ours GB/s':>10} "
          f"{'copy GB/s':>10} {'% copy':>7} {'TF/s':>6} {'queued ms':>9} {'% copy':>7}  targets")
    for key in sorted(ours, key=lambda k: (k[2], k[0], k[1])):
        o, t = ours[key], torch.get(key)
        copy = (t or o)["copy_gbps"]  # the baseline's copy measurement where there is one
        pct = 100.0 * o["cache_gbps"] / copy
        checks = []
        if t:
            speedup = t["ms"] / o["ms"]
            checks.append(f"2x torch {'ok' if speedup >= 2.0 else 'MISSED'}")
        else:
            speedup = float("nan")
            checks.append("no baseline row")
        if key[2] == 16:
            checks.append(f"70% copy {'ok' if pct >= 70.0 else 'MISSED'}")
        name = "x".join(str(v) for v in key)
        torch_ms = f"{t['ms']:9.4f}" if t else f"{'-':>9}"
        queued = o.get("queued_ms")  # absent from logs of builds before it
        if queued:
            queued_cols = f"{queued:9.4f} {100.0 * o['cache_gbps'] * o['ms'] / queued / copy:6.1f}%"
        else:
            queued_cols = f"{'-':>9} {'-':>7}"
        print(f"{name:<14} {o['ms']:9.4f} {torch_ms} {speedup:7.2f}x {o['cache_gbps']:10.0f} {copy:10.0f} "
              f"{pct:6.1f}% {o['tflops']:6.1f} {queued_cols}  {', '.join(checks)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
