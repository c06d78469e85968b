"""The garbage collector's full passes, counted for the host-time benchmarks."""

from __future__ import annotations

import gc


class FullCollections:
    """Counts the collector's full (oldest-generation) passes while ``on``: each scans
    every tracked object not frozen, a stall of the step it falls in."""

    def __init__(self) -> None:
        self.count = 0
        self.on = False
        gc.callbacks.append(self._seen)

    def _seen(self, phase: str, info: dict[str, int]) -> None:
        if self.on and phase == "stop" and info["generation"] == 2:
            self.count += 1
