"""A child process that must not outlive its parent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from typing import Any

# Runs argv[2] as ``__main__`` after putting the parent's import path in place (argv[1]).
_BOOT = (
    "import json, runpy, sys; sys.path[:] = json.loads(sys.argv[1]); module = sys.argv[2]; "
    "del sys.argv[1:3]; runpy.run_module(module, run_name='__main__', alter_sys=True)"
)


def module_argv(module: str, *args: str) -> list[str]:
    """The command that runs ``module`` (as ``python -m`` would, with ``args``) in a child
    that imports what this process imports: this process's ``sys.path`` replaces the
    child's. ``python -m`` alone puts the working directory first, so a ``pagedllm`` folder
    there (another checkout, or one planted by whoever can write to it) would run in the
    engine's processes instead of the package the parent loaded."""
    return [sys.executable, "-c", _BOOT, json.dumps(sys.path), module, *args]


def exit_with_parent(fd: int) -> None:
    """The parent holds our stdin open for its whole life: its end means the parent is
    gone (even killed), and this process must not outlive it. Reads the raw fd (a buffered
    reader's lock would trouble the interpreter's shutdown)."""

    def watch() -> None:
        while os.read(fd, 1 << 16):
            pass
        os._exit(0)

    threading.Thread(target=watch, name="pagedllm-parent-watch", daemon=True).start()


def spawn_owned(argv: list[str], **popen_kwargs: Any) -> subprocess.Popen:
    """Start a child whose life its parent owns: the parent ends it (a message, a kill, or
    the end of its stdin, above). It runs in a session of its own, so a terminal's signals
    (Ctrl-C's SIGINT to the whole foreground group) reach only the parent, which then ends
    its children in order. Ignoring SIGINT inside the child is not enough: the signal can
    arrive during the interpreter's start or imports, before any of our code runs, and
    print a KeyboardInterrupt traceback of its own."""
    return subprocess.Popen(argv, start_new_session=True, **popen_kwargs)
