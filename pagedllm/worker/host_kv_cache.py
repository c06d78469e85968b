"""The host tier's memory on one rank, and the copies the scheduler asks for each step
(``core/host_tier.py`` decides them; this only moves bytes).

One host slot holds one block of this rank's KV, every layer of its stage, K and V:
``host[slot]`` is one contiguous run of bytes (layers x 2 x block_size x heads x head_dim
values), so a run of consecutive slots is one copy. Bytes, not values: the device caches
are viewed as uint8, so FP8 caches (and any dtype) are copied exactly.

With CUDA the tier is pinned memory and the copies are queued on the current stream with
``non_blocking``: the host thread does not wait for them, and stream order puts them after
the previous step's forward pass (which may still be writing a block being saved) and
before this step's (which overwrites saved blocks and reads loaded ones). Nothing on the
host ever reads the tier, so no synchronisation is needed.
"""

from __future__ import annotations

import torch

# Most blocks gathered into one device staging buffer at a time (the staging is transient
# device memory outside the KV budget; this bounds it).
_STAGING_BYTES = 64 << 20


class HostKVCache:
    def __init__(self, kv_caches: list[torch.Tensor], num_slots: int) -> None:
        # This rank's stage's layers (other stages' entries are empty), as raw bytes.
        self.layers = [cache.view(torch.uint8) for cache in kv_caches if cache.numel() > 0]
        if not self.layers:
            raise ValueError("The host KV tier needs this rank to hold KV cache layers.")
        first = self.layers[0]
        self.device = first.device
        # Per layer (2, blocks, block_size, heads, head_dim bytes): a slot drops ``blocks``.
        self.block_shape = (len(self.layers), 2, *first.shape[2:])
        pin = self.device.type == "cuda"
        self.host = torch.empty(
            (num_slots, *self.block_shape), dtype=torch.uint8, device="cpu", pin_memory=pin
        )
        block_bytes = self.host[0].numel()
        self._chunk = max(1, _STAGING_BYTES // block_bytes)

    @property
    def num_bytes(self) -> int:
        return self.host.numel()

    def swap_out(self, copies: list[tuple[int, int]]) -> None:
        """(device block, host slot) pairs: save the blocks' KV in the slots."""
        for start in range(0, len(copies), self._chunk):
            chunk = copies[start : start + self._chunk]
            blocks = self._index([b for b, _ in chunk])
            # (layers, 2, n, ...) -> (n, layers, 2, ...): one contiguous run per block.
            staging = torch.stack([layer[:, blocks] for layer in self.layers])
            staging = staging.permute(2, 0, 1, *range(3, staging.dim())).contiguous()
            for first, slot, count in _runs([s for _, s in chunk]):
                self.host[slot : slot + count].copy_(
                    staging[first : first + count], non_blocking=True
                )

    def swap_in(self, copies: list[tuple[int, int]]) -> None:
        """(host slot, device block) pairs: write the slots' KV into the blocks."""
        for start in range(0, len(copies), self._chunk):
            chunk = copies[start : start + self._chunk]
            staging = torch.empty(
                (len(chunk), *self.block_shape), dtype=torch.uint8, device=self.device
            )
            for first, slot, count in _runs([s for s, _ in chunk]):
                staging[first : first + count].copy_(
                    self.host[slot : slot + count], non_blocking=True
                )
            blocks = self._index([b for _, b in chunk])
            for i, layer in enumerate(self.layers):
                layer.index_copy_(1, blocks, staging[:, i].transpose(0, 1))

    def _index(self, ids: list[int]) -> torch.Tensor:
        """Block ids on the device. Through pinned memory with CUDA: a copy from pageable
        memory would wait for the device to finish the previous step."""
        index = torch.tensor(ids, dtype=torch.int64)
        if self.device.type != "cuda":
            return index
        return index.pin_memory().to(self.device, non_blocking=True)


def _runs(slots: list[int]) -> list[tuple[int, int, int]]:
    """(index of the run's first pair, its first slot, its length) for each run of
    consecutive slots: one copy each."""
    runs: list[tuple[int, int, int]] = []
    for i, slot in enumerate(slots):
        if runs and runs[-1][1] + runs[-1][2] == slot:
            first, start, count = runs[-1]
            runs[-1] = (first, start, count + 1)
        else:
            runs.append((i, slot, 1))
    return runs
