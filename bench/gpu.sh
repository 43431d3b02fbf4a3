#!/usr/bin/env bash
# Everything issue 5 asks of a GPU machine, in calls that each fit a 10-minute limit:
#
#   bash bench/gpu.sh check              # kernel tests with compiled Triton kernels, backend by name
#   bash bench/gpu.sh suite CONFIG...    # bench/laplacian.py --suite for these configs
#
# CONFIG names: paper-B256 paper-B1024 paper-B4096 pinn-D2-B4096 pinn-D2-B65536
# pinn-D5-B4096 pinn-D5-B65536 biharmonic (bench/laplacian.py's configs()). Results go to
# $OUT (the device tool's folder) or bench/results/; afterwards `python bench/report.py`
# renders them into docs/benchmarks.md. torch-jet needs Python >= 3.12 (the GPU image has
# it): carry its wheel in .whl/ (fetched with `pip download --no-deps jet-for-pytorch==1.0.0
# -d .whl`) and this script installs it first.
set -euo pipefail
OUT=${OUT:-bench/results}
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
  | tee -a "$OUT/gpu.txt"

case "${1:-}" in
  check)
    TAYLORC_TEST_DEVICE=cuda python3 -m pytest -q -p no:cacheprovider \
      tests/test_kernels.py tests/test_mlp_kernel.py 2>&1 | tee "$OUT/kernel-tests-cuda.txt"
    ;;
  suite)
    shift
    python3 bench/laplacian.py --device cuda --suite --configs "$@" --out "$OUT" 2>&1 \
      | tee "$OUT/suite-$(echo "$@" | tr ' ' '-').txt"
    ;;
  *)
    echo "usage: bash bench/gpu.sh check | suite CONFIG..." >&2
    exit 2
    ;;
esac
