"""Paged KV cache: a pool of fixed-size pages on each batch device shared by the decode slots on that device,
each slot's tokens on the pages its page table lists, pages taken from the pool as the slot's row grows (the
layout of vLLM's PagedAttention, and the one the Pallas TPU paged-attention kernel reads). A slot never uses
another device's pages, so no cache data crosses devices and each device's pool is sized to its own memory.

Why: a dense slot cache holds every slot at the longest row's capacity (a GRPO step's 17,920 entries), while most
rollouts end far earlier; with pages a slot costs the entries its row actually holds, rounded up to a page, so the
same memory holds more rows of a long-tailed mix.

Pieces:

* `PageAllocator` (host): a free list per device (group) and each slot's pages. `place(slots, tokens)` starts a
  row on a free slot of the device with the most free pages; `reserve(slot, tokens)` grows a slot to hold
  `tokens` entries; `grow(need, order)` does it for every live slot and, when a device's pool runs short,
  releases that device's newest slots (preemption: their samples restart from the queue, and regenerate the
  same tokens because a sample's randomness depends only on its row and column, see `sampling.continuous`);
  `table()` is the [slots, pages_per_slot] int32 page table handed to the device.
* `keep_for_compaction`: the slots a smaller batch keeps, each on its own device.
* The device side, `models.paged_kv`: token writes into pages, reads of a row's pages, attention over them, and
  `Qwen2.decode_ragged(page_table=...)`, one decode step over the pools [G, K, L, P, page_size, H].
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np


class PageAllocator:
    """Pages of `groups` pools of `num_pages` pages each (one pool per batch device), each page `page_size`
    entries, shared by `slots` decode slots of at most `pages_per_slot` pages each (the page table's width).

    The slots are split evenly and in order over the groups (slot s in group s // (slots / groups), as a batch
    sharded over the devices is), and a slot takes pages from its own group's pool only, so a device's rows read
    and write only the pages it holds. Page ids are local to a group ([0, num_pages)). Pages are taken from the
    free list on demand and returned whole when a slot is released; no page is ever held by two slots."""

    def __init__(self, num_pages: int, page_size: int, slots: int, pages_per_slot: int, groups: int = 1):
        if min(num_pages, page_size, slots, pages_per_slot, groups) < 1 or slots % groups:
            raise ValueError(f"num_pages={num_pages}, page_size={page_size}, slots={slots}, "
                             f"pages_per_slot={pages_per_slot} and groups={groups} must all be >= 1, and the groups "
                             f"must divide the slots")
        self.num_pages, self.page_size = int(num_pages), int(page_size)
        self.slots, self.pages_per_slot, self.groups = int(slots), int(pages_per_slot), int(groups)
        # stacks: page 0 handed out first
        self._free = [list(range(self.num_pages - 1, -1, -1)) for _ in range(self.groups)]
        self._pages: list[list[int]] = [[] for _ in range(self.slots)]

    @property
    def free_pages(self) -> int:
        """Free pages over every group."""
        return sum(len(f) for f in self._free)

    def group_of(self, slot: int) -> int:
        return int(slot) // (self.slots // self.groups)

    def pages_of(self, slot: int) -> tuple[int, ...]:
        return tuple(self._pages[slot])

    def pages_needed(self, tokens: int) -> int:
        """Pages that hold `tokens` entries."""
        return math.ceil(max(0, tokens) / self.page_size)

    def _check(self, slot: int, tokens: int) -> int:
        need = self.pages_needed(tokens)
        if need > self.pages_per_slot:
            raise ValueError(f"slot {slot}: {tokens} entries need {need} pages of {self.page_size}; a slot's page "
                             f"table has {self.pages_per_slot}")
        return need - len(self._pages[slot])

    def reserve(self, slot: int, tokens: int) -> bool:
        """Grows `slot` to hold `tokens` entries (never shrinks it). False, with nothing taken, if its group has
        too few free pages."""
        more, free = self._check(slot, tokens), self._free[self.group_of(slot)]
        if more > len(free):
            return False
        for _ in range(max(0, more)):
            self._pages[slot].append(free.pop())
        return True

    def place(self, candidates: Sequence[int], tokens: int) -> int | None:
        """Reserves `tokens` entries on one of the (free) slots `candidates`: the first of those in the group with
        the most free pages (spreading new rows over the devices). None, with nothing taken, if no group of a
        candidate has the pages."""
        best = {}
        for s in candidates:
            best.setdefault(self.group_of(s), int(s))
        for g in sorted(best, key=lambda g: -len(self._free[g])):
            if self.reserve(best[g], tokens):
                return best[g]
        return None

    def release(self, slot: int) -> None:
        """Returns every page of `slot` to its group's pool."""
        self._free[self.group_of(slot)].extend(reversed(self._pages[slot]))
        self._pages[slot] = []

    def grow(self, need: Mapping[int, int], order: Sequence[int]) -> list[int]:
        """Reserves need[slot] entries for every slot of `order` (oldest first). While a group's free pages cannot
        cover all of its slots, that group's last slot of `order` is released (preempted, newest first). Returns
        the preempted slots. Raises ValueError when even a group's oldest slot alone cannot fit in its pool."""
        preempted = []
        for g in range(self.groups):
            live = [s for s in order if self.group_of(s) == g]
            while sum(max(0, self._check(s, need[s])) for s in live) > len(self._free[g]):
                if len(live) == 1:
                    raise ValueError(f"slot {live[0]}: {need[live[0]]} entries need "
                                     f"{self.pages_needed(need[live[0]])} pages; the pool has {self.num_pages}")
                victim = live.pop()
                self.release(victim)
                preempted.append(victim)
            for s in live:
                assert self.reserve(s, need[s])
        return preempted

    def keep_slots(self, keep: Sequence[int]) -> None:
        """Renumbers the slots: new slot j is old slot keep[j] (a compaction to len(keep) slots, which the groups
        must divide; each slot keeps its group). Slots left out must hold no pages."""
        keep = [int(s) for s in keep]
        if len(keep) % self.groups:
            raise ValueError(f"{len(keep)} slots do not split over {self.groups} groups")
        moved = [s for j, s in enumerate(keep) if self.group_of(s) != j // (len(keep) // self.groups)]
        if moved:
            raise ValueError(f"slots {moved} would change group (their pages stay on their device)")
        held = [s for s in set(range(self.slots)) - set(keep) if self._pages[s]]
        if held:
            raise ValueError(f"slots {held} still hold pages")
        self._pages = [self._pages[s] for s in keep]
        self.slots = len(self._pages)

    def table(self) -> np.ndarray:
        """[slots, pages_per_slot] int32: each slot's pages (ids within its group's pool) in order, then 0 (a page
        that may belong to another slot: entries past a row's length are masked on read and never written)."""
        out = np.zeros((self.slots, self.pages_per_slot), np.int32)
        for s, pages in enumerate(self._pages):
            out[s, :len(pages)] = pages
        return out


def require_row_fits(kv_pages: int, page_size: int, longest_row: int) -> None:
    """One-line ValueError unless a device's pool of `kv_pages` pages of `page_size` entries holds a row of
    `longest_row` entries (a pool smaller than one row could never finish that row)."""
    need = math.ceil(longest_row / page_size)
    if need > kv_pages:
        raise ValueError(f"kv_pages={kv_pages}: the longest row ({longest_row} entries) needs {need} pages of "
                         f"{page_size}")


def keep_for_compaction(live: np.ndarray, slots: int, groups: int = 1) -> np.ndarray:
    """Old slots to keep for a batch of `slots` rows, `live` [B] the old slots' flags (B and `slots` split over
    `groups` in order, as `PageAllocator` splits them): within each group its live slots first, then free ones.
    ValueError when some group has more live slots than slots / groups (rows cannot leave their device)."""
    per_old, per_new = len(live) // groups, slots // groups
    keep = []
    for g in range(groups):
        own = np.arange(g * per_old, (g + 1) * per_old)
        if live[own].sum() > per_new:
            raise ValueError(f"group {g} has {int(live[own].sum())} live slots; {slots} slots over {groups} groups "
                             f"leave it {per_new}")
        keep.append(np.concatenate([own[live[own]], own[~live[own]]])[:per_new])
    return np.concatenate(keep).astype(np.int32)
