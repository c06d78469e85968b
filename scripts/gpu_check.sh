#!/usr/bin/env bash
# On the GPU machine (device tool): GPU tests, then a short smoke run of the engine.
set -uo pipefail
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)"
timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -x -q tests/gpu 2>&1 | tee "$OUT/gpu_tests.log" | tail -40
