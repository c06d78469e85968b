"""What Python's garbage collector traverses in an engine's processes.

Each step allocates its outputs (one or more objects per request), and the collections those
allocations trigger traverse every container object in the generations; a full collection
traverses all of them. Objects that live as long as the process are moved out of the
generations (``gc.freeze``) so a collection no longer walks them. Frozen objects are still
freed when their reference count drops to zero; only garbage held in reference cycles
among them is never found, which is why what a user may delete is never frozen.
"""

from __future__ import annotations

import atexit
import gc

from pagedllm import envs
from pagedllm.logger import init_logger

logger = init_logger(__name__)

_library_frozen = False


def freeze_library_heap(own_process: bool = False) -> None:
    """Once per process, before the first engine builds anything: move what exists (the
    modules of torch, transformers and the rest, ~97% of the objects an engine process
    holds) out of the garbage collector's generations, so the full collections that each
    step's output objects trigger do not traverse it (ms per step with logprobs on).
    Engines themselves stay collectable: deleting one frees it as before.

    ``own_process``: a process pagedllm started (the engine core's, a rank's worker), whose
    heap is its imports: frozen without a full collection first, which would walk all of
    it (~300k objects, 0.2 s on the CPU, on the path to the engine's first step) to find
    the ~75 objects of cyclic garbage the imports leave, which stay frozen until exit. A
    user's process is collected first: its garbage may hold anything (a model deleted)."""
    global _library_frozen
    if _library_frozen or not envs.freeze_gc():
        return
    _library_frozen = True
    if not own_process:
        gc.collect()
    gc.freeze()
    # Thawed at exit, so the interpreter's last collection still finalizes these objects
    # (native extensions report what is never freed as leaks).
    atexit.register(gc.unfreeze)


def freeze_built_engine() -> None:
    """In a process that ends with its engine (the engine core process, a rank's worker
    process), once the engine is built: move it out of the generations too (the block
    pool's blocks, one linked object per KV block, 56,000 of them for W1 on an H200; the
    model's modules; the runner), so the collections its steps trigger walk only the
    requests (RESULTS "The host's time per step at 256 to 1,024 requests"). Never in a
    user's process, where the engine may be deleted and its reference cycles must still
    be collected."""
    if not envs.freeze_gc():
        return
    gc.collect()
    # What the generations hold now is what freeze() moves. Counted here rather than by
    # gc.get_freeze_count(), which walks every frozen object (the libraries' 300k+: 40-75
    # ms a call on the CPU, on the path to the engine's first step).
    objects = len(gc.get_objects())
    gc.freeze()
    logger.info(
        "The built engine's %d objects are kept out of the garbage collector's passes.", objects
    )


# Young objects allowed before the collector's first-generation pass in an API server
# process (the interpreter's default is 700). CPython counts allocations net of frees: a
# step's outputs for every stream (a RequestOutput, its completion and lists, the chunk
# sent) live until the next step's replace them, so the count swings by their number each
# step. Above that swing, they die by reference count before a pass can promote them; at
# 700, every pass promoted the live ones and the old generation filled with them, bringing
# on a full pass over every request's state every ~17 steps at 1,024 streams (17-50 ms;
# RESULTS "The front end's time per step and its full collections").
SERVER_YOUNG_THRESHOLD = 50_000


def widen_young_generation() -> None:
    """In a ``pagedllm serve`` API server process (never a user's process, whose collector
    settings are the user's): the first generation holds a step's objects for every stream
    (``SERVER_YOUNG_THRESHOLD``). ``PAGEDLLM_FREEZE_GC=0`` leaves the settings alone too."""
    if not envs.freeze_gc():
        return
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(SERVER_YOUNG_THRESHOLD, older, oldest)
