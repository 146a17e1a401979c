#!/usr/bin/env python3
"""Holds the CUDA kernels to what their SASS must show, read off the objects
built here (scripts/sass_report --tsv; no GPU): no spills, the tensor-core
instructions present, each staging variant copying the way its template says,
and every mbarrier wait bounded. Issue 6 asks for this reading before any
device time; here CI does it on every change, so a kernel edit that spills,
loses its MMAs or drops the bounded wait fails on a CPU machine, not in a
15-minute GPU call.

  kernel_resources_check.py REPORT.tsv              exit 1 and name each broken rule
  kernel_resources_check.py --self-test REPORT.tsv  also: each rule fails on a report made to break it
"""
import re
import sys

COLUMNS = ["REG", "STACK", "LOCAL", "HMMA", "HGMMA", "LDSM", "LDGSTS", "BULK", "WAIT", "TRAP", "LDL", "STL", "BAR"]

# Kernels allowed a stack frame and local loads/stores, with the most of each
# (bytes, LDL, STL) and why. sincosf's slow path (Payne-Hanek reduction) keeps
# a small array on the stack; it runs only for angles above about 1e5 rad
# (RoPE at positions past about 1e5), and the fast path is not accurate there.
LOCAL_ALLOWED = {
    "RopeKernel": (40, 3, 2),
    "LatentNormRopeKernel": (40, 3, 2),
}

# (kernel pattern, column, least value, why). Every pattern must match some
# kernel, so a rename cannot make a rule vacuous.
AT_LEAST = [
    (r"^detail::MlaDecodeMmaKernel<", "HMMA", 1, "the mma.sync decode kernel's scores and output run on tensor cores"),
    (r"^detail::MlaDecodeMmaKernel<", "LDSM", 1, "its operands come from shared memory by ldmatrix"),
    (r"^detail::MlaDecodeWgmmaKernel<", "HGMMA", 1, "the 64-head decode kernel runs warpgroup MMAs (wgmma)"),
    (r"^detail::MlaDecodeWgmma16Kernel<", "HGMMA", 1, "the 16-head wgmma decode kernel runs warpgroup MMAs"),
    (r"^HeadGemmKernel<", "HMMA", 1, "the per-head GEMM runs on tensor cores"),
    # Staging: the last template flag of each decode kernel picks bulk/TMA
    # copies (MlaDecodeCopy::kBulk) over cp.async.
    (r"^detail::MlaDecodeMmaKernel<.*, true>$", "BULK", 1, "kBulk stages the cache by cp.async.bulk (UBLKCP)"),
    (r"^detail::MlaDecodeMmaKernel<.*, false>$", "LDGSTS", 1, "the cp.async form stages the cache by LDGSTS"),
    (r"^detail::MlaDecodeWgmmaKernel<true>$", "BULK", 1, "kTma stages the cache by TMA tensor copies (UTMALDG)"),
    (r"^detail::MlaDecodeWgmmaKernel<false>$", "LDGSTS", 1, "the cp.async form stages the cache by LDGSTS"),
    (r"^detail::MlaDecodeWgmma16Kernel<.*, true>$", "BULK", 1, "kTma stages the cache by TMA tensor copies"),
    (r"^detail::MlaDecodeWgmma16Kernel<.*, false>$", "LDGSTS", 1, "the cp.async form stages the cache by LDGSTS"),
    (r"^detail::MlaDecodeWgmma16Kernel<.*, true>$", "WAIT", 1, "TMA copies complete on the stage's mbarrier"),
    (r"^MbarWaitProbeKernel$", "WAIT", 1, "the probe of the bounded wait waits on an mbarrier"),
]
AT_MOST = [
    (r"^detail::MlaDecode(Mma|Wgmma16)Kernel<.*, false>$|^detail::MlaDecodeWgmmaKernel<false>$", "BULK", 0,
     "the cp.async form issues no bulk copy"),
]


def parse(text):
    lines = [l for l in text.splitlines() if l.strip()]
    if not lines or lines[0].split("\t") != ["kernel"] + COLUMNS:
        raise ValueError("not a `scripts/sass_report --tsv` report (expected the header kernel\\t"
                         + "\\t".join(COLUMNS) + ")")
    rows = {}
    for line in lines[1:]:
        fields = line.split("\t")
        if len(fields) != len(COLUMNS) + 1:
            raise ValueError(f"report line with {len(fields)} fields (expected {len(COLUMNS) + 1}): {line!r}")
        # A kernel in two objects (an inline template) reads the same: keep one.
        rows[fields[0]] = {c: int(v) for c, v in zip(COLUMNS, fields[1:])}
    return rows


def check(rows):
    """The broken rules, one line each (empty: every rule holds)."""
    failures = []
    if not rows:
        return ["the report lists no kernel"]
    for name, r in sorted(rows.items()):
        stack, ldl, stl = LOCAL_ALLOWED.get(name, (0, 0, 0))
        for col, most in (("STACK", stack), ("LOCAL", 0), ("LDL", ldl), ("STL", stl)):
            if r[col] > most:
                failures.append(f"{name}: {col} {r[col]} (expected at most {most}: spills and stack frames cost "
                                f"local-memory traffic per thread)")
        if r["WAIT"] > 0 and r["TRAP"] == 0:
            failures.append(f"{name}: {r['WAIT']} mbarrier waits and no BPT.TRAP (expected the bounded wait, "
                            f"MbarWaitParity: a copy that never lands must end the launch, not hang the GPU)")
    for rules, cmp, word in ((AT_LEAST, lambda v, n: v >= n, "at least"), (AT_MOST, lambda v, n: v <= n, "at most")):
        for pattern, col, bound, why in rules:
            matched = [n for n in rows if re.search(pattern, n)]
            if not matched:
                failures.append(f"no kernel matches {pattern} (expected some: {why})")
            for name in sorted(matched):
                if not cmp(rows[name][col], bound):
                    failures.append(f"{name}: {col} {rows[name][col]} (expected {word} {bound}: {why})")
    return failures


def mutations(rows):
    """(what, broken report, text the failures must contain) per rule kind."""
    def changed(name_re, col, value):
        out = {n: dict(r) for n, r in rows.items()}
        name = next(n for n in sorted(out) if re.search(name_re, n))
        out[name][col] = value
        return name, out

    cases = []
    name, m = changed(r"^detail::MlaDecodeWgmma16Kernel<.*, true>$", "STL", 2)
    cases.append(("a spill", m, f"{name}: STL 2"))
    name, m = changed(r"^RopeKernel$", "STACK", 48)
    cases.append(("a larger stack than allowed", m, f"{name}: STACK 48"))
    name, m = changed(r"^detail::MlaDecodeWgmmaKernel<", "HGMMA", 0)
    cases.append(("lost wgmma", m, f"{name}: HGMMA 0"))
    name, m = changed(r"^detail::MlaDecodeMmaKernel<.*, true>$", "BULK", 0)
    cases.append(("bulk staging gone", m, f"{name}: BULK 0"))
    name, m = changed(r"^detail::MlaDecodeWgmma16Kernel<.*, false>$", "BULK", 9)
    cases.append(("bulk copies in the cp.async form", m, f"{name}: BULK 9"))
    name, m = changed(r"^detail::MlaDecodeWgmmaKernel<true>$", "TRAP", 0)
    cases.append(("an unbounded wait", m, f"{name}: 3 mbarrier waits and no BPT.TRAP"))
    gone = {n: r for n, r in rows.items() if "Wgmma16" not in n}
    cases.append(("a renamed kernel", gone, "no kernel matches ^detail::MlaDecodeWgmma16Kernel<"))
    return cases


def main(argv):
    self_test = len(argv) == 3 and argv[1] == "--self-test"
    if len(argv) != 2 and not self_test:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[-1]) as f:
        rows = parse(f.read())
    failures = check(rows)
    for line in failures:
        print(f"kernel_resources: {line}")
    if failures:
        return 1
    print(f"kernel_resources: {len(rows)} kernels, every rule holds")
    if self_test:
        for what, broken, expected in mutations(rows):
            got = check(broken)
            if not any(expected in line for line in got):
                print(f"kernel_resources: self-test: {what} was not caught (expected a failure containing "
                      f"{expected!r}; got {got})")
                return 1
            print(f"kernel_resources: self-test: {what} caught: {got[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
