"""The host tier's memory on one rank, and the copies the scheduler asks for each step
(``core/host_tier.py`` decides them; this only moves bytes).

The tier is laid out by layer: ``host[layer, slot]`` is one block's K and V of that layer
(2 x block_size x heads x head_dim values), so a run of consecutive slots is one run of
bytes per layer. Bytes, not values: the device caches are viewed as integers, so FP8
caches (and any dtype) are copied exactly.

With CUDA the tier is pinned memory:
- swap-ins of runs of consecutive slots (the usual case: a request's blocks are saved in
  order, into slots handed out in order) move by the copy engines, which take no SMs from
  the forward pass beside them: per layer, each run is one copy into a device staging
  buffer, then a kernel scatters the staged blocks into the cache (``_LoadStaging``, two
  buffers, so one layer's copies run while the last layer's scatter does). Swap-ins in
  short runs are read by ``kernels/kv_block_copy.py`` directly from the pinned memory
  instead (one launch a layer, however scattered; a copy call per block would cost the
  host more than the bus). Either way they run on side streams that first wait for
  everything queued on the current one, each layer recording an event when its blocks are
  in place: the forward pass waits for a layer's event just before that layer touches its
  cache (``LayerLoads.wait``), so a long history's copy back overlaps the layers before it
  instead of preceding the whole step.
- swap-outs run on the current stream (the copy kernel writing the pinned memory), so
  stream order puts them after the previous step's forward pass (which may still be
  writing a block being saved) and before this step's (which overwrites saved blocks);
- saves ahead (cached blocks whose KV earlier steps wrote; this step does not write them)
  run on a third stream, after everything queued so far (whatever wrote those blocks) and
  beside the step's forward pass; the next step's work waits for them (``wait_saves``),
  since from then on the blocks may be evicted and overwritten.
The host thread never waits for the copies, and nothing on the host reads the tier.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# Programs of a swap-in's copy kernel: it runs beside the forward pass, so it holds few of
# the GPU's SMs (on an H200, 16 of 132; each keeps 16 KiB of bus reads in flight: 16 x 16
# KiB / ~2.5 us of latency is ~100 GB/s, above the bus's ~55), and its stream has the higher
# priority, so the SMs a finishing kernel frees go to it first.
_LOAD_PROGRAMS = 16
# Programs of a save-ahead's copy kernel: it runs beside a whole step and nothing waits for
# it until the next one.
_SAVE_PROGRAMS = 16
# Swap-ins move by the copy engines when their runs of consecutive slots average at least
# this many blocks (each run is a copy call per layer, a few microseconds of the host's
# time; at 4 blocks of llama-3.1-8b a call moves 256 KiB, ~5 us of the bus).
MIN_RUN_BLOCKS = 4
# One staging buffer's bytes (CUDA: two of them, outside the KV cache's budget; the CPU:
# one, and the most bytes of one layer's blocks any copy moves in one pass, which bounds
# the transient memory a copy takes).
STAGING_BYTES = 32 << 20
# Layers whose swap-in copies are queued ahead of the one the forward pass reaches.
_QUEUE_AHEAD = 4


@dataclass(frozen=True)
class LoadPass:
    """Up to a staging buffer's worth of a swap-in, for any one layer: ``runs`` are (first
    slot, blocks) copied one after another into the staging buffer from its start, whose
    blocks then go to the device blocks ``blocks`` (in staging order)."""

    runs: list[tuple[int, int]]
    blocks: list[int]


def plan_loads(copies: list[tuple[int, int]], capacity: int) -> list[LoadPass]:
    """(host slot, device block) pairs in slot order, cut into runs of consecutive slots
    and into passes of at most ``capacity`` blocks (a run split where a pass fills up)."""
    ordered = sorted(copies)
    passes = []
    for start in range(0, len(ordered), capacity):
        chunk = ordered[start : start + capacity]
        runs: list[tuple[int, int]] = []
        for slot, _ in chunk:
            if runs and runs[-1][0] + runs[-1][1] == slot:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((slot, 1))
        passes.append(LoadPass(runs, [block for _, block in chunk]))
    return passes


class LayerLoads:
    """A step's swap-ins, still being copied on the tier's side streams: one event per layer
    index (``kv_caches`` position), recorded when that layer's blocks are in place.
    ``queue`` (copies by the copy engines): queues the copies of the layers up to a layer
    index and a few beyond (None: all), called as the forward pass reaches each layer."""

    def __init__(
        self,
        events: dict[int, torch.cuda.Event],
        queue: Callable[[int | None], None] | None = None,
    ) -> None:
        self.events = events
        self._queue = queue

    def wait(self, layer_idx: int) -> None:
        """Make the current stream wait until layer ``layer_idx``'s blocks are loaded."""
        if self._queue is not None:
            self._queue(layer_idx)
        event = self.events.get(layer_idx)
        if event is not None:
            torch.cuda.current_stream().wait_event(event)

    def wait_all(self) -> None:
        """Make the current stream wait until every block is loaded (after the forward pass,
        whichever layers it waited for; or in place of a forward pass)."""
        if self._queue is not None:
            self._queue(None)
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
        for layer in self.layers:
            if not layer[0, 0].is_contiguous():
                raise ValueError("The host KV tier needs each cache block stored contiguously.")
        pin = self.device.type == "cuda"
        # Per layer (2, blocks, block_size, heads, head_dim bytes): a slot drops ``blocks``.
        self.host = torch.empty(
            (len(self.layers), num_slots, 2, *first.shape[2:]), dtype=torch.uint8,
            device="cpu", pin_memory=pin,
        )  # fmt: skip
        piece_bytes = self.host[0, 0, 0].numel()  # one block's K (or V) of one layer
        # Blocks of one layer one staging buffer holds: the most a pass of a copy moves.
        self.capacity = max(1, STAGING_BYTES // (2 * piece_bytes))
        # Each side as its widest integer type, one layer's K or V of one block (``piece``
        # elements) contiguous on both: device ``[2, blocks, piece]`` a layer, host
        # ``[layers, slots, 2, piece]``.
        self._caches = [widest_view(layer.view(2, layer.shape[1], piece_bytes), piece_bytes)
                        for layer in self.layers]  # fmt: skip
        self._host = widest_view(self.host.view(*self.host.shape[:3], piece_bytes), piece_bytes)
        self._saves_pending = False  # saves ahead queued on CUDA, not yet waited for
        if pin:
            self._init_cuda()

    def _init_cuda(self) -> None:
        """The copy kernel, the side streams and the staging buffers. Triton is imported
        here, with CUDA only, as every kernel module is."""
        from pagedllm.kernels.kv_block_copy import copy_blocks

        self._copy_blocks = copy_blocks
        piece = self._host.shape[-1]
        self._host_strides = (piece, 2 * piece)  # K to V, slot to slot: the same every layer
        self._stream = torch.cuda.Stream(self.device, priority=-1)  # -1: the higher
        self._dma_stream = torch.cuda.Stream(self.device)
        self._events = {i: torch.cuda.Event() for i in self.layer_ids}
        self._staging = _LoadStaging(self.capacity, piece, self._host.dtype, self.device)
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
        for start in range(0, len(copies), self.capacity):
            chunk = copies[start : start + self.capacity]
            blocks = self._index([b for b, _ in chunk])
            slots = self._index([s for _, s in chunk])
            for host, cache in zip(self._host, self._caches):  # (2, n, piece) -> (n, 2, piece)
                host.index_copy_(0, slots, cache.index_select(1, blocks).transpose(0, 1))

    def swap_in(self, copies: list[tuple[int, int]]) -> LayerLoads | None:
        """(host slot, device block) pairs: write the slots' KV into the blocks. With CUDA
        the copies are still running when this returns: the step's forward pass must wait
        on the returned loads (None: nothing left to wait for)."""
        if not copies:
            return None
        passes = plan_loads(copies, self.capacity)
        if self.device.type != "cuda":
            self._swap_in_staged(passes)
            return None
        runs = sum(len(p.runs) for p in passes)
        if len(copies) >= MIN_RUN_BLOCKS * runs:
            return self._swap_in_dma(passes)
        return self._swap_in_direct(copies)

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

    def _swap_in_staged(self, passes: list[LoadPass]) -> None:
        """Without CUDA: each pass's runs copied into one staging tensor a layer, then
        scattered into the cache (the plan the copy engines follow with CUDA)."""
        staging = torch.empty((self.capacity, 2, self._host.shape[-1]), dtype=self._host.dtype)
        for load in passes:
            blocks = self._index(load.blocks)
            staged = staging[: len(load.blocks)]
            for host, cache in zip(self._host, self._caches):
                _stage_runs(staged, host, load.runs)
                cache.index_copy_(1, blocks, staged.transpose(0, 1))

    def _swap_out_direct(
        self, copies: list[tuple[int, int]], max_programs: int | None = None
    ) -> None:
        """On the current stream, with ``max_programs`` programs a layer (None: one per
        item)."""
        blocks = self._index([b for b, _ in copies])
        slots = self._index([s for _, s in copies])
        for host, cache in zip(self._host, self._caches):
            self._copy_blocks(
                cache, host, blocks, slots, _strides(cache), self._host_strides,
                host.shape[-1], max_programs=max_programs,
            )  # fmt: skip

    def _swap_in_direct(self, copies: list[tuple[int, int]]) -> LayerLoads:
        """The copy kernel reading the pinned memory, on the side stream."""
        # The side stream starts after everything queued so far (the previous step's
        # forward pass may still read a block being overwritten; this step's swap-outs
        # read blocks some of these copies overwrite).
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._stream):
            # Allocated on the side stream: freed memory is reused only after its copies.
            slots = self._index([s for s, _ in copies])
            blocks = self._index([b for _, b in copies])
            for layer_id, host, cache in zip(self.layer_ids, self._host, self._caches):
                self._copy_blocks(
                    host, cache, slots, blocks, self._host_strides, _strides(cache),
                    host.shape[-1], max_programs=_LOAD_PROGRAMS,
                )  # fmt: skip
                self._events[layer_id].record(self._stream)
        return LayerLoads(dict(self._events))

    def _swap_in_dma(self, passes: list[LoadPass]) -> LayerLoads:
        """Runs copied by the copy engines into the staging buffers (on the DMA stream),
        scattered into the cache from there (on the side stream), layer after layer, each
        layer's copies queued only as the forward pass reaches the layers before it
        (``_LazyLoads``): queuing a long history's ~7 runs x 32 layers took the host 4.4 ms
        on an H100 before the step's first kernel, with the layers' launches they overlap
        the device's work."""
        current = torch.cuda.current_stream(self.device)
        # Both streams start after everything queued so far (see ``_swap_in_direct``);
        # copies queued later do not wait for the forward pass queued meanwhile.
        self._dma_stream.wait_stream(current)
        self._stream.wait_stream(current)
        with torch.cuda.stream(self._stream):
            # Allocated on the scatter stream, which reads them: reused only after it.
            blocks = [self._index(load.blocks) for load in passes]
        lazy = _LazyLoads(self, passes, blocks)
        return LayerLoads(dict(self._events), lazy.queue)

    def _queue_layer(
        self, position: int, passes: list[LoadPass], blocks: list[torch.Tensor]
    ) -> None:
        """Queue the copies and scatters of the layer at ``position`` of ``layer_ids``."""
        layer_id, host, cache = (
            self.layer_ids[position],
            self._host[position],
            self._caches[position],
        )
        staging = self._staging
        for load, ids in zip(passes, blocks):
            buffer = staging.fill(self._dma_stream)
            with torch.cuda.stream(self._dma_stream):
                _stage_runs(buffer, host, load.runs)
            staging.filled(self._dma_stream, self._stream)
            with torch.cuda.stream(self._stream):
                self._copy_blocks(
                    buffer, cache, staging.positions[: ids.numel()], ids, self._host_strides,
                    _strides(cache), host.shape[-1],
                )  # fmt: skip
            staging.emptied(self._stream)
        self._events[layer_id].record(self._stream)

    def _index(self, ids: list[int]) -> torch.Tensor:
        """Block ids on the device. Through pinned memory with CUDA: a copy from pageable
        memory would wait for the device to finish the previous step."""
        index = torch.tensor(ids, dtype=torch.int64)
        if self.device.type != "cuda":
            return index
        return index.pin_memory().to(self.device, non_blocking=True)


class _LazyLoads:
    """A swap-in's layers not yet queued: ``queue(layer_idx)`` queues every layer up to
    ``layer_idx``'s position and ``_QUEUE_AHEAD`` beyond (None: all), in order, once each.
    Ahead, so the copy engines always have a few layers' copies queued (one layer of a long
    history is ~0.35 ms of bus; a prefill's layer as long on the device)."""

    def __init__(
        self, tier: HostKVCache, passes: list[LoadPass], blocks: list[torch.Tensor]
    ) -> None:
        self.tier = tier
        self.passes = passes
        self.blocks = blocks
        self.position = {layer_id: i for i, layer_id in enumerate(tier.layer_ids)}
        self.queued = 0  # layers queued so far, in ``layer_ids`` order

    def queue(self, layer_idx: int | None) -> None:
        count = len(self.tier.layer_ids)
        if layer_idx is not None:
            # A layer of another stage (none here) queues nothing beyond what is queued.
            at = self.position.get(layer_idx, self.queued - 1 - _QUEUE_AHEAD)
            count = min(count, at + 1 + _QUEUE_AHEAD)
        while self.queued < count:
            self.tier._queue_layer(self.queued, self.passes, self.blocks)
            self.queued += 1


class _LoadStaging:
    """Two device buffers of ``capacity`` blocks of one layer (``[capacity, 2, piece]``),
    used in turn: a pass's copies fill one while the scatter of the pass before reads the
    other. Events order them: a buffer is filled only after its last scatter (``emptied``),
    scattered only after its copies (``filled``)."""

    def __init__(self, capacity: int, piece: int, dtype: torch.dtype, device: torch.device) -> None:
        self.buffers = [
            torch.empty((capacity, 2, piece), dtype=dtype, device=device) for _ in range(2)
        ]
        # The staged blocks' positions, the scatter's source indices (a prefix is used).
        self.positions = torch.arange(capacity, dtype=torch.int64, device=device)
        self._filled = [torch.cuda.Event() for _ in range(2)]
        self._emptied = [torch.cuda.Event() for _ in range(2)]
        self._turn = 0

    def fill(self, dma: torch.cuda.Stream) -> torch.Tensor:
        """The next buffer, once ``dma`` has waited for the last scatter that read it."""
        self._turn ^= 1
        dma.wait_event(self._emptied[self._turn])
        return self.buffers[self._turn]

    def filled(self, dma: torch.cuda.Stream, scatter: torch.cuda.Stream) -> None:
        """The copies queued on ``dma`` fill the buffer: ``scatter`` waits for them."""
        self._filled[self._turn].record(dma)
        scatter.wait_event(self._filled[self._turn])

    def emptied(self, scatter: torch.cuda.Stream) -> None:
        """The scatter queued on ``scatter`` is the buffer's last reader."""
        self._emptied[self._turn].record(scatter)


def _stage_runs(staged: torch.Tensor, host: torch.Tensor, runs: list[tuple[int, int]]) -> None:
    """Copy ``runs`` ((first slot, blocks)) of one layer's host slots into ``staged`` from its
    start, one after another (with CUDA: copy-engine copies on the current stream)."""
    at = 0
    for slot, length in runs:
        staged[at : at + length].copy_(host[slot : slot + length], non_blocking=True)
        at += length


def _strides(cache: torch.Tensor) -> tuple[int, int]:
    """A cache layer's (K to V, block to block) strides, in its elements."""
    return cache.stride(0), cache.stride(1)


def widest_view(tensor: torch.Tensor, piece_bytes: int) -> torch.Tensor:
    """``tensor`` as the widest integer type whose size divides ``piece_bytes`` (8-byte
    elements copy fastest); its last dimension's bytes must be a multiple of it too."""
    for dtype in (torch.int64, torch.int32, torch.int16):
        size = dtype.itemsize
        if piece_bytes % size == 0 and (tensor.shape[-1] * tensor.element_size()) % size == 0:
            return tensor.view(torch.uint8).view(dtype)
    return tensor.view(torch.uint8)
