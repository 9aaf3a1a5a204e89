#!/usr/bin/env bash
# The GPU record, on a machine without a package registry.
#
#   experiments/benchmarks/gpu_record.sh download [PYTHON_VERSION]   # HERE (a registry is reachable):
#       pip-downloads pfl-research 0.6 and its dependencies, as wheels for PYTHON_VERSION (default: this
#       python's, e.g. 3.11) on manylinux x86_64, into experiments/benchmarks/wheels/. numpy, scipy and
#       torch are left out (the GPU machine has them; WITH_NUMPY=1 adds numpy and scipy, ~50 MB).
#       The folder is untracked: it travels with the working tree to the GPU machine; do not commit it.
#   experiments/benchmarks/gpu_record.sh run [gpu_record.py options]    # ON THE GPU MACHINE:
#       installs pfl from that folder (pip --no-index), then runs gpu_record.py; without the folder (or
#       if pip fails) the record runs without pfl and says why.
set -euo pipefail
cd "$(dirname "$0")/../.."
WHEELS=experiments/benchmarks/wheels
PYTHON=${PYTHON:-python3}
mode=${1:-run}
shift || true

case "$mode" in
  download)
    version=${1:-$($PYTHON -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}
    mkdir -p "$WHEELS"
    # pfl and a consistent set of its dependencies, as binary wheels for the target Python; then numpy
    # and scipy are dropped unless asked for (the GPU machine's own satisfy pfl: numpy<3, scipy>=1.7.3).
    $PYTHON -m pip download --only-binary=:all: --python-version "$version" --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
      -d "$WHEELS" "pfl==0.6.*"
    if [ "${WITH_NUMPY:-0}" != 1 ]; then rm -f "$WHEELS"/numpy-*.whl "$WHEELS"/scipy-*.whl; fi
    du -sh "$WHEELS"
    ;;
  run)
    if ! $PYTHON -c "import pfl" 2>/dev/null; then
      if [ -d "$WHEELS" ]; then
        $PYTHON -m pip install --no-index --find-links "$WHEELS" "pfl==0.6.*" \
          || echo "gpu_record.sh: pip could not install pfl from $WHEELS; the record runs without it"
      else
        echo "gpu_record.sh: no $WHEELS folder (run 'gpu_record.sh download' where a registry is reachable)"
      fi
    fi
    exec $PYTHON experiments/benchmarks/gpu_record.py "$@"
    ;;
  *)
    echo "usage: gpu_record.sh download [PYTHON_VERSION] | run [gpu_record.py options]" >&2
    exit 2
    ;;
esac
