# Sourced by run.sh, bench_ab.sh and launcher_check.sh (bash): stage_packed, and
# for the first two pick_dir, enter_packed and use_machine_lib (below).
#
# stage_packed DIR: DIR is a folder made by pack.sh, or a build tree. pack.sh
# xz-compresses the files over 1 MiB (bin/NAME.xz, lib/NAME.xz) so that the
# folder travels small to the GPU machine. When DIR holds any, this copies DIR
# into a fresh temporary folder, unpacks them there (never in DIR, whose size
# is what travels) and prints that folder; else it prints DIR. The caller
# removes a folder that is not DIR. Unpacking runs without the packed
# libraries on the loader's path (they are not xz's or Python's): with xz, else
# Python's lzma (the GPU machine has Python for PyTorch).
stage_packed() {
  local src=$1 dst f
  if ! compgen -G "$src/bin/*.xz" >/dev/null && ! compgen -G "$src/lib/*.xz" >/dev/null; then
    echo "$src"
    return 0
  fi
  dst=$(mktemp -d "${TMPDIR:-/tmp}/mla-gpu.XXXXXX") || return 1
  cp -a "$src"/. "$dst"/ || return 1
  for f in "$dst"/bin/*.xz "$dst"/lib/*.xz; do
    [[ -e $f ]] || continue
    if command -v xz >/dev/null; then
      env -u LD_LIBRARY_PATH xz -d "$f"  # f.xz -> f, mode kept
    else
      env -u LD_LIBRARY_PATH python3 -c \
        'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
        "$f" "${f%.xz}" && rm -f "$f"
    fi || { echo "stage_packed: cannot unpack $f" >&2; return 1; }
  done
  chmod u+x "$dst"/bin/* 2>/dev/null
  echo "$dst"
}

# The folder a script that takes [DIR] runs from: DIR when given (FIRST is the
# script's first argument, "--" meaning none), else the folder holding the
# script (HERE) when it has a bin/ (a packed copy), else ./build.
pick_dir() {  # HERE FIRST
  if [[ -n ${2:-} && $2 != -- ]]; then
    echo "$2"
  elif [[ -d $1/bin ]]; then
    echo "$1"
  else
    echo build
  fi
}

# enter_packed NAME: stages the caller's $dir (stage_packed), points $dir at
# the copy (removed on exit) and puts its lib/ first on LD_LIBRARY_PATH. NAME
# prefixes the messages.
enter_packed() {
  local staged
  staged=$(stage_packed "$dir") || { echo "$1: cannot unpack $dir" >&2; return 1; }
  if [[ $staged != "$dir" ]]; then
    trap "rm -rf '$staged'" EXIT
    echo "$1: unpacked $dir into $staged"
    dir=$staged
  fi
  [[ -d $dir/lib ]] && export LD_LIBRARY_PATH="$dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  return 0
}

# use_machine_lib NAME LIB: a library the packed folder leaves to this
# machine's CUDA installation. When the loader does not know LIB, look in the
# toolkit, then anywhere under /usr and /opt (pip wheels such as
# nvidia-cublas), and append its folder to LD_LIBRARY_PATH.
use_machine_lib() {
  ldconfig -p 2>/dev/null | grep -q "^[[:space:]]*$2 " && return 0
  local d found=""
  for d in ${CUDA_HOME:+"$CUDA_HOME/lib64"} /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [[ -e $d/$2 ]] && { found=$d/$2; break; }
  done
  [[ -n $found ]] || found=$(find /usr /opt -name "$2" -print -quit 2>/dev/null)
  if [[ -n $found ]]; then
    echo "$1: $2 from $(dirname "$found")"
    export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$(dirname "$found")"
  else
    echo "$1: $2 not found on this machine (what needs it will fail to start)" >&2
  fi
}
