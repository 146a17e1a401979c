"""Joins mla-bench-decode's JSON lines with the PyTorch baseline's
(../shared/bench/mla_decode_torch_baseline.py), both run in the same call on the
same card, and prints one table with the issue's targets:
  - at least 70% of the baseline's measured copy bandwidth on the 16-head shapes,
  - at least 2x faster than the PyTorch baseline on every shape.
Both are judged on "ms", timed as the baseline times itself (the GPU idle at
the start event). "queued ms" and its "% copy" (the GPU busy at the start
event: no host launch latency in the time) stand beside it for reference.

    python3 decode_bench_compare.py OURS.jsonl TORCH.jsonl
    python3 decode_bench_compare.py --best VARIANTS.jsonl OURS.jsonl TORCH.jsonl

    python3 decode_bench_compare.py --fit VARIANTS.jsonl OURS.jsonl
    python3 decode_bench_compare.py --trace VARIANTS.jsonl OURS.jsonl

With --fit: instead, for each batch, head count, launch and flags run at three
or more context lengths (the fastest row of each length), a least-squares
line of time against context, for "ms", "queued ms" and "attn ms": its
intercept is the fixed cost (launches, the pipeline's ramp, the merge, the
GEMMs), its slope the streaming rate, given also as cache GB/s.

With --best: instead, per shape, the fastest of the default run (OURS) and the
variants run.sh tries after it (VARIANTS: their JSON lines, several shapes
each) launched eagerly, as the runtime launches, and apart from it the
fastest timed as one CUDA graph (--graph), each with the flags that made it
and the same targets, so that a GPU session sees at once which variant, if
any, meets them; then per shape the --decode-kernel SPEC that serves its
fastest eager row (mla-launch, mla-worker, mla-generate --backend cuda).

With --trace: instead, the traced launch of each row (mla-bench-decode
--trace: its "trace" object) as one table: every shape of the default run
(OURS), and the variants at 16 heads, where the 70% target is judged. Per row:
the attention's time (attn ms) beside the decode kernel's span, and per work
item (median, largest) the phases that make it up, in us; then from the
pipeline's spans (mla-bench-decode's "pipeline": one clock for its kernels)
the merge kernel's time and the gaps before and after the decode (negative:
overlapped, as PDL allows), where the GEMMs ran on head_gemm.cuh's kernel.

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


# The decode options a JSON row records, in MlaDecodeVariantSpec's order (the
# --decode-kernel spec's, launcher/decode_kernel_flag.h): (JSON key, its
# default, mla-bench-decode flag, --decode-kernel word). Rows of older builds
# lack some keys, which then read as the default.
VALUED_OPTIONS = (
    ("mma16", "sync", "--mma", "mma"),  # only at 16 heads per block
    ("query", "registers", "--query", "query"),
    ("copy", "cp-async", "--copy", "copy"),
    ("gemm", "cublas", "--gemm", "gemm"),
    ("merge", "kernel", "--merge", "merge"),
)
SWITCHES = (  # (JSON key, flag, word), off by default
    ("issue_ahead", "--issue-ahead", "issue-ahead"),
    ("prefetch_l2", "--prefetch-l2", "prefetch-l2"),
    ("pdl", "--pdl", "pdl"),
)


def chosen_options(o):
    """(flag, word, value) for each decode option a row ran with other than its
    default, value None for a switch; heads per block and --graph apart."""
    chosen = []
    for key, default, flag, word in VALUED_OPTIONS:
        if key == "mma16" and o.get("heads_per_block") != 16:
            continue
        if o.get(key, default) != default:
            chosen.append((flag, word, o[key]))
    for key, flag, word in SWITCHES:
        if o.get(key):
            chosen.append((flag, word, None))
    return chosen


def flags_of(o):
    """The mla-bench-decode flags a JSON row was run with, the defaults left out."""
    flags = [f"--heads-per-block {o['heads_per_block']}"]
    flags += [flag if value is None else f"{flag} {value}" for flag, _, value in chosen_options(o)]
    if o.get("graph"):
        flags.append("--graph")
    return " ".join(flags)


def serving_spec(o, d):
    """The --decode-kernel SPEC that serves an eager row as the runtime would
    launch it, given d, the default run's row of the same shape (what "default"
    plans); or None and why where no serving flag says it."""
    if o.get("graph"):
        return None, "a CUDA graph (the runtime launches eagerly)"
    if d and o.get("plan_sms") != d.get("plan_sms"):
        return None, "--plan-waves (no serving flag)"
    words = []
    if d is None or o["heads_per_block"] != d["heads_per_block"]:
        words.append(f"heads-per-block={o['heads_per_block']}")
    words += [word if value is None else f"{word}={value}" for _, word, value in chosen_options(o)]
    return ",".join(words) or "default", None


def targets(key, o, t, copy):
    """The issue's targets for one row: its % copy, speedup, and verdicts."""
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
    return pct, speedup, checks


def print_best(variants, ours, torch):
    """Per shape, the fastest row of the default run and the variants launched
    eagerly (as the runtime launches), then the fastest as one CUDA graph
    (--graph) where a variant ran so."""
    best = {}  # (shape, graph) -> row
    for obj in list(ours.values()) + variants:
        key = (shape_of(obj), bool(obj.get("graph")))
        if key not in best or obj["ms"] < best[key]["ms"]:
            best[key] = obj
    print(f"{'BxLxH':<14} {'launch':<6} {'ms':>9} {'default ms':>10} {'torch ms':>9} {'speedup':>8} {'% copy':>7}  "
          f"{'targets':<28} flags")
    for key, graph in sorted(best, key=lambda k: (k[0][2], k[0][0], k[0][1], k[1])):
        o, t, d = best[(key, graph)], torch.get(key), ours.get(key)
        copy = (t or o)["copy_gbps"]
        pct, speedup, checks = targets(key, o, t, copy)
        name = "x".join(str(v) for v in key)
        default_ms = f"{d['ms']:10.4f}" if d else f"{'-':>10}"
        torch_ms = f"{t['ms']:9.4f}" if t else f"{'-':>9}"
        print(f"{name:<14} {'graph' if graph else 'eager':<6} {o['ms']:9.4f} {default_ms} {torch_ms} {speedup:7.2f}x "
              f"{pct:6.1f}%  {', '.join(checks):<28} {'(the default run)' if o is d else flags_of(o)}")
    # How to serve each shape's fastest eager row (mla-launch, mla-worker and
    # mla-generate --backend cuda take the same spec).
    for key, graph in sorted(best, key=lambda k: (k[0][2], k[0][0], k[0][1], k[1])):
        if graph:
            continue
        spec, why = serving_spec(best[(key, graph)], ours.get(key))
        name = "x".join(str(v) for v in key)
        print(f"serve {name} eager best: " + (f"--decode-kernel {spec}" if spec else f"no serving flag: {why}"))


def line_fit(points):
    """Least squares y = a + b x over (x, y) points: (a, b)."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx
    return my - b * mx, b


def print_fit(rows):
    """Per (batch, heads, launch, flags) run at 3 or more contexts: intercept and
    slope of ms, queued ms and attn ms against context (fastest row a context)."""
    groups = {}  # (batch, heads, graph, flags) -> {context: row}
    for o in rows:
        key = (o["batch"], o["heads"], bool(o.get("graph")), flags_of(o))
        by_context = groups.setdefault(key, {})
        if o["context"] not in by_context or o["ms"] < by_context[o["context"]]["ms"]:
            by_context[o["context"]] = o
    print(f"{'BxH':<8} {'launch':<6} {'contexts':<16} {'ms at 0':>8} {'per 1k':>8} {'GB/s':>6} "
          f"{'queued 0':>8} {'per 1k':>8} {'attn 0':>8} {'per 1k':>8} {'GB/s':>6}  flags")
    for (batch, heads, graph, flags), by_context in sorted(groups.items()):
        if len(by_context) < 3:
            continue
        contexts = sorted(by_context)
        cols = []
        for field, with_rate in (("ms", True), ("queued_ms", False), ("attn_ms", True)):
            pts = [(c / 1024.0, by_context[c][field]) for c in contexts if by_context[c].get(field)]
            if len(pts) < 3:
                cols.append(f"{'-':>8} {'-':>8}" + (f" {'-':>6}" if with_rate else ""))
                continue
            a, b = line_fit(pts)
            # Latent-cache bytes per 1024 tokens of every sequence over the slope's time.
            gbps = batch * 1024 * 576 * 2 / (b * 1e6) if b > 0 else float("nan")
            cols.append(f"{a:8.4f} {b:8.4f}" + (f" {gbps:6.0f}" if with_rate else ""))
        span = f"{contexts[0]}..{contexts[-1]} ({len(contexts)})"
        print(f"{batch}x{heads:<5} {'graph' if graph else 'eager':<6} {span:<16} {' '.join(cols)}  {flags}")


def pipeline_cols(p):
    """The merge kernel's time, and the gaps from the W_UK GEMM's end to the
    decode's start and from the decode's (or merge kernel's) end to the W_UV
    GEMM's start, in us, from a row's "pipeline" spans ("-" where untraced)."""
    p = p or {}
    absorb, decode, merge, unabsorb = (p.get(k) for k in ("absorb_us", "decode_us", "merge_us", "unabsorb_us"))
    merge_k = f"{merge[1] - merge[0]:7.1f}" if merge else f"{'-':>7}"
    gap_in = f"{decode[0] - absorb[1]:6.1f}" if decode and absorb else f"{'-':>6}"
    before = max(decode[1], merge[1]) if decode and merge else (decode[1] if decode else None)
    gap_out = f"{unabsorb[0] - before:7.1f}" if unabsorb and before is not None else f"{'-':>7}"
    return f"{merge_k} {gap_in} {gap_out}"


def print_trace(ours, variants):
    """The traced launches: the default run's rows, then the variants' at 16
    heads, each shape's rows together (16-head shapes first)."""
    rows = [(o, "(the default run)") for o in ours.values()]
    rows += [(o, flags_of(o)) for o in variants if o["heads"] == 16]
    rows.sort(key=lambda r: (r[0]["heads"], r[0]["batch"], r[0]["context"]))
    print(f"{'BxLxH':<14} {'attn ms':>8} {'span us':>8} {'skew':>5} {'wait':>5} {'1st tile':>9} {'per tile':>11} "
          f"{'waiting':>11} {'share':>5} {'epilogue':>9} {'merge':>5} {'tail':>5} {'GB/s':>6} {'merge k':>7} "
          f"{'gap in':>6} {'gap out':>7}  flags")
    for o, flags in rows:
        t = o.get("trace")
        if not t:
            continue  # not traced (an older build, or run without --trace)
        name = f"{o['batch']}x{o['context']}x{o['heads']}"
        if not t.get("traced"):
            print(f"{name:<14} {o['attn_ms']:8.4f} {'no item traced':>8}  {flags}")
            continue
        def pair(k, w, p):  # median/largest; "-" where an older build's trace lacks the key
            return (f"{t[k][0]:.{p}f}/{t[k][1]:.{p}f}" if t.get(k) else "-").rjust(w)
        share = f"{100 * t['tile_wait_share']:4.0f}%" if t.get("tile_wait_share") is not None else f"{'-':>5}"
        wait = f"{t['wait_us'][1]:5.1f}" if t.get("wait_us") else f"{'-':>5}"
        print(f"{name:<14} {o['attn_ms']:8.4f} {t['span_us']:8.1f} {t['start_skew_us']:5.1f} {wait} "
              f"{pair('first_tile_us', 9, 1)} {pair('tile_us', 11, 2)} {pair('tile_wait_us', 11, 2)} "
              f"{share} {pair('epilogue_us', 9, 1)} {t['merge_us'][1]:5.1f} "
              f"{t['end_skew_us']:5.1f} {t['stream_gbps']:6.0f} {pipeline_cols(o.get('pipeline'))}  {flags}")


def main():
    args = sys.argv[1:]
    if not (len(args) == 2 or (len(args) == 4 and args[0] == "--best") or
            (len(args) == 3 and args[0] in ("--fit", "--trace"))):
        print(__doc__, file=sys.stderr)
        return 2
    try:  # every input read before anything is printed
        if args[0] == "--fit":
            rows = list(read_rows(args[2]).values()) + list(json_rows(args[1]))
        elif args[0] == "--trace":
            variants, ours = list(json_rows(args[1])), read_rows(args[2])
        elif args[0] == "--best":
            variants, ours, torch = list(json_rows(args[1])), read_rows(args[2]), read_rows(args[3])
        else:
            ours, torch = read_rows(args[0]), read_rows(args[1])
    except (OSError, ValueError) as e:
        print(f"decode_bench_compare: {e}", file=sys.stderr)
        return 2
    if args[0] == "--fit":
        print_fit(rows)
        return 0
    if args[0] == "--trace":
        print_trace(ours, variants)
        return 0
    if args[0] == "--best":
        print_best(variants, ours, torch)
        return 0
    print(f"{'BxLxH':<14} {'ours ms':>9} {'torch ms':>9} {'speedup':>8} {'ours GB/s':>10} "
          f"{'copy GB/s':>10} {'% copy':>7} {'TF/s':>6} {'queued ms':>9} {'% copy':>7}  targets")
    for key in sorted(ours, key=lambda k: (k[2], k[0], k[1])):
        o, t = ours[key], torch.get(key)
        copy = (t or o)["copy_gbps"]  # the baseline's copy measurement where there is one
        pct, speedup, checks = targets(key, o, t, copy)
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
