"""Summarises an A/B run of mla-bench-decode builds (tests/gpu/bench_ab.sh):
per shape, each build's mean "ms" over its rounds (every JSON line of the shape
in its log) and its ratio to the first build named (above 1: slower than it).

    python3 decode_ab_summary.py BASE.log OTHER.log [MORE.log ...]

Each LOG holds one build's JSON lines, all rounds appended (bench_ab.sh's
ab_NAME.log), read as decode_bench_compare.py reads them. Exit status 0 whatever the numbers (a benchmark, not a test); 2
when a log is missing or unreadable.
"""
import os
import sys

from decode_bench_compare import json_rows, shape_of  # packed beside this script


def read_means(path):
    """{(batch, context, heads): (mean ms, rounds)} from one build's log."""
    sums = {}
    for obj in json_rows(path):
        key = shape_of(obj)
        total, n = sums.get(key, (0.0, 0))
        sums[key] = (total + float(obj["ms"]), n + 1)
    return {k: (total / n, n) for k, (total, n) in sums.items()}


def name_of(path):
    """ab_mla-bench-decode-COMMIT.log -> mla-bench-decode-COMMIT."""
    base = os.path.basename(path)
    if base.startswith("ab_"):
        base = base[3:]
    return base[:-4] if base.endswith(".log") else base


def main():
    if len(sys.argv) < 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        builds = [(name_of(p), read_means(p)) for p in sys.argv[1:]]
    except (OSError, ValueError) as e:
        print(f"decode_ab_summary: {e}", file=sys.stderr)
        return 2
    base_name, base = builds[0]
    shapes = sorted({k for _, means in builds for k in means}, key=lambda k: (k[2], k[0], k[1]))
    width = max(len(n) for n, _ in builds)
    print(f"mean ms over the rounds; (ratio to {base_name}: above 1 is slower)")
    header = f"{'BxLxH':<14}" + "".join(f" {n:>{max(width, 16)}}" for n, _ in builds)
    print(header)
    for key in shapes:
        cells = []
        for name, means in builds:
            if key not in means:
                cells.append("-")
                continue
            ms, _ = means[key]
            if name == base_name or key not in base:
                cells.append(f"{ms:.4f}")
            else:
                cells.append(f"{ms:.4f} ({ms / base[key][0]:.2f})")
        label = f"{key[0]}x{key[1]}x{key[2]}"
        print(f"{label:<14}" + "".join(f" {c:>{max(width, 16)}}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
