"""A child process that must not outlive its parent."""

from __future__ import annotations

import os
import signal
import threading


def exit_with_parent(fd: int) -> None:
    """The parent holds our stdin open for its whole life: its end means the parent is
    gone (even killed), and this process must not outlive it. Reads the raw fd (a buffered
    reader's lock would trouble the interpreter's shutdown)."""

    def watch() -> None:
        while os.read(fd, 1 << 16):
            pass
        os._exit(0)

    threading.Thread(target=watch, name="pagedllm-parent-watch", daemon=True).start()


def ignore_terminal_interrupt() -> None:
    """A terminal's Ctrl-C reaches every process of its group, this one too. The parent
    decides when this process ends (a shutdown message, or the end of its stdin, above):
    SIGINT must not kill it mid-step with a traceback of its own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
