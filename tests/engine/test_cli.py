"""The ``pagedllm`` command line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CLI = [sys.executable, "-m", "pagedllm.entrypoints.cli.main"]
# The engine core in the command's own process: what a test reads (the reply, the log) does
# not depend on where the core runs, and a core process costs ~5 s of imports. The first
# test keeps the default, the core in a process of its own.
IN_PROCESS = {"PAGEDLLM_ENABLE_MULTIPROCESSING": "0"}


def run(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, input=stdin, timeout=600,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_chat_one_message_streams_a_reply():
    done = run(
        "chat",
        "--message",
        "What is 2+2?",
        "--temperature",
        "0",
        "--max-tokens",
        "12",
        "--kv-cache-memory-bytes",
        "64M",
        "--max_model_len",
        "1024",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "4" in done.stdout


def test_fp8_flags_as_vllm_users_type_them():
    done = run(
        "chat", "--message", "What is 2+2?", "--temperature", "0", "--max-tokens", "12",
        "--kv-cache-memory-bytes", "64M", "--max-model-len", "1024",
        "--quantization", "fp8", "--kv-cache-dtype", "fp8", "--calculate-kv-scales",
        env=IN_PROCESS,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "4" in done.stdout
    logs = done.stdout + done.stderr
    assert "FP8 weights in 120 linear layers" in logs  # SmolLM2: 30 layers x 4
    assert "in float8_e4m3fn" in logs and "scales come from the first step" in logs


def test_chat_reads_turns_from_stdin():
    done = run(
        "chat",
        "--temperature",
        "0",
        "--max-tokens",
        "8",
        "--kv-cache-memory-bytes",
        "64M",
        "--max-model-len",
        "1k",
        stdin="Hi!\nSay yes.\n",
        env=IN_PROCESS,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert len([line for line in done.stdout.splitlines() if line.strip()]) >= 2


# The two below go through the command's main() in this process: they need no engine, and a
# process each paid ~4 s of imports (the tests above run the real command end to end).


def test_unsupported_flag_fails_with_its_name(capsys):
    from pagedllm.entrypoints.cli.main import main

    assert main(["chat", "--message", "hi", "-q", "gptq"]) == 2
    assert "quantization='gptq' is not supported; pagedllm supports fp8" in capsys.readouterr().err


def test_help_lists_vllm_flag_spellings(capsys):
    from pagedllm.entrypoints.cli.main import main

    with pytest.raises(SystemExit) as done:
        main(["chat", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--max-model-len", "--max_model_len", "--enforce-eager", "--block-size"):
        assert flag in out
