#!/usr/bin/env bash
# Runs the GPU kernel tests (the ctest label `gpu`: every *_gpu_test binary), then
# the launcher check (launcher_check.sh beside this script: mla-launch --backend
# cuda --tp 1 serving the golden fixture, one greedy generation, SIGTERM; again
# with --moe-grouping device, and with --decode-graphs too), then
# the decode-attention benchmark (mla-bench-decode) beside the PyTorch baseline
# (mla_decode_torch_baseline.py) on the same card, its variants, and where
# Nsight Compute runs two profiles of 64x4096x16 (ncu_decode.sh), and prints
# the benchmark's tables and then the tests' table last: test, result,
# passed/failed/skipped cases, seconds. The benchmark never fails the run.
# (Counts come from gtest's XML report; a crash or timeout leaves them 0. The
# launcher check is one row, its one case counted in the column of its result.)
#
#   tests/gpu/run.sh [DIR] [-- GTEST_ARGS...]
#
# DIR is a build tree (binaries in DIR/bin) or a folder made by tests/gpu/pack.sh
# (DIR/bin, DIR/lib: put on LD_LIBRARY_PATH; its compressed files are unpacked
# into a temporary copy first, see stage_packed.sh). Default: the folder holding this
# script when it has a bin/ (a packed copy, e.g. `bash .gpu/run.sh`), else ./build.
# Environment:
#   MLA_GPU_TEST_TIMEOUT  seconds per binary (default 900)
#   MLA_LAUNCHER_CHECK_TIMEOUT  seconds for the launcher check (default 600; its own waits are shorter)
#   MLA_LAUNCHER_CHECK_DECODE_KERNEL  the launcher check's workers run this decode kernel
#                         (--decode-kernel SPEC; launcher_check.sh), its row then *_decode_kernel
#   MLA_GPU_SANITIZE=1    run each binary under compute-sanitizer (memcheck; mbar_wait_gpu_test's
#                         cases of a trapping kernel skip themselves)
#   MLA_GPU_BENCH_SWEEP=0 skip the decode benchmark's partition variants
#   MLA_GPU_VARIANT_TIMEOUT  seconds per benchmark variant (default 120; two past it end the sweep)
#   MLA_GPU_PROFILE=0     skip the Nsight Compute profiles after the variants (where ncu runs)
#   MLA_GPU_BUDGET        seconds from run.sh's start (unpacking included) by which the benchmark and
#                         its variants and profiles must be done: each is capped by what is left, less
#                         20 s for the tables, and variants and profiles that no longer fit are skipped
#                         and named. Default 540 where $OUT is set (the device runner: a call runs 600 s
#                         at most), else 0: no budget
#   MLA_GPU_SWEEP_FROM=K  start the sweep at its K-th variant (1-based; what a cut-short sweep says to
#                         resume from)
#   MLA_GPU_RACECHECK_FILTER  gtest filter of the decode cases run under racecheck (empty: none)
#   MLA_GPU_LOG_DIR       where the full logs and XML reports go (default: a temp dir); when $OUT is
#                         set (the device runner), they are also packed into $OUT/gpu-test-logs.tar.gz,
#                         again after each part (tests, benchmark, variants): a call cut off at its
#                         limit still brings back the logs of the parts done
#   MLA_GPU_TEST_SEED     base seed of the random inputs (printed by failing cases)
#   MLA_GPU_REQUIRED      1 (the default where nvidia-smi sees a GPU): no device is a failure, not a skip
#   MLA_TEST_DATA_DIR     the golden fixtures' tests/data (default: the repository's, found from here)
#   MLA_GPU_BENCH=0       skip the decode benchmark (default: run it where mla-bench-decode is in DIR/bin)
#   MLA_TORCH_BASELINE    the PyTorch baseline script (default: DIR/bench/, else ../shared/bench/ of the repo)
# Exit status: 0 when nothing failed (skipped is not failed), 1 otherwise, 2 on usage errors.
set -uo pipefail
SECONDS=0  # the budget (MLA_GPU_BUDGET) counts from here

machine_ld_path=${LD_LIBRARY_PATH:-}  # for python3 (PyTorch): without the packed Debian libraries
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/stage_packed.sh" || exit 2
source "$here/ncu_decode.sh" || exit 2
dir=$(pick_dir "$here" "${1:-}")
[[ $# -gt 0 && $1 != -- ]] && shift
[[ ${1:-} == -- ]] && shift
dir=$(cd "$dir" 2>/dev/null && pwd) || { echo "run.sh: no folder $dir" >&2; exit 2; }
# A packed folder's compressed files (see stage_packed.sh) are unpacked into a
# temporary copy, removed on exit; everything below runs from it.
enter_packed run.sh || exit 2
# The golden fixtures travel with the working tree, not in the packed folder: the
# repository's tests/data, found from a packed folder at the repo root (.gpu/),
# from tests/gpu/ or from a build tree at the repo root.
if [[ -z ${MLA_TEST_DATA_DIR:-} ]]; then
  for d in "$dir/../tests/data" "$here/../tests/data" "$here/../../tests/data" "$PWD/tests/data"; do
    if [[ -d $d/fixtures ]]; then
      export MLA_TEST_DATA_DIR=$(cd "$d" && pwd)
      break
    fi
  done
fi
use_machine_lib run.sh libcublas.so.13  # the CUDA model (cuda_model_gpu_test, mla-worker); libcublasLt.so.13 sits beside it
use_machine_lib run.sh libnccl.so.2     # nccl_communicator_gpu_test, mla-worker (NCCL even for --tp 1)
mapfile -t tests < <(find "$dir/bin" -maxdepth 1 -type f -name '*_gpu_test' -perm -u+x 2>/dev/null | sort)
if (( ${#tests[@]} == 0 )); then
  echo "run.sh: no *_gpu_test binaries in $dir/bin (build them, or pack with tests/gpu/pack.sh)" >&2
  exit 2
fi
logs=${MLA_GPU_LOG_DIR:-$(mktemp -d)}
mkdir -p "$logs"
export OPENBLAS_NUM_THREADS=1

echo "== $(date -u +%FT%TZ) $(hostname) | tests from $dir | logs in $logs | data ${MLA_TEST_DATA_DIR:-(none)}"
if nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null; then
  # A GPU is there: a test that finds no device (e.g. a driver too old for CUDA 13) fails instead of skipping.
  export MLA_GPU_REQUIRED=${MLA_GPU_REQUIRED:-1}
else
  echo "(nvidia-smi: no GPU visible; the tests will skip)"
fi

# The time budget of the optional parts: seconds left of it, less the tables'
# reserve (negative when spent; large without a budget).
budget=${MLA_GPU_BUDGET:-$([[ -n ${OUT:-} ]] && echo 540 || echo 0)}
[[ $budget =~ ^[0-9]+$ ]] || { echo "run.sh: MLA_GPU_BUDGET=$budget: expected whole seconds (0: none)" >&2; exit 2; }
budget_reserve=20
budget_left() {
  if (( budget == 0 )); then echo 1000000; else echo $(( budget - budget_reserve - SECONDS )); fi
}
# capped LIMIT: LIMIT seconds, or what is left of the budget when less (at least 1).
capped() {
  local left
  left=$(budget_left)
  if (( left >= $1 )); then echo "$1"; elif (( left > 1 )); then echo "$left"; else echo 1; fi
}

save_logs() {  # the logs so far into $OUT (the device runner), replacing the last copy
  [[ -n ${OUT:-} && -d ${OUT:-} ]] || return 0
  tar czf "$OUT/gpu-test-logs.tar.gz.part" -C "$logs" . && mv "$OUT/gpu-test-logs.tar.gz.part" "$OUT/gpu-test-logs.tar.gz"
}

count() {  # count ATTRIBUTE-OR-RESULT XML: from gtest's XML report
  case $1 in
    tests|failures|errors) sed -n "s/^<testsuites [^>]*\b$1=\"\([0-9]*\)\".*/\1/p" "$2" | head -n 1 ;;
    skipped) grep -c 'result="skipped"' "$2" ;;
  esac
}

table=()
status=0
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
# run_gtest NAME [PREFIX... --] BINARY ARGS...: one row of the table from the
# binary's XML report (PREFIX: a tool that runs the binary, e.g. compute-sanitizer).
run_gtest() {
  local name=$1 xml=$logs/$1.xml
  shift
  rm -f "$xml"
  local cmd=("$@" --gtest_brief=1 "--gtest_output=xml:$xml")
  local start rc secs total=0 failed=0 skipped=0 passed result
  start=$(date +%s.%N)
  timeout "${MLA_GPU_TEST_TIMEOUT:-900}" "${cmd[@]}" >"$logs/$name.log" 2>&1
  rc=$?
  secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  if [[ -s $xml ]]; then  # none when the binary crashed or timed out
    total=$(count tests "$xml") failed=$(( $(count failures "$xml") + $(count errors "$xml") ))
    skipped=$(count skipped "$xml")
  fi
  passed=$(( ${total:-0} - failed - skipped ))
  if (( rc == 124 || rc == 137 )); then
    result=TIMEOUT
  elif (( rc != 0 )); then
    result=FAILED
  elif (( passed == 0 && skipped > 0 )); then
    result=SKIPPED
  else
    result=PASSED
  fi
  [[ $result == FAILED || $result == TIMEOUT ]] && status=1
  echo "-- $name: $result (rc $rc, ${secs}s)"
  # Brief mode prints only failures and the summary; cap what a broken binary floods.
  tail -n 60 "$logs/$name.log"
  table+=("$(printf '%-28s %-8s %6s %6s %7s %8s' "$name" "$result" "$passed" "$failed" "$skipped" "$secs")")
}

for t in "${tests[@]}"; do
  if [[ ${MLA_GPU_SANITIZE:-0} == 1 ]]; then
    # Memory errors only: NCCL 2.28 itself makes failing cudaFuncGetAttributes
    # calls while it loads (60 "no kernel image" reports in the NCCL test, none
    # from our code, on an H200), and our own CUDA calls are checked anyway.
    run_gtest "$(basename "$t")" "$sanitizer" --tool memcheck --report-api-errors no --error-exitcode 99 "$t" "$@"
  else
    run_gtest "$(basename "$t")" "$t" "$@"
  fi
  save_logs
done

# Shared-memory hazards of the tensor-core decode kernel (its barriers and
# cp.async stages): a few small cases under compute-sanitizer's racecheck, one
# row. MLA_GPU_RACECHECK_FILTER= (empty) skips it.
race_filter=${MLA_GPU_RACECHECK_FILTER-'*h8_kv160_rope16*:*h32_kv512_rope64_len1_*:*h16_kv512_rope64_len200_*'}
if [[ -n $race_filter && -x $dir/bin/mla_decode_gpu_test && -x $sanitizer ]]; then
  run_gtest mla_decode_racecheck "$sanitizer" --tool racecheck --racecheck-report hazard --error-exitcode 99 \
    "$dir/bin/mla_decode_gpu_test" "--gtest_filter=$race_filter"
fi

# The launcher check: one row a run. Its last line says the verdict; its exit
# status decides a failure (a crash or a timeout leaves no verdict line). It
# runs three times: as configured, with the MoE layers grouped on the device
# (--moe-grouping device), and with decode steps replayed from CUDA graphs
# too (--decode-graphs); the generations' total times are printed side by
# side (16 tokens of a 3-layer model: launches and waits, not math).
check=$here/launcher_check.sh
launcher_check() {  # NAME LOG [VAR=VALUE...]: one row
  local name=$1 log=$2
  shift 2
  local start rc secs verdict_name verdict result passed failed skipped
  start=$(date +%s.%N)
  env MLA_GPU_LOG_DIR="$logs" "$@" timeout "${MLA_LAUNCHER_CHECK_TIMEOUT:-600}" bash "$check" "$dir" >"$log" 2>&1
  rc=$?
  secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  read -r _ verdict_name verdict _ < <(grep -E '^launcher_check: [a-z0-9_]+ (PASSED|FAILED|SKIPPED) ' "$log" | tail -n 1)
  name=${verdict_name:-$name}
  if (( rc == 124 || rc == 137 )); then
    result=TIMEOUT
  elif (( rc != 0 )); then
    result=FAILED
  elif [[ ${verdict:-} == SKIPPED || ${verdict:-} == PASSED ]]; then
    result=$verdict
  else
    result=FAILED  # exit 0 without a verdict: not a pass
  fi
  [[ $result == FAILED || $result == TIMEOUT ]] && status=1
  echo "-- $name: $result (rc $rc, ${secs}s)"
  tail -n 60 "$log"
  passed=0 failed=0 skipped=0
  case $result in PASSED) passed=1 ;; SKIPPED) skipped=1 ;; *) failed=1 ;; esac
  table+=("$(printf '%-28s %-8s %6s %6s %7s %8s' "$name" "$result" "$passed" "$failed" "$skipped" "$secs")")
}
# The generation's total_time_us from a launcher check's log ("-" where none).
generation_us() {
  local us
  us=$(grep -o '"total_time_us":[0-9]*' "$1" 2>/dev/null | tail -n 1 | cut -d: -f2)
  echo "${us:--}"
}
if [[ -f $check ]]; then
  launcher_check launcher_cuda_tp1 "$logs/launcher_check.log"
  launcher_check launcher_cuda_tp1_moe_device "$logs/launcher_check_moe_device.log" MLA_LAUNCHER_CHECK_MOE_GROUPING=device
  launcher_check launcher_cuda_tp1_graphs "$logs/launcher_check_graphs.log" MLA_LAUNCHER_CHECK_MOE_GROUPING=device \
    MLA_LAUNCHER_CHECK_DECODE_GRAPHS=1
  echo "launcher check, generation time: MoE grouped on the host $(generation_us "$logs/launcher_check.log") us," \
    "on the device $(generation_us "$logs/launcher_check_moe_device.log") us," \
    "and with decode graphs $(generation_us "$logs/launcher_check_graphs.log") us"
fi

# The decode benchmark (issue 6), its PyTorch baseline, and the two joined.
bench=$dir/bin/mla-bench-decode
if [[ ${MLA_GPU_BENCH:-1} != 0 && -x $bench ]]; then
  echo
  echo "== decode benchmark: $bench"
  # --check: exit 1 (reported here, the run goes on) where the two decode kernels disagree.
  # --trace: a line a shape after the table, where the attention's time goes
  # block by block (bench/mla_decode_trace_summary.h), from one more launch.
  timeout "$(capped 600)" "$bench" --check --trace 2>&1 | tee "$logs/decode_bench.jsonl" || echo "run.sh: mla-bench-decode failed (rc $?)"
  save_logs
  baseline=${MLA_TORCH_BASELINE:-}
  for b in "$dir/bench/mla_decode_torch_baseline.py" "$here/../../../shared/bench/mla_decode_torch_baseline.py"; do
    [[ -z $baseline && -f $b ]] && baseline=$b
  done
  compare=$dir/bench/decode_bench_compare.py
  [[ -f $compare ]] || compare=$here/../../bench/decode_bench_compare.py
  if [[ -n $baseline ]]; then
    echo "== PyTorch baseline: $baseline"
    LD_LIBRARY_PATH=$machine_ld_path timeout 600 python3 "$baseline" 2>&1 | tee "$logs/decode_torch.jsonl" ||
      echo "run.sh: the PyTorch baseline failed (rc $?)"
    echo "== decode benchmark against the PyTorch baseline (same card, same call)"
    LD_LIBRARY_PATH=$machine_ld_path python3 "$compare" "$logs/decode_bench.jsonl" "$logs/decode_torch.jsonl" ||
      echo "run.sh: the comparison failed"
  else
    echo "run.sh: no PyTorch baseline script (MLA_TORCH_BASELINE): the benchmark ran alone"
  fi
  # Variants of the kernel and its work partition, for the next change to
  # start from a measurement (bench/RESULTS.md). Those measured in sessions 4
  # and 5 and settled (bulk copies, the query in shared memory, the mma.sync
  # kernel's L2 prefetch, 16 heads per block at 128 heads, plans for two
  # waves or half a wave, 64 heads per block on the 16-head shapes) are left
  # to the flags. The list runs in the order of what the next change needs
  # most, so that a budget cut (MLA_GPU_BUDGET) drops what matters least.
  if [[ ${MLA_GPU_BENCH_SWEEP:-1} != 0 ]]; then
    save_logs
    timeouts=0 last_secs=0 skipped_variants=() index=0
    sweep_from=${MLA_GPU_SWEEP_FROM:-1}
    [[ $sweep_from =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: MLA_GPU_SWEEP_FROM=$sweep_from: expected 1 or more" >&2; exit 2; }
    variants=(
      # The 16-head wgmma kernel (--mma warpgroup: positions as the MMA's M),
      # the change not yet measured: alone, requesting tiles two ahead, staged
      # by TMA tensor copies (--copy bulk) alone and two ahead.
      "--mma warpgroup --shapes 64x4096x16,128x4096x16"
      "--mma warpgroup --issue-ahead --shapes 64x4096x16,128x4096x16"
      "--mma warpgroup --copy bulk --shapes 64x4096x16,128x4096x16"
      "--mma warpgroup --copy bulk --issue-ahead --shapes 64x4096x16,128x4096x16"
      # Two ahead with the per-head GEMMs on head_gemm.cuh's kernel and
      # programmatic dependent launch (the decode blocks ask L2 for their first
      # tiles while the W_UK GEMM runs, the W_UV GEMM loads W_UV while the
      # merge runs), then as one CUDA graph, with TMA staging, and with the
      # split sequences merged by their last work item (--merge last-block):
      # the 16-head candidates' best guesses.
      "--mma warpgroup --issue-ahead --gemm head --pdl --shapes 64x4096x16,128x4096x16"
      "--mma warpgroup --issue-ahead --gemm head --pdl --graph --shapes 64x4096x16,128x4096x16"
      "--mma warpgroup --copy bulk --issue-ahead --gemm head --pdl --graph --shapes 64x4096x16,128x4096x16"
      "--mma warpgroup --copy bulk --issue-ahead --gemm head --pdl --graph --merge last-block --shapes 64x4096x16,128x4096x16"
      # 64 sequences of 1024 to 8192 tokens at 16 heads, the default and the
      # candidate: with 64x4096x16, a line of time against context whose
      # intercept (launch, ramp, merge, GEMMs) and slope (streaming rate) say
      # which part of 64x4096x16's gap to the 70% target is which.
      "--shapes 64x1024x16,64x2048x16,64x8192x16"
      "--mma warpgroup --copy bulk --issue-ahead --gemm head --pdl --graph --shapes 64x1024x16,64x2048x16,64x8192x16"
      # The last-block merge alone, with the default kernel and the wgmma one
      # two ahead; the wgmma kernel with the L2 prefetch; two ahead with only
      # the GEMM kernel, and the prefetch candidate.
      "--merge last-block --shapes 64x4096x16,128x4096x16"
      "--mma warpgroup --issue-ahead --merge last-block --shapes 64x4096x16,128x4096x16"
      "--mma warpgroup --prefetch-l2 --shapes 64x4096x16,128x4096x16"
      "--mma warpgroup --issue-ahead --prefetch-l2 --shapes 64x4096x16,128x4096x16"
      "--mma warpgroup --issue-ahead --gemm head --shapes 64x4096x16,128x4096x16"
      "--mma warpgroup --issue-ahead --prefetch-l2 --gemm head --pdl --graph --shapes 64x4096x16,128x4096x16"
      # The default kernel with the per-head GEMMs on head_gemm.cuh's kernel,
      # alone, with programmatic dependent launch, and as a CUDA graph with
      # cuBLAS's or those (every shape).
      "--gemm head" "--gemm head --pdl" "--graph" "--gemm head --pdl --graph"
      # The 128-head shapes (their targets met in session 5): as 8 groups of
      # 16 heads on the wgmma16 kernel, each group reading the cache again
      # (mostly from L2); the 64-head wgmma kernel staged by TMA tensor copies
      # (a page requested by one thread as soon as the stage before it has
      # landed); 64 against 32 heads per block at the batch sizes around the
      # default's cut-off (two 64-head tiles per SM).
      "--mma warpgroup --issue-ahead --heads-per-block 16 --shapes 1x4096x128,16x4096x128,64x8192x128"
      "--heads-per-block 64 --copy bulk --shapes 8x4096x128,16x4096x128,64x8192x128"
      "--heads-per-block 64 --shapes 2x4096x128,4x4096x128,8x4096x128"
      "--heads-per-block 32 --shapes 2x4096x128,4x4096x128,8x4096x128"
    )
    for variant in "${variants[@]}"; do
      (( ++index < sweep_from )) && continue
      # Skipped, with all after it, once the budget left cannot take another as long as the last one.
      if (( ${#skipped_variants[@]} > 0 || $(budget_left) < last_secs + 1 )); then
        skipped_variants+=("$variant")
        continue
      fi
      echo "== decode benchmark variant: $variant"
      vstart=$SECONDS
      # 120 s by default: a variant takes about 10 s on an H200; a hung one
      # must not eat the call. (A copy the kernels wait for in vain traps
      # within 10 s: warp_mma.cuh MbarWaitParity.) Two variants past it end
      # the sweep: the rest would likely hang too, and the call's minutes are few.
      # shellcheck disable=SC2086  # the variant is several flags
      timeout "$(capped "${MLA_GPU_VARIANT_TIMEOUT:-120}")" "$bench" --check --no-simple-timing --copy-mib 512 --trace \
        $variant 2>&1 |
        tee -a "$logs/decode_bench_variants.jsonl" | grep -v '^{'
      rc=${PIPESTATUS[0]}
      last_secs=$(( SECONDS - vstart ))
      save_logs
      (( rc == 0 )) && continue
      echo "run.sh: variant '$variant' failed (rc $rc)"
      if (( rc == 124 || rc == 137 )) && (( ++timeouts == 2 )); then
        echo "run.sh: two variants timed out; the rest of the sweep is skipped"
        break
      fi
    done
    if (( ${#skipped_variants[@]} > 0 )); then  # the skipped ones are the list's last
      first_skipped=$(( index - ${#skipped_variants[@]} + 1 ))
      echo "run.sh: ${SECONDS}s of the ${budget}s budget (MLA_GPU_BUDGET) gone: ${#skipped_variants[@]} variants" \
        "skipped (MLA_GPU_SWEEP_FROM=$first_skipped resumes there):"
      printf '  %s\n' "${skipped_variants[@]}"
    fi
    # Nsight Compute on 64x4096x16, the shape short of its target: the default
    # kernel and the 16-head candidate (one launch each; the reports go with
    # the logs, here only their time and throughput lines, so that the tables
    # stay at the end of the output).
    ncu=$(ncu_path)
    if [[ ${MLA_GPU_PROFILE:-1} != 0 && -n $ncu ]]; then
      for prof in "default regex:MlaDecodeMmaKernel" \
                  "wgmma16_tma regex:MlaDecodeWgmma16Kernel --mma warpgroup --copy bulk --issue-ahead"; do
        read -r name kernel flags <<<"$prof"
        # A profile takes 20-90 s: none with less than 30 s of the budget left.
        if (( $(budget_left) < 30 )); then
          echo "run.sh: ${SECONDS}s of the ${budget}s budget (MLA_GPU_BUDGET) gone: profile $name skipped"
          continue
        fi
        echo "== ncu: $name ($kernel${flags:+ $flags}), 64x4096x16"
        # shellcheck disable=SC2086  # flags is several flags
        ncu_decode "$ncu" "$logs/ncu_${name}_64x4096x16.txt" "$(capped 90)" "$kernel" "$bench" 64x4096x16 $flags \
          >"$logs/ncu_${name}_64x4096x16.summary" 2>&1
        grep -E '^ *(Duration|DRAM Throughput|Memory Throughput)|ncu rc|==ERROR==' \
          "$logs/ncu_${name}_64x4096x16.summary" | head -n 6
      done
      save_logs
    fi
    if [[ -n $baseline ]]; then
      echo "== best of the default run and the variants, per shape (same card, same call)"
      LD_LIBRARY_PATH=$machine_ld_path python3 "$compare" --best "$logs/decode_bench_variants.jsonl" \
        "$logs/decode_bench.jsonl" "$logs/decode_torch.jsonl" || echo "run.sh: the comparison failed"
    fi
    # The context sweep's lines: fixed cost (ms at context 0) and streaming rate.
    echo "== time against context (least squares over 3 or more contexts: ms at 0, ms per 1024 tokens)"
    LD_LIBRARY_PATH=$machine_ld_path python3 "$compare" --fit "$logs/decode_bench_variants.jsonl" \
      "$logs/decode_bench.jsonl" || echo "run.sh: the fit failed"
    # The traced launches (--trace): where each one's attention time goes.
    echo "== the decode kernel's timeline per work item (--trace; us, median/max): the default run, the 16-head variants"
    LD_LIBRARY_PATH=$machine_ld_path python3 "$compare" --trace "$logs/decode_bench_variants.jsonl" \
      "$logs/decode_bench.jsonl" || echo "run.sh: the trace table failed"
  fi
fi

if [[ -n ${OUT:-} && -d ${OUT:-} ]]; then
  save_logs && echo "logs: \$OUT/gpu-test-logs.tar.gz"
fi
echo
echo "run.sh: done in ${SECONDS}s"
printf '%-28s %-8s %6s %6s %7s %8s\n' test result passed failed skipped seconds
printf '%s\n' "${table[@]}"
exit $status
