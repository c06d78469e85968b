# The two commands of the README. Each sets up (or refreshes) .venv first.
VENV ?= .venv
export VENV

.PHONY: serve test setup lint bench

serve: setup
	$(VENV)/bin/pagedllm serve

test: setup
	$(VENV)/bin/python -m pytest -q tests

setup:
	./scripts/setup_env.sh

lint: setup
	$(VENV)/bin/ruff check pagedllm tests benchmarks
	$(VENV)/bin/ruff format --check pagedllm tests benchmarks

bench: setup
	$(VENV)/bin/python benchmarks/cpu_throughput.py
