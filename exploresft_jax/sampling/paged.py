"""Paged KV cache: one pool of fixed-size pages shared by every decode slot, each slot's tokens on the pages its
page table lists, pages taken from the pool as the slot's row grows (the layout of vLLM's PagedAttention, and the
one TPU's ragged paged attention kernel reads).

Why: a dense slot cache holds every slot at the longest row's capacity (a GRPO step's 17,920 entries), while most
rollouts end far earlier; with pages a slot costs the entries its row actually holds, rounded up to a page, so the
same memory holds more rows of a long-tailed mix.

Pieces:

* `PageAllocator` (host): the free list and each slot's pages. `reserve(slot, tokens)` grows a slot to hold
  `tokens` entries; `grow(need, order)` does it for every live slot and, when the pool runs short, releases the
  newest slots (preemption: their samples restart from the queue, and regenerate the same tokens because a
  sample's randomness depends only on its row and column, see `sampling.continuous`); `table()` is the
  [slots, pages_per_slot] int32 page table handed to the device.
* The device side, `models.paged_kv`: token writes into pages, reads of a row's pages, attention over them, and
  `Qwen2.decode_ragged(page_table=...)`, one decode step over a page pool [L, P, K, page_size, H].
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np


class PageAllocator:
    """Pages of a pool of `num_pages`, each `page_size` entries, shared by `slots` decode slots of at most
    `pages_per_slot` pages each (the page table's width). Pages are taken from the free list on demand and
    returned whole when a slot is released; no page is ever held by two slots."""

    def __init__(self, num_pages: int, page_size: int, slots: int, pages_per_slot: int):
        if min(num_pages, page_size, slots, pages_per_slot) < 1:
            raise ValueError(f"num_pages={num_pages}, page_size={page_size}, slots={slots} and "
                             f"pages_per_slot={pages_per_slot} must all be >= 1")
        self.num_pages, self.page_size = int(num_pages), int(page_size)
        self.slots, self.pages_per_slot = int(slots), int(pages_per_slot)
        self._free = list(range(self.num_pages - 1, -1, -1))  # a stack: page 0 handed out first
        self._pages: list[list[int]] = [[] for _ in range(self.slots)]

    @property
    def free_pages(self) -> int:
        return len(self._free)

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
        """Grows `slot` to hold `tokens` entries (never shrinks it). False, with nothing taken, if the pool has
        too few free pages."""
        more = self._check(slot, tokens)
        if more > len(self._free):
            return False
        for _ in range(max(0, more)):
            self._pages[slot].append(self._free.pop())
        return True

    def release(self, slot: int) -> None:
        """Returns every page of `slot` to the pool."""
        self._free.extend(reversed(self._pages[slot]))
        self._pages[slot] = []

    def grow(self, need: Mapping[int, int], order: Sequence[int]) -> list[int]:
        """Reserves need[slot] entries for every slot of `order` (oldest first). While the free pages cannot
        cover all of them, the last slot of `order` is released (preempted, newest first). Returns the preempted
        slots. Raises ValueError when even the oldest slot alone cannot fit in the whole pool."""
        live = list(order)
        preempted = []
        while sum(max(0, self._check(s, need[s])) for s in live) > len(self._free):
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
        """Renumbers the slots: new slot j is old slot keep[j] (a compaction to len(keep) slots). Slots left out
        must hold no pages."""
        dropped = set(range(self.slots)) - {int(s) for s in keep}
        held = [s for s in dropped if self._pages[s]]
        if held:
            raise ValueError(f"slots {held} still hold pages")
        self._pages = [self._pages[int(s)] for s in keep]
        self.slots = len(self._pages)

    def table(self) -> np.ndarray:
        """[slots, pages_per_slot] int32: each slot's pages in order, then 0 (a page that may belong to another
        slot: entries past a row's length are masked on read and never written)."""
        out = np.zeros((self.slots, self.pages_per_slot), np.int32)
        for s, pages in enumerate(self._pages):
            out[s, :len(pages)] = pages
        return out
