"""The block ids of every request the runner holds, one row each, in one int32 array.

A step's block table is then one indexing call over its requests' rows; gathering each
request's own list was ~0.8 ms of host time a step at 1,024 requests (RESULTS "The host's
time per step at 256 to 1,024 requests"). Invariant: row ``r``'s first ``lengths[r]``
entries are its request's block ids, in order; entries past them are stale.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class BlockTable:
    def __init__(self, rows: int = 64, columns: int = 64) -> None:
        self.ids = np.zeros((rows, columns), dtype=np.int32)
        self.lengths = np.zeros(rows, dtype=np.int64)
        self._free_rows = list(range(rows - 1, -1, -1))  # popped from the end: row 0 first

    def add(self, block_ids: Sequence[int]) -> int:
        """A row for a new request, holding ``block_ids``."""
        if not self._free_rows:
            self._grow_rows()
        row = self._free_rows.pop()
        self.lengths[row] = 0
        self.extend(row, block_ids)
        return row

    def extend(self, row: int, block_ids: Sequence[int]) -> None:
        if not block_ids:
            return
        start = int(self.lengths[row])
        end = start + len(block_ids)
        if end > self.ids.shape[1]:
            self._grow_columns(end)
        self.ids[row, start:end] = block_ids
        self.lengths[row] = end

    def replace(self, row: int, block_ids: Sequence[int]) -> None:
        """A resumed request's new blocks (it recomputes from its first)."""
        self.lengths[row] = 0
        self.extend(row, block_ids)

    def release(self, row: int) -> None:
        self._free_rows.append(row)

    def row(self, row: int) -> list[int]:
        return self.ids[row, : self.lengths[row]].tolist()

    def gather(self, rows: np.ndarray, needed: np.ndarray) -> np.ndarray:
        """[len(rows), max(needed)]: each row's first ``needed`` block ids, 0-padded."""
        assert np.all(needed <= self.lengths[rows]), "a context past its request's blocks"
        width = int(needed.max())
        table = self.ids[rows, :width]  # fancy indexing: a copy
        table[np.arange(width) >= needed[:, None]] = 0
        return table

    def _grow_rows(self) -> None:
        old = self.ids.shape[0]
        self.ids = np.concatenate([self.ids, np.zeros_like(self.ids)])
        self.lengths = np.concatenate([self.lengths, np.zeros_like(self.lengths)])
        self._free_rows = list(range(2 * old - 1, old - 1, -1))

    def _grow_columns(self, needed: int) -> None:
        columns = self.ids.shape[1]
        while columns < needed:
            columns *= 2
        grown = np.zeros((self.ids.shape[0], columns), dtype=np.int32)
        grown[:, : self.ids.shape[1]] = self.ids
        self.ids = grown
