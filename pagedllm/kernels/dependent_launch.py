"""Programmatic dependent launch (PDL, Hopper and later) for the kernels of a decode step.

A single stream's decode step is a chain of ~350 kernels, most of them a few microseconds
long, each waiting for the one before. With PDL a kernel is launched while its predecessor
still runs: its programs are placed on the multiprocessors as soon as every program of the
predecessor has started, and wait there (``await_inputs``) until the predecessor has
finished and its writes are visible, so the launch and the programs' start overlap the
predecessor's last wave instead of following it.

Invariant: a kernel launched with PDL reads and writes no global memory before
``await_inputs`` returns; so it sees everything every earlier kernel wrote (each of them
finished its own wait before touching memory), and writes nothing an earlier kernel still
reads. Kernels launched without it (cuBLAS, torch's) are ordered as usual.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import triton
import triton.language as tl

from pagedllm import envs


@functools.cache
def _capable(index: int) -> bool:
    return torch.cuda.get_device_capability(index) >= (9, 0)


def enabled(device: torch.device) -> bool:
    """PDL for kernels on ``device``: a CUDA device of compute capability 9.0+, unless
    ``PAGEDLLM_PDL=0``."""
    if device.type != "cuda" or not envs.dependent_launch():
        return False
    return _capable(device.index if device.index is not None else torch.cuda.current_device())


def launch_args(device: torch.device) -> dict[str, Any]:
    """The keywords a kernel with a ``PDL`` argument is launched with on ``device``: that
    argument, and Triton's launch option where it is on (``enabled``)."""
    return {"PDL": True, "launch_pdl": True} if enabled(device) else {"PDL": False}


@triton.jit
def await_inputs(PDL: tl.constexpr):
    """A PDL kernel's first statement: wait for the kernel before it (its writes visible),
    then let the next kernel's programs be placed."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
