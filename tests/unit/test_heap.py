"""The engine's processes keep long-lived objects out of the garbage collector's passes."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

SCRIPT = """
import gc
from pagedllm.core.block_pool import BlockPool, KVCacheBlock
from pagedllm.engine.heap import freeze_built_engine, freeze_library_heap

collections = []
gc.callbacks.append(lambda phase, info: collections.append(phase) if phase == "start" else None)
freeze_library_heap(own_process={own})
libraries = gc.get_freeze_count()
library_collections = len(collections)
pool = BlockPool(5000, True)  # 5,000 linked blocks, as an engine builds them
freeze_built_engine()
in_generations = sum(isinstance(o, KVCacheBlock) for o in gc.get_objects())
print("counts", libraries, gc.get_freeze_count() - libraries, in_generations, library_collections)
"""


def numbers(script: str, tag: str, env: dict[str, str]) -> list[int]:
    """Run ``script`` in a fresh interpreter; the numbers of its output line ``tag ...``."""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
        env=os.environ | env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith(tag + " "))
    logged = re.findall(r"The built engine's (\d+) objects", done.stdout + done.stderr)
    return [int(v) for v in line.split()[1:]] + [int(v) for v in logged]


def run(env: dict[str, str], own_process: bool = True) -> list[int]:
    return numbers(SCRIPT.format(own=own_process), "counts", env)


@pytest.mark.parametrize("own_process", [True, False])
def test_a_built_engine_leaves_the_collectors_generations(own_process: bool):
    libraries, built, blocks_in_generations, collections, logged = run({}, own_process)
    assert libraries > 10_000
    # the pool's blocks (and their list) frozen: no generation holds any of them
    assert built >= 5_000 and blocks_in_generations == 0
    # The start-up log's count is the objects frozen, give or take a few transient ones
    # (the list that counted them among them).
    assert abs(logged - built) <= 16
    # Only a user's process is collected before its libraries are frozen: in pagedllm's own
    # processes that full pass is on the path to the first step.
    assert (collections == 0) == own_process


def test_freezing_off_freezes_nothing():
    libraries, built, blocks_in_generations, _ = run({"PAGEDLLM_FREEZE_GC": "0"})
    assert (libraries, built) == (0, 0)
    assert blocks_in_generations >= 5_000  # the queue's two sentinels besides


THRESHOLD_SCRIPT = """
import gc
from pagedllm.engine.heap import SERVER_YOUNG_THRESHOLD, widen_young_generation

before = gc.get_threshold()
widen_young_generation()
print("thresholds", *before, *gc.get_threshold(), SERVER_YOUNG_THRESHOLD)
"""


def thresholds(env: dict[str, str]) -> list[int]:
    return numbers(THRESHOLD_SCRIPT, "thresholds", env)


def test_a_server_process_widens_the_young_generation_only():
    *before, young, older, oldest, wanted = thresholds({})
    assert young == wanted > before[0] and [older, oldest] == before[1:]


def test_freezing_off_leaves_the_collectors_settings_alone():
    *before, young, older, oldest, _ = thresholds({"PAGEDLLM_FREEZE_GC": "0"})
    assert [young, older, oldest] == before
