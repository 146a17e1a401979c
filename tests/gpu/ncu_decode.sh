# Sourced by run.sh and bench_ab.sh (bash): ncu_decode, a Nsight Compute
# profile of one decode-attention kernel launch of mla-bench-decode.
#
# ncu_path: prints the ncu found on this machine (PATH, CUDA's bin, /opt/nvidia),
# or nothing.
ncu_path() {
  command -v ncu || find /usr/local/cuda/bin /opt/nvidia -name ncu -type f -print -quit 2>/dev/null
}

# ncu_decode NCU REPORT TIMEOUT KERNEL BENCH SHAPE [BENCH_ARGS...]: profiles
# the first launch of KERNEL (ncu's --kernel-name, e.g.
# regex:MlaDecodeMmaKernel) in one timed run of BENCH on SHAPE (BxLxH) within
# TIMEOUT seconds: speed of light, memory, warp stall reasons (every section's
# details: the stall table too) and the tensor pipes' activity (mma.sync:
# hmma; wgmma: gmma). The whole report goes to REPORT; the lines that matter
# are printed, then "ncu rc N".
ncu_decode() {
  local ncu=$1 report=$2 secs=$3 kernel=$4 bench=$5 shape=$6
  shift 6
  timeout "$secs" "$ncu" --kernel-name "$kernel" \
    --launch-count 1 --section SpeedOfLight --section MemoryWorkloadAnalysis \
    --section MemoryWorkloadAnalysis_Tables --section WarpStateStats --section SchedulerStats \
    --section Occupancy --section LaunchStats --print-details all \
    --metrics sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active,l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum \
    "$bench" --shapes "$shape" --iters 1 --no-simple-timing --copy-mib 16 "$@" >"$report" 2>&1
  local rc=$?
  grep -E 'Duration|Memory Throughput|DRAM Throughput|Compute \(SM\) Throughput|Stall|Warp Cycles Per Issued|Issued Warp|No Eligible|Registers|Bank|Shared|tensor_op|bank_conflicts|wavefronts|ERR_|==ERROR==' \
    "$report" | head -n 60
  echo "ncu rc $rc"
}
