#!/usr/bin/env bash
# On the GPU machine (device tool, kind nvidia-h200): W1 and W2 (bfloat16, with W3 on vLLM's
# engine) by pagedllm and by vLLM 0.26.0 in one call of under 9 minutes, for issue 18's ratios.
# Before it, on the same warm machine: every `.vllm-anchor/parts/callN/*` copied into
# /tmp/vllm-parts by its own call (../shared/vllm-anchor/README.md), and `.whl` as in
# scripts/gpu_targets.sh. Carry [".whl", ".vllm-anchor/install_on_device.sh"]; timeout_s 560.
#   WORKLOADS="2,1"   pagedllm's workloads (gpu_workloads.py --workloads)
#   AB_ENV="NAME=V"   pagedllm's workloads again under that setting (an A/B in one call)
#   VLLM_W1=1         0 skips vLLM's W1 (its W2 and W3 always run)
set -uo pipefail
WORKLOADS="${WORKLOADS:-2,1}" AB_ENV="${AB_ENV:-}" VLLM_W1="${VLLM_W1:-1}"
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT" /tmp/jobs
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
VLLM_SMOKE=0 bash .vllm-anchor/install_on_device.sh >"$OUT/install.log" 2>&1
grep -q INSTALL_OK "$OUT/install.log" || { tail -20 "$OUT/install.log"; exit 1; }
echo "vLLM installed at ${SECONDS} s"
(
  export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
  python3 benchmarks/gpu_workloads.py --workloads "$WORKLOADS" --timeout 110 --out /tmp/jobs \
    2>&1 | tee "$OUT/pagedllm.log" | grep "^{\|Error" | tail -10
  if [ -n "$AB_ENV" ]; then
    echo "pagedllm with $AB_ENV"
    env "$AB_ENV" python3 benchmarks/gpu_workloads.py --workloads "$WORKLOADS" --timeout 110 \
      --out /tmp/jobs/ab 2>&1 | tee "$OUT/pagedllm_ab.log" | grep "^{\|Error" | tail -10
  fi
)
echo "pagedllm done at ${SECONDS} s"
(
  . /tmp/vsite/vllm_env.sh
  export PYTHONUNBUFFERED=1
  timeout 240 python3 benchmarks/vllm_offline.py --variant bf16 --out "$OUT" \
    >"$OUT/vllm_bf16.log" 2>&1
  grep RESULT "$OUT/vllm_bf16.log" || tail -5 "$OUT/vllm_bf16.log"
  echo "vLLM W2/W3 done at ${SECONDS} s"
  [ "$VLLM_W1" = 1 ] || exit 0
  timeout $((540 - SECONDS)) python3 benchmarks/vllm_offline.py --workload 1 --out "$OUT" \
    >"$OUT/vllm_w1.log" 2>&1
  grep RESULT "$OUT/vllm_w1.log" || tail -5 "$OUT/vllm_w1.log"
)
tar czf "$OUT/jobs.tgz" -C /tmp jobs
echo "end at ${SECONDS} s"
