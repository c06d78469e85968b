# The two commands of the README. Each sets up .venv first (skipped when pyproject.toml and
# scripts/setup_env.sh are unchanged since the last setup).
#   make serve ARGS="Qwen/Qwen2.5-0.5B-Instruct --port 9000"   # any `pagedllm serve` flags
VENV ?= .venv
ARGS ?=
export VENV

.PHONY: serve test setup lint bench

serve: setup
	$(VENV)/bin/pagedllm serve $(ARGS)

test: setup
	$(VENV)/bin/python -m pytest -q tests $(ARGS)

setup:
	./scripts/setup_env.sh

lint: setup
	$(VENV)/bin/ruff check pagedllm tests benchmarks
	$(VENV)/bin/ruff format --check pagedllm tests benchmarks

bench: setup
	$(VENV)/bin/python benchmarks/cpu_throughput.py
