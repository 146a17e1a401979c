#!/usr/bin/env bash
# A/B comparison of decode-attention kernels on one card in one call (issue 6):
# runs every mla-bench-decode* binary in DIR/bin (the current build, plus older
# builds copied beside it as mla-bench-decode-COMMIT) in turn, ROUNDS rounds,
# each with the same flags, so that every number compared comes from the same
# card and the same call; prints each build's mean per shape and its ratio to
# the current build (bench/decode_ab_summary.py); then, where Nsight Compute
# (ncu) runs, a profile of the current build's tensor-core decode kernel on
# two shapes: speed of light, memory, warp stall reasons (every section's
# details: the stall table too).
#
#   tests/gpu/bench_ab.sh [DIR] [-- BENCH_ARGS...]
#
# DIR: a folder made by tests/gpu/pack.sh (default: the one holding this
# script, e.g. `bash .gpu/bench_ab.sh`) or a build tree. Environment:
#   MLA_AB_ROUNDS   rounds over the binaries (default 2)
#   MLA_AB_NCU      0: no profile (default 1)
#   MLA_AB_NCU_SHAPES  shapes profiled (default 64x4096x16,64x8192x128)
#   MLA_AB_NCU_TIMEOUT seconds per profiled shape (default 60)
#   MLA_AB_NCU_KERNEL  ncu's --kernel-name (default regex:MlaDecodeMmaKernel;
#                      regex:MlaDecodeWgmmaKernel with MLA_AB_NCU_ARGS="--heads-per-block 64")
#   MLA_AB_NCU_ARGS    extra mla-bench-decode flags for the profiled run
# Logs (and the ncu reports) go to $OUT when set (the device runner), else a temp dir.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/stage_packed.sh" || exit 2
source "$here/ncu_decode.sh" || exit 2
dir=$(pick_dir "$here" "${1:-}")
[[ $# -gt 0 && $1 != -- ]] && shift
[[ ${1:-} == -- ]] && shift
dir=$(cd "$dir" 2>/dev/null && pwd) || { echo "bench_ab.sh: no folder $dir" >&2; exit 2; }
enter_packed bench_ab.sh || exit 2
use_machine_lib bench_ab.sh libcublas.so.13
logs=${OUT:-$(mktemp -d)}
mapfile -t bins < <(find "$dir/bin" -maxdepth 1 -type f -name 'mla-bench-decode*' -perm -u+x | sort)
(( ${#bins[@]} > 0 )) || { echo "bench_ab.sh: no mla-bench-decode* in $dir/bin" >&2; exit 2; }
args=("$@")
(( ${#args[@]} > 0 )) || args=(--no-simple-timing --copy-mib 1024)

nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv,noheader 2>/dev/null
for ((round = 1; round <= ${MLA_AB_ROUNDS:-2}; ++round)); do
  for b in "${bins[@]}"; do
    echo "== round $round: $(basename "$b") ${args[*]}"
    timeout 300 "$b" "${args[@]}" 2>&1 | tee -a "$logs/ab_$(basename "$b").log" | grep -v '^{'
  done
done

# The summary: each build's mean ms per shape and its ratio to the current build.
summary=$dir/bench/decode_ab_summary.py
[[ -f $summary ]] || summary=$here/../../bench/decode_ab_summary.py
if [[ -f $summary ]] && command -v python3 >/dev/null; then
  others=()
  for b in "${bins[@]}"; do
    [[ $(basename "$b") != mla-bench-decode ]] && others+=("$logs/ab_$(basename "$b").log")
  done
  echo "== summary"
  # Python without the packed libraries on its path.
  LD_LIBRARY_PATH= python3 "$summary" "$logs/ab_mla-bench-decode.log" "${others[@]}" || echo "bench_ab.sh: no summary"
fi

ncu=$(ncu_path)
if [[ ${MLA_AB_NCU:-1} != 0 && -n $ncu ]]; then
  IFS=, read -ra ncu_shapes <<<"${MLA_AB_NCU_SHAPES:-64x4096x16,64x8192x128}"
  for b in "$dir/bin/mla-bench-decode"; do
    for shape in "${ncu_shapes[@]}"; do
      echo "== ncu: $(basename "$b") $shape"
      # shellcheck disable=SC2086  # MLA_AB_NCU_ARGS is several flags
      ncu_decode "$ncu" "$logs/ncu_$(basename "$b")_$shape.txt" "${MLA_AB_NCU_TIMEOUT:-60}" \
        "${MLA_AB_NCU_KERNEL:-regex:MlaDecodeMmaKernel}" "$b" "$shape" ${MLA_AB_NCU_ARGS:-}
    done
  done
elif [[ ${MLA_AB_NCU:-1} != 0 ]]; then
  echo "bench_ab.sh: no ncu on this machine"
fi
echo "bench_ab.sh: logs in $logs"
exit 0
