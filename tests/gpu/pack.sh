#!/usr/bin/env bash
# Packs the GPU tests and the serving binaries for a machine with a GPU and CUDA
# but none of this machine's Debian libraries (no Abseil, gRPC, protobuf, glog,
# Gloo or OpenBLAS there):
#
#   tests/gpu/pack.sh [BUILD_DIR] [DEST]      (defaults: build, .gpu at the repo root)
#
# DEST gets
#   bin/  the *_gpu_test binaries, and mla-launch, mla-worker, mla-coordinator,
#         mla-client (for launcher_check.sh: mla-launch runs the other two from
#         its own directory, so they sit side by side); CUDA builds only;
#   lib/  the shared libraries they load, minus glibc, libstdc++/libgcc, the CUDA
#         driver, NCCL and cuBLAS (600+ MB), which that machine has (run.sh finds
#         them); cudart is linked statically;
#         and mla-bench-decode (the decode-attention benchmark, issue 6) where built;
#   bench/ decode_bench_compare.py and the PyTorch baseline it is compared with
#         (../shared/bench/mla_decode_torch_baseline.py, where this checkout has it);
#   run.sh, launcher_check.sh, ncu_decode.sh, and bench_ab.sh (with any older decode benchmark
#         builds copied into BUILD_DIR/bin as mla-bench-decode-COMMIT).
# There: `bash DEST/run.sh`.
#
# Size. DEST is git-ignored (.gpu/) and travels to the GPU machine, which takes at
# most 64 MiB together with the working tree; the limit below leaves room for it.
# Two honest reductions, both undone by nothing but run.sh:
#   - every packed copy is `strip --strip-unneeded`ed (the Debian libraries
#     already are; our binaries lose only their symbol tables: a crash address
#     from the GPU machine maps back with addr2line on BUILD_DIR/bin, same build);
#   - binaries and libraries over 1 MiB travel xz-compressed as bin/NAME.xz and
#     lib/NAME.xz (OpenBLAS alone is 35 MiB raw, 4 MiB compressed: every kernel
#     of every x86 CPU; the test binaries shrink about 4x). run.sh (and
#     launcher_check.sh when run alone) unpack them into a temporary copy
#     (stage_packed.sh), never into DEST, so DEST's size stays what is measured here.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
dest=${2:-$root/.gpu}
# The device tool sends the working tree (tracked and untracked, not ignored
# files) plus the carried DEST, 64 MiB in all: DEST gets what the tree leaves,
# less 2 MiB for files added before the call.
tree_kib=$(cd "$root" && git ls-files -z -co --exclude-standard | du -ck --files0-from=- 2>/dev/null | tail -n 1 | cut -f1)
limit_mib=$(( (64 * 1024 - ${tree_kib:-16384}) / 1024 - 2 ))
compress_over_kib=1024

# Provided by the target system (glibc, the GCC runtime), its driver or its CUDA installation (NCCL, cuBLAS).
system='^(linux-vdso|ld-linux-x86-64|libc|libm|libmvec|libpthread|libdl|librt|libutil|libresolv|libstdc\+\+|libgcc_s|libcuda|libnvidia-[a-z0-9-]+|libnccl|libcublas|libcublasLt)\.so'
serving=(mla-launch mla-worker mla-coordinator mla-client)

mapfile -t bins < <(find "$build/bin" -maxdepth 1 -type f -name '*_gpu_test' -perm -u+x | sort)
if (( ${#bins[@]} == 0 )); then
  echo "pack.sh: no *_gpu_test binaries in $build/bin; build them first:" >&2
  echo "  cmake -S . -B build -G Ninja && ninja -C build gpu_tests" >&2
  exit 1
fi
for s in "${serving[@]}"; do
  if [[ ! -x $build/bin/$s ]]; then
    echo "pack.sh: no $s in $build/bin; build it first: ninja -C build ${serving[*]}" >&2
    exit 1
  fi
  bins+=("$build/bin/$s")
done
# The decode benchmark: run.sh runs it where packed (build it: ninja -C build mla-bench-decode).
if [[ -x $build/bin/mla-bench-decode ]]; then
  bins+=("$build/bin/mla-bench-decode")
else
  echo "pack.sh: no mla-bench-decode in $build/bin: the packed run.sh will skip the decode benchmark" >&2
fi
# Older builds of it copied there as mla-bench-decode-COMMIT (7 to 40 hex
# digits), for bench_ab.sh's comparison on the same card in the same call.
while read -r b; do
  bins+=("$b")
done < <(find "$build/bin" -maxdepth 1 -type f -perm -u+x -regextype posix-extended \
           -regex '.*/mla-bench-decode-[0-9a-f]{7,40}' | sort)
baseline=$root/../shared/bench/mla_decode_torch_baseline.py

# The launcher check needs the CUDA-enabled serving binaries: a build without
# CUDA compiles fallbacks that refuse --backend cuda with this message.
for s in mla-launch mla-worker; do
  if grep -qa 'this build has no CUDA backend' "$build/bin/$s"; then
    echo "pack.sh: $build/bin/$s was built without the CUDA backend (configure with CUDA and NCCL found)" >&2
    exit 1
  fi
done
needed=$(readelf -d "$build/bin/mla-worker" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
for lib in libnccl.so.2 libcublas.so.13; do
  if ! grep -qx "$lib" <<<"$needed"; then
    echo "pack.sh: $build/bin/mla-worker does not link $lib: not a CUDA/NCCL build" >&2
    exit 1
  fi
done

rm -rf "$dest"
mkdir -p "$dest/bin" "$dest/lib"
missing=0
for b in "${bins[@]}"; do
  cp "$b" "$dest/bin/"
  while read -r name arrow path _; do
    [[ $name =~ $system ]] && continue
    if [[ $arrow == "=>" && $path == "not" ]]; then
      echo "pack.sh: $(basename "$b") needs $name, which is not found here" >&2
      missing=1
      continue
    fi
    [[ $arrow == "=>" && -f $path ]] || continue
    [[ -e $dest/lib/$name ]] || cp -L "$path" "$dest/lib/$name"
  done < <(ldd "$b")
done
cp "$root/tests/gpu/run.sh" "$dest/run.sh"
cp "$root/tests/gpu/launcher_check.sh" "$dest/launcher_check.sh"
cp "$root/tests/gpu/stage_packed.sh" "$dest/stage_packed.sh"
cp "$root/tests/gpu/bench_ab.sh" "$dest/bench_ab.sh"
cp "$root/tests/gpu/ncu_decode.sh" "$dest/ncu_decode.sh"
mkdir -p "$dest/bench"
cp "$root/bench/decode_bench_compare.py" "$root/bench/decode_ab_summary.py" "$dest/bench/"
if [[ -f $baseline ]]; then
  cp "$baseline" "$dest/bench/"
else
  echo "pack.sh: no $baseline: the packed run.sh will run the decode benchmark without its PyTorch baseline" >&2
fi
chmod +x "$dest/run.sh" "$dest/launcher_check.sh" "$dest/bench_ab.sh"
(( missing == 0 )) || exit 1

raw_kib=$(du -sk "$dest" | cut -f1)
chmod u+w "$dest"/bin/* "$dest"/lib/*
strip --strip-unneeded "$dest"/bin/* "$dest"/lib/*

# Every binary must resolve its libraries from the packed folder alone (the
# system ones aside).
for b in "$dest"/bin/*; do
  while read -r name arrow path _; do
    [[ $name =~ $system || $arrow != "=>" ]] && continue
    if [[ $path != "$dest/lib/"* ]]; then
      echo "pack.sh: $(basename "$b"): $name resolves to $path, not to $dest/lib" >&2
      exit 1
    fi
  done < <(LD_LIBRARY_PATH="$dest/lib" ldd "$b")
done
# ... and mla-launch must take --backend cuda (its options are checked before the
# model directory, so a missing directory is the error a CUDA build reports).
msg=$(LD_LIBRARY_PATH="$dest/lib" "$dest/bin/mla-launch" --model /nonexistent --backend cuda 2>&1) || true
if [[ $msg != *"'/nonexistent' is not a directory"* ]]; then
  echo "pack.sh: the packed mla-launch does not accept --backend cuda: $msg" >&2
  exit 1
fi

# The big binaries and libraries travel compressed (see the top). xz checks its own CRC on unpacking.
stripped_kib=$(du -sk "$dest" | cut -f1)
compressed=()
while read -r f; do
  xz -9 -T1 "$f"  # replaces f by f.xz
  compressed+=("$(basename "$f")")
done < <(find "$dest/bin" "$dest/lib" -type f -size +"${compress_over_kib}"k | sort)

size_kib=$(du -sk "$dest" | cut -f1)
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
echo "pack.sh: ${#bins[@]} binaries ($(mib "$(du -sk "$dest/bin" | cut -f1)") MiB), $(find "$dest/lib" -type f | wc -l)" \
  "libraries ($(mib "$(du -sk "$dest/lib" | cut -f1)") MiB, ${#compressed[@]} xz-compressed: ${compressed[*]})"
echo "pack.sh: $(mib "$raw_kib") MiB as copied, $(mib "$stripped_kib") MiB stripped," \
  "$(mib "$size_kib") MiB in $dest (limit $limit_mib MiB: 64 MiB less the $(mib "${tree_kib:-0}") MiB working tree, less 2); largest:"
find "$dest" -type f -printf '%k %P\n' | sort -rn | head -n 8 |
  awk '{ printf "  %7.1f MiB  %s\n", $1 / 1024, $2 }'
if (( size_kib > limit_mib * 1024 )); then
  echo "pack.sh: $dest is over ${limit_mib} MiB" >&2
  exit 1
fi
