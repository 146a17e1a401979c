#!/usr/bin/env bash
# The serving stack on a GPU, end to end: `mla-launch --backend cuda --tp 1` (the
# coordinator and one worker: NCCL for a group of one, the BF16 CUDA model)
# serving the golden fixture v3_bf16 on a loopback port; one greedy generation
# through mla-client, compared with the tokens the fixture recorded from
# transformers; then SIGTERM, after which the launcher must exit cleanly within a
# bound and leave no child behind. run.sh calls it after the gtest binaries (one
# row of its table); it also runs alone:
#
#   tests/gpu/launcher_check.sh [DIR]
#
# DIR: a folder made by tests/gpu/pack.sh (DIR/bin, DIR/lib) or a build tree
# (DIR/bin). Default: the folder holding this script when it has a bin/ (a packed
# copy, e.g. `bash .gpu/launcher_check.sh`), else ./build. Alone, it unpacks the
# packed folder's compressed libraries itself, as run.sh does; cuBLAS and NCCL
# must then be on the loader's path (run.sh finds them on the GPU machine).
# The last line says the verdict:  launcher_check: NAME PASSED|FAILED|SKIPPED (why)
# with NAME launcher_cuda_tp1 (launcher_cpu_tp1 under the CPU switch below).
# Environment:
#   MLA_GPU_REQUIRED=1   no GPU visible is a failure (default: SKIPPED, exit 0)
#   MLA_TEST_DATA_DIR    the repository's tests/data (default: found from here, as run.sh does)
#   MLA_GPU_LOG_DIR      where the launcher's and the client's output go (default: a temp dir)
#   MLA_LAUNCHER_CHECK_BACKEND=cpu   (for testing this script) the same check on the CPU
#                        backend, which needs no GPU: proves the script's logic on any machine
#   MLA_LAUNCHER_CHECK_TP=N          --tp N (default 1): ranks on GPUs 0..N-1 (N GPUs, or N
#                        emulated devices: MLA_EMU_DEVICE_COUNT); the row is launcher_*_tpN
#   MLA_LAUNCHER_CHECK_DECODE_KERNEL=SPEC  (cuda) --decode-kernel SPEC to the workers
#                        (launcher/decode_kernel_flag.h, e.g. copy=bulk,gemm=head,merge=last-block,pdl: v3_bf16's
#                        latent takes the mma.sync kernel's choices only, written in the order
#                        MlaDecodeVariantSpec writes); ModelInfo must say every rank runs it.
#                        The row is then launcher_*_tpN_decode_kernel.
#   MLA_LAUNCHER_CHECK_MOE_GROUPING=host|device  (cuda) --moe-grouping to the workers; each
#                        must log it ("MoE grouping on the device"). The row is then
#                        launcher_*_moe_device (or _moe_host).
#   MLA_LAUNCHER_CHECK_DECODE_GRAPHS=1  (cuda, tp 1) --decode-graphs to the worker, which
#                        must log at exit that it replayed decode steps from CUDA graphs
#                        (with MLA_LAUNCHER_CHECK_MOE_GROUPING=device: the fixture has MoE
#                        layers). The row is then launcher_*_graphs.
#   MLA_LAUNCHER_CHECK_EMULATED=1    DIR holds an mla-worker built on the CUDA emulator
#                        (build/emu, tests/emu): the CUDA backend on the CPU, no GPU
#                        needed or looked for; steps are slow, so the step timeout is 2 min.
#                        The row is then launcher_cuda_tp1_emulated.
# Exit status: 0 passed or skipped, 1 failed, 2 usage errors.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
backend=${MLA_LAUNCHER_CHECK_BACKEND:-cuda}
emulated=${MLA_LAUNCHER_CHECK_EMULATED:-0}
tp=${MLA_LAUNCHER_CHECK_TP:-1}
[[ $tp =~ ^[1-8]$ ]] || { echo "launcher_check: MLA_LAUNCHER_CHECK_TP=$tp (expected 1 to 8)" >&2; exit 2; }
name=launcher_${backend}_tp${tp}
extra_flags=()
if [[ $emulated == 1 ]]; then
  name=${name}_emulated
  extra_flags=(--step-timeout-ms 120000)  # an emulated step of the fixture takes seconds
fi
decode_kernel=${MLA_LAUNCHER_CHECK_DECODE_KERNEL:-}
if [[ -n $decode_kernel ]]; then
  name=${name}_decode_kernel
  extra_flags+=(--decode-kernel "$decode_kernel")
fi
moe_grouping=${MLA_LAUNCHER_CHECK_MOE_GROUPING:-}
if [[ -n $moe_grouping ]]; then
  [[ $moe_grouping == host || $moe_grouping == device ]] ||
    { echo "launcher_check: MLA_LAUNCHER_CHECK_MOE_GROUPING=$moe_grouping (expected host or device)" >&2; exit 2; }
  name=${name}_moe_${moe_grouping}
  extra_flags+=(--moe-grouping "$moe_grouping")
fi
decode_graphs=${MLA_LAUNCHER_CHECK_DECODE_GRAPHS:-0}
if [[ $decode_graphs == 1 ]]; then
  name=${name}_graphs
  extra_flags+=(--decode-graphs)
fi
case_name=short           # a fixture case whose first token has a clear margin (checked below)
max_new_tokens=16         # every token the fixture recorded
ready_timeout_s=180       # model load, CUDA context, NCCL init of a group of one: seconds, normally
generate_timeout_s=120    # 16 tokens of a 3-layer model: well under a second, normally
shutdown_timeout_ms=10000 # --shutdown-timeout-ms: nothing is running at SIGTERM, so the drain is instant
stop_timeout_s=30         # > the drain bound + the launcher's SIGTERM-to-SIGKILL grace (3 s), twice

verdict() {  # RESULT WHY: the last line, read by run.sh
  echo "launcher_check: $name $1 ($2)"
}
die() {  # WHY [EXIT]: report a failure, with the launcher's last words
  echo "launcher_check: FAILED: $1" >&2
  if [[ -n ${launch_log:-} && -s $launch_log ]]; then
    echo "---- last 40 lines of the launcher's log ($launch_log)" >&2
    tail -n 40 "$launch_log" >&2
  fi
  verdict FAILED "$1"
  exit "${2:-1}"
}
[[ $backend == cuda || $backend == cpu ]] || die "MLA_LAUNCHER_CHECK_BACKEND=$backend (expected cuda or cpu)" 2

if [[ $# -gt 0 ]]; then
  dir=$1
elif [[ -d $here/bin ]]; then
  dir=$here
else
  dir=build
fi
dir=$(cd "$dir" 2>/dev/null && pwd) || die "no folder ${1:-build}" 2
bin=$dir/bin
for b in mla-launch mla-worker mla-coordinator mla-client; do
  [[ -x $bin/$b || -f $bin/$b.xz ]] || die "no $b in $bin (pack with tests/gpu/pack.sh, or build it)" 2
done

# No GPU: skip, unless one is required (run.sh requires it where nvidia-smi sees one).
if [[ $backend == cuda && $emulated != 1 ]]; then
  if ! gpus=$(timeout 60 nvidia-smi -L 2>&1) || ! grep -q '^GPU ' <<<"$gpus"; then
    if [[ ${MLA_GPU_REQUIRED:-0} == 1 ]]; then
      die "MLA_GPU_REQUIRED=1 but nvidia-smi sees no GPU: ${gpus:-no nvidia-smi}"
    fi
    verdict SKIPPED "nvidia-smi sees no GPU"
    exit 0
  fi
  echo "launcher_check: $(head -n 1 <<<"$gpus")"
fi

# Python reads the fixture's JSON (the GPU machine has it for PyTorch). It runs
# without our LD_LIBRARY_PATH: the packed Debian libcrypto, libz, liblzma must not
# stand in for the ones this machine's Python was built against.
py() { env -u LD_LIBRARY_PATH python3 "$@"; }
py -c '' 2>/dev/null || die "python3 is needed (to read the fixture's golden.json)" 2

# The golden fixtures travel with the working tree, not in the packed folder
# (the same search as run.sh).
if [[ -z ${MLA_TEST_DATA_DIR:-} ]]; then
  for d in "$dir/../tests/data" "$here/../tests/data" "$here/../../tests/data" "$PWD/tests/data"; do
    if [[ -d $d/fixtures ]]; then
      MLA_TEST_DATA_DIR=$(cd "$d" && pwd)
      break
    fi
  done
fi
fixture=${MLA_TEST_DATA_DIR:-}/fixtures/v3_bf16
[[ -f $fixture/golden.json && -f $fixture/model.safetensors ]] ||
  die "no golden fixture at $fixture (set MLA_TEST_DATA_DIR to the repository's tests/data)" 2

logs=${MLA_GPU_LOG_DIR:-$(mktemp -d)}
mkdir -p "$logs"
launch_log=$logs/$name.launch.log
client_out=$logs/$name.generate.out  # stdout: the token lines, then the final JSON line
client_err=$logs/$name.generate.err  # stderr apart: a library's warning must not break the parsing
launcher_pid=""
unpacked=""
# Whatever happens (a failure, run.sh's timeout, ^C): the launcher's whole process
# group (it runs under setsid: the group is its pid) is ended, and our temp files go.
cleanup() {
  if [[ -n $launcher_pid ]] && kill -0 "$launcher_pid" 2>/dev/null; then
    kill -TERM -- "-$launcher_pid" 2>/dev/null
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$launcher_pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$launcher_pid" 2>/dev/null
  fi
  [[ -n $unpacked ]] && rm -rf "$unpacked"
}
trap cleanup EXIT
trap 'die "interrupted"' INT TERM

# A packed folder's compressed files, unpacked into a temporary copy (run.sh
# passes its own unpacked copy: then nothing is left to do).
source "$here/stage_packed.sh" || die "no $here/stage_packed.sh" 2
staged=$(stage_packed "$dir") || die "cannot unpack $dir"
if [[ $staged != "$dir" ]]; then
  unpacked=$staged
  dir=$staged
  bin=$dir/bin
fi
[[ -d $dir/lib ]] && export LD_LIBRARY_PATH="$dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# The case: its prompt ids, and a first token whose margin is clear (see the rule below).
golden=$fixture/golden.json
prompt=$(py - "$golden" "$case_name" <<'EOF'
import json, sys
cases = {c["name"]: c for c in json.load(open(sys.argv[1]))["cases"]}
c = cases[sys.argv[2]]
assert c["margins"][0] > 1.25, "the case's first margin is not clear"
print(",".join(map(str, c["prompt_ids"])))
EOF
) || die "cannot read case '$case_name' of $golden"

port=$(py -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') ||
  die "no free loopback port"
server=127.0.0.1:$port
client=("$bin/mla-client" --server "$server")  # an array, not a function: `timeout` runs it

# setsid: the launcher leads its own process group, which cleanup() ends as one
# (its children also die with it: PR_SET_PDEATHSIG). Run from a script, the
# background job is no group leader, so setsid execs in place: $! is the launcher.
echo "launcher_check: mla-launch --backend $backend --tp $tp on $server, model $fixture, logs in $logs"
start=$SECONDS
setsid "$bin/mla-launch" --model "$fixture" --tp "$tp" --backend "$backend" --host 127.0.0.1 --port "$port" \
  --shutdown-timeout-ms "$shutdown_timeout_ms" "${extra_flags[@]}" >"$launch_log" 2>&1 </dev/null &
launcher_pid=$!

# Ready: SERVING on the Inference service (health on "" is liveness only).
until timeout 15 "${client[@]}" health --service mla.serving.v1.Inference --timeout-ms 2000 >/dev/null 2>&1; do
  if ! kill -0 "$launcher_pid" 2>/dev/null; then
    wait "$launcher_pid"
    die "mla-launch exited with status $? before serving"
  fi
  (( SECONDS - start < ready_timeout_s )) || die "not SERVING within ${ready_timeout_s}s"
  sleep 0.5
done
ready_s=$((SECONDS - start))
echo "launcher_check: SERVING after ${ready_s}s"

# The group is what was asked for: tp ranks, on the backend asked for, rank r
# of the CUDA one on GPU r (ModelInfo: backend, tp_size, ranks[].device "cpu" or
# "cuda:N"), each running the decode kernel asked for (ranks[].decode_kernel, in
# the words MlaDecodeVariantSpec writes: "default" without --decode-kernel, ""
# on the CPU backend).
info=$(timeout 30 "${client[@]}" info --timeout-ms 10000 2>&1) || die "mla-client info: $info"
device=$(py -c '
import json, sys
i = json.loads(sys.argv[1])
backend, tp, kernel = sys.argv[2], int(sys.argv[3]), sys.argv[4]
want = [f"cuda:{r}" if backend == "cuda" else "cpu" for r in range(tp)]
want_kernel = "" if backend == "cpu" else kernel or "default"
ranks = i.get("ranks", [])
got = [r.get("device") for r in ranks]
got_kernel = [r.get("decode_kernel", "") for r in ranks]
if i.get("backend") != backend or i.get("tp_size") != tp or got != want:
    sys.exit(f"expected backend {backend}, tp_size {tp}, ranks on {want}")
if got_kernel != [want_kernel] * tp:
    sys.exit(f"expected every rank on decode kernel {want_kernel!r}, got {got_kernel}")
print(",".join(want) + (f", decode kernel {want_kernel}" if want_kernel else ""))' "$info" "$backend" "$tp" "$decode_kernel" 2>&1) ||
  die "ModelInfo: $device; got $info"
echo "launcher_check: ModelInfo: backend $backend, tp $tp, ranks on $device"


# One greedy generation of every recorded token (ignoring EOS, as the fixture did).
start=$SECONDS
timeout "$generate_timeout_s" "${client[@]}" generate --prompt-ids "$prompt" --max-new-tokens "$max_new_tokens" \
  --temperature 0 --ignore-eos --timeout-ms $((generate_timeout_s * 1000 - 5000)) >"$client_out" 2>"$client_err"
rc=$?
(( rc == 0 )) || { cat "$client_out" "$client_err" >&2; die "mla-client generate: exit status $rc"; }
generate_s=$((SECONDS - start))

# The comparison rule, per backend, as the golden tests decide it:
#   cpu (float32): every token equals the fixture's (tests/golden/golden_test.cc);
#   cuda (BF16): the rule of GreedyGenerationMatchesTransformers in
#     tests/gpu/cuda_model_test.cc. Tokens are compared in order; a difference
#     where the fixture's top-1 minus top-2 margin exceeds kClearMargin 1.25 (1.5x
#     the largest margin change BF16 caused in emulation) fails; a difference at a
#     smaller margin is a BF16 flip, after which comparing stops (the histories
#     differ from there). The case "short" has margins 3.79 and 2.20 at its first
#     two tokens, so at least those two are always checked.
# The streamed token lines must also be the final message's generated_ids.
verdict_line=$(py - "$golden" "$case_name" "$backend" "$client_out" <<'EOF'
import json, sys
golden, case_name, backend, out = sys.argv[1:5]
clear_margin = 1.25
case = {c["name"]: c for c in json.load(open(golden))["cases"]}[case_name]
want, margins = case["generated_ids"], case["margins"]
lines = [l for l in open(out).read().splitlines() if l.strip()]
final = json.loads(lines[-1])
got = final["generated_ids"]
streamed = [int(l) for l in lines[:-1]]
def fail(why):
    print(f"FAILED {why}; got {got}, fixture {want}")
    sys.exit(1)
if streamed != got:
    fail(f"streamed tokens {streamed} differ from the final message's")
if len(got) != len(want) or final.get("finish_reason") != "length":
    fail(f"{len(got)} tokens, finish reason {final.get('finish_reason')} (expected {len(want)}, length)")
if backend == "cpu":
    if got != want:
        fail("float32 tokens differ from the fixture's")
    print(f"PASSED all {len(want)} greedy tokens equal the fixture's (float32: exact)")
    sys.exit(0)
for i, (g, w) in enumerate(zip(got, want)):
    if g == w:
        continue
    if margins[i] > clear_margin:
        fail(f"token {i} is {g}, the fixture's {w} has a clear margin {margins[i]:.2f} > {clear_margin}")
    clear = sum(m > clear_margin for m in margins[:i])
    print(f"PASSED the first {i} greedy tokens equal the fixture's ({clear} at clear margins), "
          f"then a BF16 flip at token {i} (margin {margins[i]:.2f} <= {clear_margin})")
    sys.exit(0)
clear = sum(m > clear_margin for m in margins)
print(f"PASSED all {len(want)} greedy tokens equal the fixture's ({clear} at clear margins)")
EOF
)
rc=$?
echo "launcher_check: tokens $(tail -n 1 "$client_out")"
(( rc == 0 )) || die "${verdict_line#FAILED }"

# SIGTERM to the launcher alone (as an operator or a service manager would): the
# coordinator drains, the workers are told to shut down, the launcher exits 0.
start=$SECONDS
kill -TERM "$launcher_pid"
while kill -0 "$launcher_pid" 2>/dev/null; do
  (( SECONDS - start < stop_timeout_s )) || die "mla-launch still running ${stop_timeout_s}s after SIGTERM"
  sleep 0.2
done
wait "$launcher_pid"
rc=$?
stop_s=$((SECONDS - start))
group=$launcher_pid
launcher_pid=""  # gone: cleanup() has nothing to end
(( rc == 0 )) || die "mla-launch exited with status $rc after SIGTERM (expected 0: every child ended cleanly)"
# No process of the launcher's group may outlive it (field 3 after "comm)" is the group).
left=""
for stat in /proc/[0-9]*/stat; do
  read -r fields 2>/dev/null <"$stat" || continue
  read -r _ _ pgrp _ <<<"${fields##*) }"
  [[ $pgrp == "$group" ]] && left+=" ${stat//[!0-9]/}"
done
[[ -z $left ]] || die "processes of the launcher's group outlived it:$left"

# Every rank grouped its MoE layers where it was asked to (the worker's log line).
if [[ -n $moe_grouping ]]; then
  logged=$(grep -c "MoE grouping on the $moe_grouping" "$launch_log")
  (( logged == tp )) || die "$logged of $tp ranks logged 'MoE grouping on the $moe_grouping'"
fi

# With one rank and --decode-graphs, the worker replayed decode steps from graphs.
if [[ $decode_graphs == 1 && $tp == 1 ]]; then
  grep -qE "worker rank 0: [1-9][0-9]* decode steps replayed from CUDA graphs" "$launch_log" ||
    die "the worker did not log decode steps replayed from CUDA graphs"
fi

echo "---- last 15 lines of the launcher's log"
tail -n 15 "$launch_log"
verdict PASSED "${verdict_line#PASSED }; ranks on $device; ready ${ready_s}s, generate ${generate_s}s, exit 0 ${stop_s}s after SIGTERM"
