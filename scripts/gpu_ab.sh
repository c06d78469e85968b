#!/usr/bin/env bash
# On the GPU machine (device tool): workloads by several trees, alternated, for A/B records.
#   TREES=".ab/main .ab/glu-epilogue" WORKLOADS=3:fp8 ROUNDS=2 bash scripts/gpu_ab.sh
# Each tree is a copy of a commit's pagedllm/, benchmarks/, tests/ and pyproject.toml (make
# them here with `git archive <commit> pagedllm benchmarks tests pyproject.toml | tar -x -C
# .ab/<name>` into an ignored .ab/, and carry [".ab", ".whl"]); each runs from inside its
# folder, so its engine processes import its own package. TESTS="tests/gpu/test_fp8.py -k
# packed" (say) then runs those tests in every tree but the first. Logs under $OUT.
set -uo pipefail
OUT="${OUT:-/tmp/out}"
BUDGET_S="${BUDGET_S:-500}"
mkdir -p "$OUT" /tmp/jobs
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
read -r -a trees <<< "${TREES:?TREES: the tree folders to alternate}"
for round in $(seq "${ROUNDS:-2}"); do
  for tree in "${trees[@]}"; do
    [ $((BUDGET_S - SECONDS)) -gt 60 ] || break 2
    echo "round $round, tree $tree, at ${SECONDS} s" | tee -a "$OUT/ab.log"
    (cd "$tree" && PYTHONPATH="$PWD:/tmp/site" python3 benchmarks/gpu_workloads.py \
      --workloads "${WORKLOADS:-3:fp8}" --timeout 100 --out "/tmp/jobs/ab${round}${tree//\//_}") \
      2>&1 | tee -a "$OUT/ab.log" | grep "^{" | cut -c1-140
  done
done
if [ -n "${TESTS:-}" ]; then
  for tree in "${trees[@]:1}"; do
    [ $((BUDGET_S - SECONDS)) -gt 40 ] || break
    echo "tests in $tree" | tee -a "$OUT/tests.log"
    # TESTS is parsed by a shell, so its quoted -k expression stays one argument
    (cd "$tree" && PYTHONPATH="$PWD:/tmp/site" timeout $((BUDGET_S - SECONDS)) \
      bash -c "python3 -m pytest -q -x -p no:cacheprovider $TESTS") 2>&1 \
      | tee -a "$OUT/tests.log" | tail -3
  done
fi
echo "done at ${SECONDS} s"
