#!/usr/bin/env bash
# The GPU check of fltrain's --device cuda (issue 15), for a machine with a CUDA device; under 5 minutes.
#   1. the CUDA tests (tests/fltrain/test_device.py, test_scattering.py): GPU = CPU up to rounding, for both
#      per-sample gradient engines, the scattering transform and a whole run;
#   2. the DP-SGD benchmark on the GPU, fltrain against Opacus on the same GPU (steps/s and ratios);
#   3. one central DP-SGD run of scatter-linear on MNIST at eps = 3 on the GPU (wall time, test accuracy).
# Usage, from anywhere: bash benchmarks/gpu_check.sh   (PYTHON=/path/to/python to choose the interpreter)
# The real MNIST files must be under ../shared/data (as for the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD" OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
PY="${PYTHON:-python}"
"$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device here')"
"$PY" -c "import torch; print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"
start=$SECONDS
timeout 120 "$PY" -m pytest -q -rs tests/fltrain/test_device.py tests/fltrain/test_scattering.py
echo "== tests: $((SECONDS - start)) s"
timeout 75 "$PY" benchmarks/bench_dpsgd.py --device cuda --batch 256 1024 --steps 20 --rounds 3 --skip-loop
echo "== benchmark done at $((SECONDS - start)) s"
out="$(mktemp -d)/run"
timeout 75 "$PY" -m fltrain run --device cuda --dataset mnist --data-dir ../shared/data --model scatter-linear \
    --clients 1 --rounds 1 --local-steps 270 --batch-size 2048 --lr 4 --eps 3 --max-physical-batch 8192 \
    --val-fraction 0.1 --out "$out" | grep -E '"(test_accuracy|epsilon|sigma|seconds)"'
echo "== gpu_check done in $((SECONDS - start)) s"
