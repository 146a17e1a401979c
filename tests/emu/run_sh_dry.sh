#!/usr/bin/env bash
# tests/gpu/run.sh, the one command a GPU session runs, dry on the CPU
# emulator: a folder laid out as run.sh expects (DIR/bin) holds emulated GPU
# tests under their GPU names, the emulated serving binaries for the launcher
# check, and an emulated mla-bench-decode held to small shapes. Checks that
# the script runs every part (tests, launcher check, benchmark, its variants,
# the join with a stand-in for the PyTorch baseline, the closing table) and
# exits 0; then bench_ab.sh over two builds of the
# benchmark; then that a failing test binary makes run.sh exit 1. So a GPU
# session's few minutes are not spent on a broken script.
#
#   run_sh_dry.sh BUILD_DIR      (ctest: run_sh_dry_emu_test)
set -uo pipefail
build=$(cd "${1:?usage: run_sh_dry.sh BUILD_DIR}" && pwd)
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fail() {
  echo "run_sh_dry: FAILED: $*"
  exit 1
}

mkdir -p "$work/dry/bin"
for t in rmsnorm rope latent_cache nccl_communicator; do
  cp "$build/bin/${t}_gpu_test_emu" "$work/dry/bin/${t}_gpu_test" || fail "no $build/bin/${t}_gpu_test_emu"
done
cp "$build"/emu/bin/* "$work/dry/bin/" || fail "no emulated serving binaries in $build/emu/bin"
# Later flags win in mla-bench-decode: the shapes stay small whatever run.sh asks.
cat >"$work/dry/bin/mla-bench-decode" <<EOF
#!/usr/bin/env bash
exec "$build/bin/mla-bench-decode-emu" "\$@" --shapes 2x130x16,1x70x32 --iters 1 --copy-mib 1
EOF
chmod +x "$work/dry/bin/mla-bench-decode"

# A stand-in for the PyTorch baseline (no torch here): rows for the dry shapes
# in its JSON form, so that decode_bench_compare.py joins both logs as it will
# on a GPU.
cat >"$work/baseline_stand_in.py" <<'EOF'
import json
for b, l, h in ((2, 130, 16), (1, 70, 32)):
    print(json.dumps(dict(batch=b, context=l, heads=h, ms=1000.0, cache_gbps=0.1, tflops=0.0, copy_gbps=50.0)))
print(json.dumps(dict(baseline="run_sh_dry stand-in")))
EOF

export MLA_EMU_DEVICE_COUNT=4 MLA_GPU_RACECHECK_FILTER= MLA_LAUNCHER_CHECK_EMULATED=1
export MLA_TEST_DATA_DIR=$repo/tests/data MLA_TORCH_BASELINE=$work/baseline_stand_in.py
log=$work/run.log
# A stand-in for Nsight Compute on the PATH: it runs the profiled command (its
# first argument that is an executable file) and prints a duration line.
mkdir -p "$work/out" "$work/fake_ncu"
cat >"$work/fake_ncu/ncu" <<'EOF'
#!/usr/bin/env bash
while (($#)) && ! [[ -f $1 && -x $1 ]]; do shift; done
"$@" >/dev/null || exit
echo "    Duration                         us        12.34"
EOF
chmod +x "$work/fake_ncu/ncu"
# No time budget here (MLA_GPU_BUDGET=0): a loaded CI machine must not skip parts; see the budget's own case below.
PATH=$work/fake_ncu:$PATH OUT=$work/out MLA_GPU_LOG_DIR=$work/logs MLA_GPU_BUDGET=0 timeout 600 \
  bash "$repo/tests/gpu/run.sh" "$work/dry" >"$log" 2>&1
rc=$?
cat "$log"
((rc == 0)) || fail "run.sh exited $rc on passing tests"
# The device runner's $OUT: the logs packed (after each part, the last copy whole).
packed=$(tar tzf "$work/out/gpu-test-logs.tar.gz")  # listed whole first: grep -q would cut tar off (pipefail)
grep -q 'decode_bench_variants.jsonl' <<<"$packed" || fail "no decode_bench_variants.jsonl in \$OUT/gpu-test-logs.tar.gz"
for want in "-- nccl_communicator_gpu_test: PASSED" "launcher_cuda_tp1_emulated PASSED" \
  "launcher_cuda_tp1_emulated_moe_device PASSED" "launcher_cuda_tp1_emulated_moe_device_graphs PASSED" \
  "== decode benchmark: " "== decode benchmark variant: --mma warpgroup" "16-head plans on wgmma" \
  "tiles requested two ahead" "== decode benchmark variant: --gemm head --pdl" "programmatic dependent launch" \
  "GEMMs on head_gemm.cuh" "== decode benchmark against the PyTorch baseline" "queued ms" \
  "== decode benchmark variant: --gemm head --pdl --graph" "one CUDA graph launch" \
  "== decode benchmark variant: --merge last-block" "splits merged by their last block" \
  "== best of the default run and the variants, per shape" \
  "== ncu: wgmma16_tma (regex:MlaDecodeWgmma16Kernel --mma warpgroup --copy bulk --issue-ahead), 64x4096x16" \
  "== time against context" "trace 2x130x16: " "== decode benchmark variant: --mma warpgroup --copy bulk --issue-ahead --gemm head --pdl --graph --merge last-block"; do
  grep -qF -- "$want" "$log" || fail "no '$want' in run.sh's output"
done
# The joined table has a row per dry shape, each with its baseline's time;
# the best-of table after the variants has two (eager, graph): 3 a shape in
# all. Its 16-head rows name variants' flags (the stand-in's 1000 ms loses).
for shape in 2x130x16 1x70x32; do
  n=$(grep -cE "^$shape .*2x torch (ok|MISSED)" "$log")
  ((n == 3)) || fail "$n joined rows for $shape in run.sh's output, expected 3"
done
grep -qE "^2x130x16 +eager .*--heads-per-block 16" "$log" || fail "no eager variant's flags in the best-of table"
grep -qE "^2x130x16 +graph .*--graph" "$log" || fail "no graph row in the best-of table"
grep -qE "^serve 2x130x16 eager best: (--decode-kernel [a-z0-9=,-]+|no serving flag: .+)$" "$log" ||
  fail "no serving spec for 2x130x16's fastest eager row"
if grep -qF "run.sh: the comparison failed" "$log"; then fail "decode_bench_compare.py failed"; fi
# --trace in the default run and every variant: each shape's items all traced
# (the emulated kernels stamp too), the 16-head wgmma ones among them.
grep -qE '^trace 2x130x16: ([0-9]+)/\1 items traced on [0-9]+ SMs' "$log" || fail "no fully traced 2x130x16 in run.sh's output"
if grep -E '^trace ' "$log" | grep -qvE ': ([0-9]+)/\1 items traced'; then
  fail "a shape's items not all traced: $(grep -E '^trace ' "$log" | grep -vE ': ([0-9]+)/\1 items traced' | head -n 1)"
fi
n=$(grep -c '^ncu rc 0$' "$log")
((n == 2)) || fail "$n profiles ended well (ncu rc 0), expected 2"
grep -qF "Duration" "$log" || fail "no profile's duration line in run.sh's output"
if grep -qF "run.sh: the fit failed" "$log"; then fail "decode_bench_compare.py --fit failed"; fi
# The trace table: the default run's two shapes, and the 16-head variants' rows.
if grep -qF "run.sh: the trace table failed" "$log"; then fail "decode_bench_compare.py --trace failed"; fi
trace_table=$(sed -n '/^== the decode kernel.s timeline per work item/,/^== \|^logs: /p' "$log")
grep -qE '^1x70x32 +[0-9.]+ +[0-9.]+ .*\(the default run\)$' <<<"$trace_table" || fail "no default 1x70x32 row in the trace table"
n=$(grep -cE '^2x130x16 .* --heads-per-block 16' <<<"$trace_table")
((n >= 10)) || fail "$n 16-head variant rows in the trace table, expected 10 or more"
if grep -qF "no item traced" <<<"$trace_table"; then fail "an untraced row in the trace table"; fi

# The fit itself (the dry shapes have no context sweep): rows on the line
# ms = 0.04 + 0.02 per 1024 tokens at 4 contexts, one of them in the default
# run's log, and a slower duplicate that must not count.
python3 - "$work" <<'EOF'
import json, sys
def row(context, ms):
    return json.dumps(dict(batch=64, context=context, heads=16, ms=ms, queued_ms=ms - 0.01, attn_ms=ms - 0.02,
                           cache_gbps=1, tflops=1, copy_gbps=1, heads_per_block=16))
line = lambda c: 0.04 + 0.02 * c / 1024
open(sys.argv[1] + "/fit_ours.jsonl", "w").write(row(4096, line(4096)) + "\n")
open(sys.argv[1] + "/fit_variants.jsonl", "w").write(
    "".join(row(c, line(c)) + "\n" for c in (1024, 2048, 8192)) + row(2048, 1.0) + "\n")
EOF
fit=$(python3 "$repo/bench/decode_bench_compare.py" --fit "$work/fit_variants.jsonl" "$work/fit_ours.jsonl") ||
  fail "decode_bench_compare.py --fit exited $?"
grep -qE '^64x16 +eager +1024\.\.8192 \(4\) +0\.0400 +0\.0200 +3775 +0\.0300 +0\.0200 +0\.0200 +0\.0200 ' <<<"$fit" ||
  fail "the fit of a known line is off: $fit"
# The three launcher checks' generation times, side by side.
grep -qE '^launcher check, generation time: MoE grouped on the host [0-9]+ us, on the device [0-9]+ us, and with decode graphs [0-9]+ us$' "$log" ||
  fail "no generation times of the three launcher checks in run.sh's output"
# The closing table: its header, then one row per test binary and per launcher
# check (as configured, with the MoE layers grouped on the device, and with
# decode graphs too).
rows=$(sed -n '/^test  *result  *passed/,$p' "$log" | grep -cE ' (PASSED|FAILED|SKIPPED|TIMEOUT) ')
((rows == 7)) || fail "the closing table has $rows rows, expected 7"

# bench_ab.sh on the same folder, with a second "build" of the benchmark as
# mla-bench-decode-COMMIT: one round over both, no ncu (none here), exit 0.
cp "$work/dry/bin/mla-bench-decode" "$work/dry/bin/mla-bench-decode-0123abc"
mkdir -p "$work/ab"
OUT=$work/ab MLA_AB_ROUNDS=1 MLA_AB_NCU=0 timeout 300 bash "$repo/tests/gpu/bench_ab.sh" "$work/dry" >"$log" 2>&1
rc=$?
cat "$log"
((rc == 0)) || fail "bench_ab.sh exited $rc"
for want in "== round 1: mla-bench-decode --no-simple-timing" "== round 1: mla-bench-decode-0123abc --no-simple-timing" \
  "2x130x16" "ratio to mla-bench-decode" "mla-bench-decode-0123abc"; do
  grep -qF -- "$want" "$log" || fail "no '$want' in bench_ab.sh's output"
done
[[ -s $work/ab/ab_mla-bench-decode-0123abc.log ]] || fail "bench_ab.sh wrote no log for the second build"
rm "$work/dry/bin/mla-bench-decode-0123abc"

# Benchmark variants that hang: two time out, the rest of the sweep is skipped.
mkdir -p "$work/hang/bin"
printf '#!/usr/bin/env bash\nexit 0\n' >"$work/hang/bin/ok_gpu_test"
cat >"$work/hang/bin/mla-bench-decode" <<'EOF'
#!/usr/bin/env bash
[[ " $* " == *" --no-simple-timing "* ]] && exec sleep 30  # a variant: hangs
exit 0
EOF
chmod +x "$work/hang/bin/ok_gpu_test" "$work/hang/bin/mla-bench-decode"
MLA_GPU_VARIANT_TIMEOUT=1 MLA_LAUNCHER_CHECK_TIMEOUT=5 MLA_GPU_LOG_DIR=$work/logs3 timeout 120 \
  bash "$repo/tests/gpu/run.sh" "$work/hang" >"$log" 2>&1
n=$(grep -c '^== decode benchmark variant: ' "$log")
grep -qF "run.sh: two variants timed out; the rest of the sweep is skipped" "$log" && ((n == 2)) ||
  { cat "$log"; fail "$n variants ran after hanging ones, expected 2 and the sweep skipped"; }

# A time budget (MLA_GPU_BUDGET, as the device runner's $OUT sets by default)
# that runs out in the sweep: variants of 2 s each, 25 s of a 45 s budget
# (less its 20 s reserve) for all the parts: some variants run, the rest and
# the profiles are skipped and named, the resume point is given, and the
# closing table still prints within the budget.
cat >"$work/hang/bin/mla-bench-decode" <<'EOF'
#!/usr/bin/env bash
[[ " $* " == *" --no-simple-timing "* ]] && exec sleep 2  # a variant
exit 0
EOF
mkdir -p "$work/out4"
start=$SECONDS
PATH=$work/fake_ncu:$PATH OUT=$work/out4 MLA_GPU_BUDGET=45 MLA_LAUNCHER_CHECK_TIMEOUT=5 MLA_GPU_LOG_DIR=$work/logs4 \
  timeout 120 bash "$repo/tests/gpu/run.sh" "$work/hang" >"$log" 2>&1
secs=$((SECONDS - start))
n=$(grep -c '^== decode benchmark variant: ' "$log")
all=$(sed -n '/^    variants=(/,/^    )/p' "$repo/tests/gpu/run.sh" | grep -o '"--[^"]*"' | wc -l)  # the sweep's length
((n >= 2 && n < all)) || { cat "$log"; fail "$n of $all variants ran on a 45 s budget, expected 2 to $((all - 1))"; }
grep -qE "^run\.sh: [0-9]+s of the 45s budget \(MLA_GPU_BUDGET\) gone: $((all - n)) variants skipped \(MLA_GPU_SWEEP_FROM=$((n + 1)) resumes there\):$" "$log" ||
  { cat "$log"; fail "no budget line naming $((all - n)) skipped variants and the resume point $((n + 1))"; }
grep -qF "profile wgmma16_tma skipped" "$log" && ! grep -qF "== ncu: " "$log" ||
  { cat "$log"; fail "a profile ran past the budget, or its skip was not said"; }
grep -qE '^test +result +passed' "$log" && ((secs <= 45 + 5)) ||
  { cat "$log"; fail "no closing table within the budget (run.sh took ${secs}s)"; }
# Resumed where it stopped (a budget of one variant): the first variant run is the first one skipped.
MLA_GPU_SWEEP_FROM=$((n + 1)) MLA_GPU_BUDGET=24 MLA_GPU_PROFILE=0 MLA_LAUNCHER_CHECK_TIMEOUT=5 MLA_GPU_LOG_DIR=$work/logs5 \
  timeout 120 bash "$repo/tests/gpu/run.sh" "$work/hang" >"$work/resumed.log" 2>&1
first=$(grep -m 1 '^== decode benchmark variant: ' "$work/resumed.log")
skipped_first=$(grep -A 1 'resumes there' "$log" | tail -n 1 | sed 's/^  //')
[[ $first == "== decode benchmark variant: $skipped_first" ]] ||
  { cat "$work/resumed.log"; fail "MLA_GPU_SWEEP_FROM=$((n + 1)) began at '$first', expected '$skipped_first'"; }

# A test binary that fails: run.sh must say so and exit 1.
cat >"$work/dry/bin/broken_gpu_test" <<'EOF'
#!/usr/bin/env bash
echo "[  FAILED  ] Broken.Case"
exit 1
EOF
chmod +x "$work/dry/bin/broken_gpu_test"
MLA_GPU_BENCH=0 MLA_GPU_LOG_DIR=$work/logs2 timeout 600 bash "$repo/tests/gpu/run.sh" "$work/dry" >"$log" 2>&1
rc=$?
((rc == 1)) || { cat "$log"; fail "run.sh exited $rc with a failing test binary, expected 1"; }
grep -qE '^broken_gpu_test +FAILED' "$log" || { cat "$log"; fail "no FAILED row for the failing binary"; }
echo "run_sh_dry: PASSED"
