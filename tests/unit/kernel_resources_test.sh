#!/usr/bin/env bash
# ctest kernel_resources_test: this build's CUDA kernels read off their objects
# (scripts/sass_report --tsv) and held to kernel_resources_check.py's rules,
# which are then each shown to fail on a report made to break them.
#
#   tests/unit/kernel_resources_test.sh BUILD_DIR
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
report=$(mktemp)
trap 'rm -f "$report"' EXIT
"$here/../../scripts/sass_report" --tsv "$1" >"$report"
python3 "$here/kernel_resources_check.py" --self-test "$report"
