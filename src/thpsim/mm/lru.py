"""The per-CPU ``lru_add`` folio batch (twin of mm/swap.c ``folio_add_lru``).

Folios put back on the LRU go through a per-CPU batch of ``FOLIO_BATCH_SIZE``
(31).  While waiting there a folio holds an extra reference and is not on an
LRU list; khugepaged's isolate then fails on it with ``SCAN_PAGE_COUNT``.
The batch is flushed when it fills, when a large folio is added
(``folio_may_be_lru_cached`` is false for them) and by ``lru_add_drain``.
This machinery explains real 7.2 attempt sequences (linux-7.2.md §4.6); it is a
property of the kernel, not of a collapse policy, and can be switched off to
get the pure algorithm.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from thpsim.mm.folio import PG_LRU

if TYPE_CHECKING:
    from thpsim.system import System

__all__ = ["FOLIO_BATCH_SIZE", "LruAddBatch"]

FOLIO_BATCH_SIZE = 31


class LruAddBatch:
    """One CPU's ``lru_add`` batch.

    Parameters
    ----------
    sys : System
        The machine whose folios are batched.
    enabled : bool
        With False folios go straight back to the LRU (no transient pins).
    """

    def __init__(self, sys: System, enabled: bool = True) -> None:
        self.sys = sys
        self.enabled = enabled
        self.folios: list[int] = []

    def add(self, head: int) -> None:
        """``folio_add_lru``: queue ``head`` (holding a reference), flush if due."""
        f = self.sys.folios
        if not self.enabled:
            f.set(head, PG_LRU)
            return
        f.clear(head, PG_LRU)
        f.pins[head] = f.pins.get(head, 0) + 1
        f.refcount[head] += 1
        self.folios.append(head)
        if len(self.folios) >= FOLIO_BATCH_SIZE or f.order[head] > 0:
            self.drain()

    def drain(self) -> None:
        """``lru_add_drain``: move every batched folio to the LRU, dropping the pins."""
        f = self.sys.folios
        batch, self.folios = self.folios, []
        for head in batch:
            f.set(head, PG_LRU)
            n = f.pins[head] - 1
            if n:
                f.pins[head] = n
            else:
                del f.pins[head]
            f.refcount[head] -= 1
            if f.refcount[head] == 0:
                self.sys.free_folio(head)

    def __len__(self) -> int:
        return len(self.folios)
