#!/usr/bin/env bash
# On the GPU machine (device tool, kind nvidia-h200): the open issues' target figures in one
# call of under 9 minutes, each step guarded by the time left. Default sections, in order:
#   workloads: W3 bf16 (it also warms W4's kernels), W4 twice (report the second: Triton's
#      cache warm), W3 with FP8 weights, W2 bf16, W2 with FP8 weights, W1 (issues 14 and 18;
#      benchmarks/gpu_workloads.py);
#   swap: the host KV tier's multi-turn pair (issue 20; benchmarks/multi_turn.py --swap);
#   launches: W1 under the GPU's decode launch and under (64, 4, 2)
#      (PAGEDLLM_ATTENTION_DECODE_CONFIG), for kernels/attention_launch.py's table.
# Named only (SECTIONS="..."): order (W1's decode attention by the programs' start order),
# w1launch (W1's and W2's decode attention by launch and register cap, W1's by start
# order), branch (a tree under test in .branch/: its W1 and W1 step profile, and this
# tree's profile), ab (W1 by this tree and by .branch's, alternated, twice each), tier (the
# host tier's copy tests on CUDA and benchmarks/host_tier_dma.py; needs pytest's wheels in
# .whl), swapab (the host tier's multi-turn pair by this tree and .branch's, alternated),
# swapfloor (that pair with the device cache holding the whole history: what the tier's
# later turns could at best reach), tierab (one later turn's TTFT by history, tier and
# recomputed, this tree and .branch's), tierprofile (one later turn's request, its history
# brought back and its history resident, profiled: where the floor's time goes), fp8 (W2's
# decode attention over an FP8 cache by launch), sweep (the decode launches swept by
# attention_tuning.py), history (first: a later turn's prefill chunk over a long history by
# launch and split-KV segments, attention_tuning.py --history).
# The image lacks msgspec, pyzmq and gguf: download their wheels here first, into an ignored
# .whl/ that the call carries (the device tool's README: "a Python package missing there"):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux_2_26_x86_64 --platform any -d .whl \
#     msgspec==0.23.0 pyzmq==27.3.0 gguf==0.19.0
# (the tier section's tests: pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 pygments==2.21.0
# too), then run `bash scripts/gpu_targets.sh` with carry [".whl"] and timeout_s 560.
# Sections run in order while the time left allows; SECTIONS="fp8 swap" (say) runs only
# those, in a later call; WORKLOADS="4,4,1" (say) replaces the workloads section's list.
# CARD=H200 runs nothing (exit 3, in a few seconds) unless the GPU's name contains it: an
# `nvidia-h200` call may come on an H100, where the targets' figures would not count.
set -uo pipefail
OUT="${OUT:-/tmp/out}"
BUDGET_S="${BUDGET_S:-530}"  # the command's own end, inside the call's limit
mkdir -p "$OUT" /tmp/jobs
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
card=$(sed -n 2p "$OUT/gpu.txt")
if [[ -n "${CARD:-}" && "$card" != *"$CARD"* ]]; then
  echo "CARD=$CARD: this machine's GPU is $card; nothing run" | tee -a "$OUT/gpu.txt"
  exit 3
fi
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
SECTIONS=" ${SECTIONS:-workloads launches swap} "  # a later call: those left out
want() { [[ "$SECTIONS" == *" $1 "* ]] && [ $((BUDGET_S - SECONDS)) -gt "$2" ]; }
ran() { echo "section $1 done at ${SECONDS} s"; }
# The host tier's multi-turn pair (issue 20), as the swap sections run it (extra flags after).
SWAP_PAIR=(python3 benchmarks/multi_turn.py --swap
  --model benchmarks/model-configs/llama-3.1-8b-instruct --load-format dummy
  --conversations 16 --user-len 600 --reply-len 16 --max-model-len 8192 --no-record)
if want history 150; then  # issue 20: the floor's attention (one wave of long programs)
  timeout 200 python3 benchmarks/attention_tuning.py --history 2>&1 \
    | tee "$OUT/history.log" | tail -40
  ran history
fi
if want workloads 0; then
  python3 benchmarks/gpu_workloads.py --workloads "${WORKLOADS:-3,4,4,3:fp8,2,2:fp8,1}" \
    --timeout 110 \
    --out /tmp/jobs 2>&1 | tee "$OUT/workloads.log" | grep -v "^INFO\|it/s\]" | tail -60
  ran workloads
fi
if want w1launch 100; then  # W1's decode attention by launch, cap and start order; W2's
  timeout 150 python3 benchmarks/attention_tuning.py --w1-launches 2>&1 \
    | tee "$OUT/w1_launches.log" | tail -45
  ran w1launch
fi
if want order 40; then  # W1's decode attention by the programs' start order (the step's tail)
  timeout 60 python3 benchmarks/attention_tuning.py --w1-order 2>&1 \
    | tee "$OUT/w1_order.log" | tail -8
  ran order
fi
# A tree under test (its pagedllm/ and benchmarks/ copied into the ignored .branch/, carried;
# the benchmark puts its own tree first on the path): one W1 step's profile (it warms the
# kernels) and W1 by that tree, then the same profile by this one.
# Run from inside .branch: an engine process started by a tree without
# parent_watch.module_argv imports the pagedllm of its working directory.
if [ -d .branch/pagedllm ] && want branch 200; then
  (cd .branch && python3 benchmarks/gpu_workloads.py --workloads w1prof,1 --timeout 90 \
    --out /tmp/jobs/branch) 2>&1 | tee "$OUT/branch.log" \
    | grep "^{\|paged_attention_kernel\|CUDA time total" | tail -20
  python3 benchmarks/gpu_workloads.py --workloads w1prof --timeout 90 --out /tmp/jobs/main \
    2>&1 | tee "$OUT/main_w1prof.log" | grep "^{\|paged_attention_kernel\|CUDA time total" \
    | tail -20
  ran branch
fi
if [ -d .branch/pagedllm ] && want ab 100; then  # W1 end to end, this tree and .branch's, alternated
  for tree in . .branch . .branch; do
    [ $((BUDGET_S - SECONDS)) -gt 50 ] || break
    echo "tree ${tree}"
    (cd "$tree" && python3 benchmarks/gpu_workloads.py --workloads 1 --timeout 80 \
      --out "/tmp/jobs/ab${tree#.}${SECONDS}") 2>&1 | tee -a "$OUT/ab_w1.log" | grep "^{"
  done
  ran ab
fi
if want fp8 80; then  # W2's decode attention over an FP8 cache by launch (issue 14)
  timeout 100 python3 benchmarks/attention_tuning.py --fp8-decode 2>&1 \
    | tee "$OUT/fp8_decode.log" | tail -9
  ran fp8
fi
if want swap 90; then  # the host KV tier's multi-turn pair (issue 20)
  timeout $((BUDGET_S - SECONDS)) "${SWAP_PAIR[@]}" 2>&1 | tee "$OUT/multi_turn.log" \
    | grep -v "^INFO" | tail -20
  ran swap
fi
if want tier 60; then  # issue 20: the tier's copies on this GPU (its tests), and their DMA probe
  timeout 120 python3 -m pytest -q -p no:cacheprovider tests/engine/test_swap_space.py \
    -k "round_trip or saves_ahead" 2>&1 | tee "$OUT/tier_tests.log" | tail -3
  timeout 90 python3 benchmarks/host_tier_dma.py 2>&1 | tee "$OUT/tier_dma.log" | tail -6
  ran tier
fi
if [ -d .branch/pagedllm ] && want tierab 100; then  # one later turn's TTFT, this tree and .branch's
  for tree in . .branch; do
    echo "tree ${tree}"
    (cd "$tree" && PYTHONPATH="$PWD:/tmp/site" timeout 100 python3 benchmarks/host_tier_overlap.py \
      --model benchmarks/model-configs/llama-3.1-8b-instruct --histories 1024,3072,5120 \
      --trials 3 --no-profile) 2>&1 | tee -a "$OUT/tierab.log" | grep -v "^INFO" | tail -12
  done
  ran tierab
fi
if [ -d .branch/pagedllm ] && want swapab 150; then  # the host tier's pair, this tree and .branch's
  for tree in . .branch . .branch; do
    [ $((BUDGET_S - SECONDS)) -gt 110 ] || break
    echo "tree ${tree}"
    (cd "$tree" && PYTHONPATH="$PWD:/tmp/site" timeout 150 "${SWAP_PAIR[@]}") 2>&1 \
      | tee -a "$OUT/swapab.log" | grep "^| [0-9]\|later turns\|prompt tokens"
  done
  ran swapab
fi
if want swapfloor 90; then  # the same pair with the whole history on the device: the floor
  timeout $((BUDGET_S - SECONDS)) "${SWAP_PAIR[@]}" --device-fraction 1.2 2>&1 \
    | tee "$OUT/multi_turn_floor.log" | grep "later turns"
  ran swapfloor
fi
if want tierprofile 100; then  # issue 20: a 3,072-token history's request, tier and floor
  timeout 150 python3 benchmarks/host_tier_overlap.py \
    --model benchmarks/model-configs/llama-3.1-8b-instruct --histories 3072 --trials 3 \
    --profile-floor 2>&1 | tee "$OUT/tier_profile.log" | grep -v "^INFO" | tail -60
  ran tierprofile
fi
if want sweep 170; then  # the decode launches swept on this GPU's attention shapes
  timeout 150 python3 benchmarks/attention_tuning.py 2>&1 | tee "$OUT/sweep.log" | tail -30
  ran sweep
fi
if want launches 70; then  # issue 18: this GPU's decode launch against (64, 4, 2), end to end
  for spec in "" 64,4,2; do
    [ $((BUDGET_S - SECONDS)) -gt 60 ] || break
    echo "PAGEDLLM_ATTENTION_DECODE_CONFIG=${spec:-tuned}"
    PAGEDLLM_ATTENTION_DECODE_CONFIG=$spec python3 benchmarks/gpu_workloads.py --workloads 1 \
      --timeout 90 --out "/tmp/jobs/launch${spec}" 2>&1 | tee -a "$OUT/launches_w1.log" | grep "^{"
  done
  ran launches
fi
tar czf "$OUT/jobs.tgz" -C /tmp jobs
echo "end at ${SECONDS} s"
