"""The host-memory tier of the prefix cache (``swap_space``): full KV blocks the device cache
gave up, kept in host memory under their block hash.

Plain bookkeeping, no torch: which host slot holds which hash, in LRU order, and the copies
one step needs, which the scheduler hands to the workers in ``SchedulerOutput``:
- swap-out (device block -> host slot): a cached device block is about to be reused (or a
  preempted request is swapped out); its KV is saved before the step's forward pass writes
  over it.
- swap-in (host slot -> device block): a request's prefix missed on the device and hit
  here; the KV is copied into a freshly allocated device block before the step's forward
  pass reads it.
- save-ahead (device block -> host slot): a cached block not yet in the tier, its KV
  computed by an earlier step (``BlockPool.save_ahead``), saved while it stays on the
  device, so its eviction needs no copy. No work of the step writes it.
The worker runs all of a step's swap-outs, then all of its swap-ins, before its forward;
the saves ahead beside the forward, waited for by the next step.

Invariants:
- A slot is free or holds exactly one hash (``hash_to_slot`` and ``slot_to_hash`` mirror).
- A slot that this step's swap-in reads is locked until the step's copies are taken: no
  swap-out or save-ahead of the same step may write it (swap-outs run first and would
  clobber it; saves ahead run beside it).
- A pinned slot (a swapped-out, preempted request still waiting) is never evicted.
- At most one copy into a slot per step, swap-out or save-ahead (a slot evicted and reused
  within a step keeps only its latest copy, so the order of copies into one slot never
  matters).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass
class StepCopies:
    """One step's host-tier copies: (device block, host slot) swap-outs and saves ahead,
    (host slot, device block) swap-ins."""

    swap_out: list[tuple[int, int]] = field(default_factory=list)
    swap_in: list[tuple[int, int]] = field(default_factory=list)
    save_ahead: list[tuple[int, int]] = field(default_factory=list)


class HostTier:
    def __init__(self, num_slots: int) -> None:
        if num_slots <= 0:
            raise ValueError(f"The host KV tier needs at least one block, got {num_slots}.")
        self.num_slots = num_slots
        # LRU order: the first entry is the least recently saved or hit.
        self.hash_to_slot: OrderedDict[bytes, int] = OrderedDict()
        self.slot_to_hash: dict[int, bytes] = {}
        self._free_slots = list(range(num_slots - 1, -1, -1))  # pop() hands out 0, 1, ...
        self._pins: dict[int, int] = {}  # slot -> pin count
        self._locked: set[int] = set()
        # This step's copies: host slot -> device block (one per slot), and (slot, block).
        self._swap_out: dict[int, int] = {}
        self._save_ahead: dict[int, int] = {}
        self._swap_in: list[tuple[int, int]] = []
        # Since start: blocks copied out to the tier and back in (benchmarks, tests, state).
        self.num_saved = 0
        self.num_saved_ahead = 0  # of num_saved
        self.num_loaded = 0

    # -- queries -------------------------------------------------------------------------

    def lookup(self, block_hash: bytes) -> int | None:
        return self.hash_to_slot.get(block_hash)

    def usage(self) -> float:
        return len(self.slot_to_hash) / self.num_slots

    @property
    def num_used(self) -> int:
        return len(self.slot_to_hash)

    # -- copies --------------------------------------------------------------------------

    def save(self, block_hash: bytes, block_id: int, ahead: bool = False) -> int | None:
        """Keep device block ``block_id`` (holding ``block_hash``) in the tier; returns its
        slot, or None when every slot is pinned or locked (the block is then lost: it is a
        cache). A hash already here only becomes the most recent: no copy. ``ahead``: the
        block stays on the device, unwritten by this step (a save-ahead)."""
        slot = self.hash_to_slot.get(block_hash)
        if slot is not None:
            self.hash_to_slot.move_to_end(block_hash)
            return slot
        slot = self._take_slot()
        if slot is None:
            return None
        # Re-inserted last: copies keep the order they were made.
        self._swap_out.pop(slot, None)
        self._save_ahead.pop(slot, None)
        (self._save_ahead if ahead else self._swap_out)[slot] = block_id
        self.num_saved += 1
        self.num_saved_ahead += ahead
        self.hash_to_slot[block_hash] = slot
        self.slot_to_hash[slot] = block_hash
        return slot

    def load(self, slot: int, block_id: int) -> None:
        """Copy ``slot`` into the fresh device block ``block_id`` this step. The entry stays
        (a later eviction of the device block then needs no copy) and becomes the most
        recent; the slot is locked until the step's copies are taken."""
        self.hash_to_slot.move_to_end(self.slot_to_hash[slot])
        self._locked.add(slot)
        self._swap_in.append((slot, block_id))
        self.num_loaded += 1

    def lock(self, slots: list[int]) -> None:
        """Keep these slots from being reused this step (hits about to be loaded)."""
        self._locked.update(slots)

    def take_copies(self) -> StepCopies:
        """This step's copies; the locks end with the step."""
        copies = StepCopies(
            swap_out=[(block, slot) for slot, block in self._swap_out.items()],
            swap_in=self._swap_in,
            save_ahead=[(block, slot) for slot, block in self._save_ahead.items()],
        )
        self._swap_out, self._save_ahead, self._swap_in = {}, {}, []
        self._locked.clear()
        return copies

    # -- pins (swap preemption) ----------------------------------------------------------

    def pin(self, slot: int) -> None:
        self._pins[slot] = self._pins.get(slot, 0) + 1

    def pin_counts(self) -> dict[int, int]:
        return dict(self._pins)

    def unpin(self, slot: int) -> None:
        count = self._pins[slot] - 1
        if count:
            self._pins[slot] = count
        else:
            del self._pins[slot]

    # -- reset ---------------------------------------------------------------------------

    def reset(self) -> bool:
        """Forget every entry. Refused (False) while a swapped-out request pins one or a
        step's copies are pending."""
        if self._pins or self._swap_out or self._swap_in or self._save_ahead:
            return False
        self.hash_to_slot.clear()
        self.slot_to_hash.clear()
        self._free_slots = list(range(self.num_slots - 1, -1, -1))
        return True

    # -- helpers -------------------------------------------------------------------------

    def _take_slot(self) -> int | None:
        if self._free_slots:
            return self._free_slots.pop()
        for block_hash, slot in self.hash_to_slot.items():  # least recent first
            if slot not in self._pins and slot not in self._locked:
                del self.hash_to_slot[block_hash]
                del self.slot_to_hash[slot]
                return slot
        return None

    def check_integrity(self) -> None:
        """Raise AssertionError unless the maps mirror each other and every slot is either
        free or mapped, exactly once."""
        assert len(self.hash_to_slot) == len(self.slot_to_hash), "host maps differ in size"
        for block_hash, slot in self.hash_to_slot.items():
            assert self.slot_to_hash.get(slot) == block_hash, f"host slot {slot} unmapped"
        free = set(self._free_slots)
        assert len(free) == len(self._free_slots), "a host slot is free twice"
        assert not free & set(self.slot_to_hash), "a host slot is both free and mapped"
        assert len(free) + len(self.slot_to_hash) == self.num_slots, "host slots lost"
        assert all(0 <= s < self.num_slots for s in free), "host slot out of range"
        assert set(self._pins) <= set(self.slot_to_hash), "a pinned host slot is unmapped"
        assert all(c > 0 for c in self._pins.values()), "a non-positive pin count"
