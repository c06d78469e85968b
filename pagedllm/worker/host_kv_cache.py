"""The host tier's memory on one rank, and the copies the scheduler asks for each step
(``core/host_tier.py`` decides them; this only moves bytes).

One host slot holds one block of this rank's KV, every layer of its stage, K and V:
``host[slot]`` is one contiguous run of bytes (layers x 2 x block_size x heads x head_dim
values). Bytes, not values: the device caches are viewed as integers, so FP8 caches (and any
dtype) are copied exactly.

With CUDA the tier is pinned memory, which kernels read and write directly
(``kernels/kv_block_copy.py``: one launch per layer, however scattered the slots):
- swap-outs run on the current stream, so stream order puts them after the previous step's
  forward pass (which may still be writing a block being saved) and before this step's
  (which overwrites saved blocks);
- swap-ins run on a side stream that first waits for everything queued on the current one,
  one layer after another, each layer recording an event: the forward pass waits for a
  layer's event just before that layer touches its cache (``LayerLoads.wait``), so a long
  history's copy back overlaps the layers before it instead of preceding the whole step.
- saves ahead (cached blocks whose KV earlier steps wrote; this step does not write them)
  run on a third stream, after everything queued so far (whatever wrote those blocks) and
  beside the step's forward pass; the next step's work waits for them (``wait_saves``),
  since from then on the blocks may be evicted and overwritten.
The host thread never waits for the copies, and nothing on the host reads the tier.
"""

from __future__ import annotations

import torch

# Programs of a swap-in's copy kernel: it runs beside the forward pass, so it holds few of
# the GPU's SMs (on an H200, 16 of 132; each keeps 16 KiB of bus reads in flight: 16 x 16
# KiB / ~2.5 us of latency is ~100 GB/s, above the bus's ~55), and its stream has the higher
# priority, so the SMs a finishing kernel frees go to it first.
_LOAD_PROGRAMS = 16
# Programs of a save-ahead's copy kernel: it runs beside a whole step and nothing waits for
# it until the next one.
_SAVE_PROGRAMS = 16

# Without CUDA: the most bytes of blocks (all layers) copied in one pass, one layer's
# share of them gathered at a time (transient memory outside the KV budget; this bounds it).
_STAGING_BYTES = 64 << 20


class LayerLoads:
    """A step's swap-ins, still being copied on the tier's side stream: one event per layer
    index (``kv_caches`` position), recorded when that layer's blocks are in place."""

    def __init__(self, events: dict[int, torch.cuda.Event]) -> None:
        self.events = events

    def wait(self, layer_idx: int) -> None:
        """Make the current stream wait until layer ``layer_idx``'s blocks are loaded."""
        event = self.events.get(layer_idx)
        if event is not None:
            torch.cuda.current_stream().wait_event(event)

    def wait_all(self) -> None:
        """Make the current stream wait until every block is loaded (after the forward pass,
        whichever layers it waited for; or in place of a forward pass)."""
        for event in self.events.values():
            torch.cuda.current_stream().wait_event(event)


class HostKVCache:
    def __init__(self, kv_caches: list[torch.Tensor], num_slots: int) -> None:
        # This rank's stage's layers (other stages' entries are empty), as raw bytes, and
        # their positions in ``kv_caches`` (the model's layer indices).
        self.layer_ids = [i for i, cache in enumerate(kv_caches) if cache.numel() > 0]
        self.layers = [kv_caches[i].view(torch.uint8) for i in self.layer_ids]
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
        self._saves_pending = False  # saves ahead queued on CUDA, not yet waited for
        for layer in self.layers:
            if not layer[0, 0].is_contiguous():
                raise ValueError("The host KV tier needs each cache block stored contiguously.")
        if pin:
            self._init_direct()
        else:
            self._init_rows()

    def _init_rows(self) -> None:
        """Without CUDA: each side seen as rows of its widest integer type, one row a block's
        K or V of one layer (device: ``[2, blocks, row]``; host: ``[slots, layers, 2, row]``),
        so a copy moves whole rows (byte by byte, torch's indexing ran ~10x slower)."""
        piece = self.host[0, 0, 0].numel()
        self._rows = [widest_view(layer.view(2, layer.shape[1], piece), piece)
                      for layer in self.layers]  # fmt: skip
        host = self.host.view(self.host.shape[0], len(self.layers), 2, piece)
        self._host_rows = widest_view(host, piece)

    def _init_direct(self) -> None:
        """The kernels' views: each side as its widest integer type, and one layer's K or V
        of one block (``piece`` elements) contiguous on both sides. Triton is imported
        here, with CUDA only, as every kernel module is."""
        from pagedllm.kernels.kv_block_copy import copy_blocks

        self._copy_blocks = copy_blocks
        piece_bytes = self.host[0, 0, 0].numel()
        host = widest_view(self.host, piece_bytes)
        caches = [widest_view(layer, piece_bytes) for layer in self.layers]
        self._piece = host[0, 0, 0].numel()
        self._host_strides = (host.stride(2), host.stride(0))
        # Per layer: its slice of every host slot, its cache, and the cache's (K to V, block
        # to block) strides: what each copy kernel launch takes.
        self._layer_views = [
            (host[:, i], cache, (cache.stride(0), cache.stride(1)))
            for i, cache in enumerate(caches)
        ]
        self._stream = torch.cuda.Stream(self.device, priority=-1)  # -1: the higher
        self._events = {i: torch.cuda.Event() for i in self.layer_ids}
        self._save_stream = torch.cuda.Stream(self.device)
        self._saved = torch.cuda.Event()

    @property
    def num_bytes(self) -> int:
        return self.host.numel()

    def swap_out(self, copies: list[tuple[int, int]]) -> None:
        """(device block, host slot) pairs: save the blocks' KV in the slots."""
        if not copies:
            return
        if self.device.type == "cuda":
            self._swap_out_direct(copies)
            return
        for start in range(0, len(copies), self._chunk):
            chunk = copies[start : start + self._chunk]
            blocks = self._index([b for b, _ in chunk])
            slots = self._index([s for _, s in chunk])
            for i, rows in enumerate(self._rows):  # (2, n, row) -> the slots' (n, 2, row)
                self._host_rows[:, i].index_copy_(
                    0, slots, rows.index_select(1, blocks).transpose(0, 1)
                )

    def swap_in(self, copies: list[tuple[int, int]]) -> LayerLoads | None:
        """(host slot, device block) pairs: write the slots' KV into the blocks. With CUDA
        the copies are still running when this returns: the step's forward pass must wait
        on the returned loads (None: nothing left to wait for)."""
        if not copies:
            return None
        if self.device.type == "cuda":
            return self._swap_in_direct(copies)
        for start in range(0, len(copies), self._chunk):
            chunk = copies[start : start + self._chunk]
            slots = self._index([s for s, _ in chunk])
            blocks = self._index([b for _, b in chunk])
            for i, rows in enumerate(self._rows):  # the slots' (n, 2, row) -> (2, n, row)
                rows.index_copy_(
                    1, blocks, self._host_rows[:, i].index_select(0, slots).transpose(0, 1)
                )
        return None

    def save_ahead(self, copies: list[tuple[int, int]]) -> None:
        """(device block, host slot) pairs of blocks no work of this step writes: with
        CUDA copied beside it, and waited for by the next step (``wait_saves``)."""
        if not copies:
            return
        if self.device.type != "cuda":
            self.swap_out(copies)
            return
        self._save_stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._save_stream):
            # Indices allocated on the side stream: their memory is reused only after it.
            self._swap_out_direct(copies, max_programs=_SAVE_PROGRAMS)
            self._saved.record(self._save_stream)
        self._saves_pending = True

    def wait_saves(self) -> None:
        """Make the current stream wait for the last saves ahead: called before a step
        queues any work, which may evict (overwrite) the blocks they read."""
        if self._saves_pending:
            torch.cuda.current_stream(self.device).wait_event(self._saved)
            self._saves_pending = False

    def _swap_out_direct(
        self, copies: list[tuple[int, int]], max_programs: int | None = None
    ) -> None:
        """On the current stream, with ``max_programs`` programs a layer (None: one per
        item)."""
        blocks = self._index([b for b, _ in copies])
        slots = self._index([s for _, s in copies])
        for host, layer, strides in self._layer_views:
            self._copy_blocks(
                layer, host, blocks, slots, strides, self._host_strides, self._piece,
                max_programs=max_programs,
            )  # fmt: skip

    def _swap_in_direct(self, copies: list[tuple[int, int]]) -> LayerLoads:
        # The side stream starts after everything queued so far (the previous step's
        # forward pass may still read a block being overwritten; this step's swap-outs
        # read blocks some of these copies overwrite).
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._stream):
            # Allocated on the side stream: freed memory is reused only after its copies.
            slots = self._index([s for s, _ in copies])
            blocks = self._index([b for _, b in copies])
            for layer_id, (host, layer, strides) in zip(self.layer_ids, self._layer_views):
                self._copy_blocks(
                    host, layer, slots, blocks, self._host_strides, strides, self._piece,
                    max_programs=_LOAD_PROGRAMS,
                )  # fmt: skip
                self._events[layer_id].record(self._stream)
        return LayerLoads(dict(self._events))

    def _index(self, ids: list[int]) -> torch.Tensor:
        """Block ids on the device. Through pinned memory with CUDA: a copy from pageable
        memory would wait for the device to finish the previous step."""
        index = torch.tensor(ids, dtype=torch.int64)
        if self.device.type != "cuda":
            return index
        return index.pin_memory().to(self.device, non_blocking=True)


def widest_view(tensor: torch.Tensor, piece_bytes: int) -> torch.Tensor:
    """``tensor`` as the widest integer type whose size divides ``piece_bytes`` (8-byte
    elements copy fastest); its last dimension's bytes must be a multiple of it too."""
    for dtype in (torch.int64, torch.int32, torch.int16):
        size = dtype.itemsize
        if piece_bytes % size == 0 and (tensor.shape[-1] * tensor.element_size()) % size == 0:
            return tensor.view(torch.uint8).view(dtype)
    return tensor.view(torch.uint8)
