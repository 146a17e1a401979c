# Sourced by run.sh and launcher_check.sh (bash).
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
