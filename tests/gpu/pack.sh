#!/usr/bin/env bash
# Packs the GPU tests for a machine with a GPU and CUDA but none of this
# machine's Debian libraries (no Abseil, gRPC or glog there):
#
#   tests/gpu/pack.sh [BUILD_DIR] [DEST]      (defaults: build, .gpu at the repo root)
#
# DEST gets bin/ (the *_gpu_test binaries), lib/ (the shared libraries they
# load, minus glibc, libstdc++/libgcc and the CUDA driver, which that machine
# has; cudart is linked statically; cuBLAS, 600 MB, comes from that machine's
# CUDA installation: run.sh finds it) and run.sh. There: `bash DEST/run.sh`.
# DEST is git-ignored (.gpu/) and must stay well under 64 MiB (it travels).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
dest=${2:-$root/.gpu}
limit_mib=48

# Provided by the target system (glibc, the GCC runtime), its driver or its CUDA installation (NCCL, cuBLAS).
system='^(linux-vdso|ld-linux-x86-64|libc|libm|libmvec|libpthread|libdl|librt|libutil|libresolv|libstdc\+\+|libgcc_s|libcuda|libnvidia-[a-z0-9-]+|libnccl|libcublas|libcublasLt)\.so'

mapfile -t bins < <(find "$build/bin" -maxdepth 1 -type f -name '*_gpu_test' -perm -u+x | sort)
if (( ${#bins[@]} == 0 )); then
  echo "pack.sh: no *_gpu_test binaries in $build/bin; build them first:" >&2
  echo "  cmake -S . -B build -G Ninja && ninja -C build gpu_tests" >&2
  exit 1
fi
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
chmod +x "$dest/run.sh"
(( missing == 0 )) || exit 1

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

size_kib=$(du -sk "$dest" | cut -f1)
echo "pack.sh: ${#bins[@]} binaries, $(find "$dest/lib" -type f | wc -l) libraries, $((size_kib / 1024)) MiB in $dest"
if (( size_kib > limit_mib * 1024 )); then
  echo "pack.sh: $dest is over ${limit_mib} MiB" >&2
  exit 1
fi
