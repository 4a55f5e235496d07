"""Swap: a swap device, swap-out of folios and swap-in of entries.

Twin of mm/swapfile.c (slot counts, ``swap_free``), mm/swap_state.c (the swap
cache) and the part of mm/vmscan.c that reclaims one folio (``shrink_folio_list``
for anon: discard clean lazy-free folios, otherwise swap out).  Swap-in always
brings a page back as an order-0 folio, as the host kernel does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from thpsim.mm import rmap
from thpsim.mm.folio import PG_DIRTY, PG_LAZYFREE, PG_SWAPCACHE
from thpsim.mm.pgtable import F_DIRTY, PTE_SWAP

if TYPE_CHECKING:
    from thpsim.system import System

__all__ = ["SwapDevice", "reclaim_ptes", "swap_free", "swapin_folio"]


class SwapDevice:
    """A swap area of ``nr_slots`` page-sized slots.

    Parameters
    ----------
    nr_slots : int
        Capacity in pages.
    """

    def __init__(self, nr_slots: int) -> None:
        self.nr_slots = nr_slots
        #: swap_map: number of swap PTEs referring to each slot
        self.count = np.zeros(nr_slots, dtype=np.int32)
        self.content = np.zeros(nr_slots, dtype=np.int64)
        #: swap cache: slot -> head pfn of the order-0 folio holding its data
        self.cache: dict[int, int] = {}
        self.folio_slot: dict[int, int] = {}
        self._free = list(range(nr_slots - 1, -1, -1))

    @property
    def nr_free(self) -> int:
        return len(self._free)

    def alloc_slots(self, n: int) -> np.ndarray | None:
        if len(self._free) < n:
            return None
        out = np.array(self._free[-n:][::-1], dtype=np.int64)
        del self._free[-n:]
        return out

    def release_slot(self, slot: int) -> None:
        self.content[slot] = 0
        self._free.append(slot)


def swap_free(sys: System, slots: np.ndarray) -> None:
    """``swap_free``: drop one reference per entry; free slots that reach 0."""
    dev = sys.swap
    assert dev is not None
    slots = np.asarray(slots, dtype=np.int64)
    np.subtract.at(dev.count, slots, 1)
    for slot in np.unique(slots[dev.count[slots] == 0]).tolist():
        head = dev.cache.pop(slot, None)
        if head is not None:
            # the last swap reference is gone: delete the folio from the swap cache
            del dev.folio_slot[head]
            f = sys.folios
            f.clear(head, PG_SWAPCACHE)
            f.refcount[head] -= 1
            rmap.folio_put_if_unused(sys, head)
        dev.release_slot(slot)


def swapin_folio(sys: System, slot: int) -> int:
    """``swapin_readahead`` for one entry: the swap-cache folio, read in if needed."""
    from thpsim.mm.memory import OOMError

    dev = sys.swap
    assert dev is not None
    head = dev.cache.get(slot)
    if head is not None:
        return head
    head, status = sys.alloc_folio(0, 0)
    if status:
        raise OOMError("order-0 allocation failed in swap-in")
    f = sys.folios
    f.content[head] = dev.content[slot]
    f.set(head, PG_SWAPCACHE)
    f.refcount[head] += 1
    dev.cache[slot] = head
    dev.folio_slot[head] = slot
    sys.counters.count_vm_event("pswpin")
    return head


def reclaim_ptes(sys: System, mm, row: int, idx: np.ndarray) -> int:
    """Reclaim the folios mapped by PTEs ``idx`` of table ``row`` (MADV_PAGEOUT).

    Every folio must lie wholly inside ``idx`` and be mapped only by ``mm``
    (the caller splits and filters).  Pinned folios and swap-cache folios are
    skipped.  Clean lazy-free folios are discarded (PTEs become none); dirty
    ones stay mapped and lose the lazy-free mark; the others are written to
    swap if the device has room, one swap entry per page.  Returns the number
    of pages reclaimed.
    """
    pt = mm.pt
    f = sys.folios
    idx = np.asarray(idx, dtype=np.int64)
    if idx.size == 0:
        return 0
    pfns = pt.pfn[row, idx].astype(np.int64)
    heads = f.heads_of(pfns)
    uh, inv = np.unique(heads, return_inverse=True)
    orders = f.order[uh]
    mapcounts = np.where(
        orders == 0, f.mapcount[uh], [f.folio_mapcount(int(h)) if o else 0
                                      for h, o in zip(uh.tolist(), orders.tolist(), strict=True)]
    )
    ok = f.refcount[uh] == mapcounts
    pte_dirty = np.bincount(inv, weights=(pt.flags[row, idx] & F_DIRTY) > 0, minlength=uh.size)
    lazy = (f.flags[uh] & PG_LAZYFREE) > 0
    clean_lazy = lazy & ((f.flags[uh] & PG_DIRTY) == 0) & (pte_dirty == 0)
    done = 0
    discard = (ok & clean_lazy)[inv]
    if discard.any():
        d = idx[discard]
        pt.kind[row, d] = 0
        pt.pfn[row, d] = 0
        pt.flags[row, d] = 0
        mm.rss_anon -= d.size
        rmap.folio_remove_ptes(sys, pfns[discard])
        done += d.size
    # A lazy-free folio written since MADV_FREE cannot be dropped: try_to_unmap
    # fails, the folio becomes swap-backed again and stays mapped this time.
    redirtied = ok & lazy & ~clean_lazy
    if redirtied.any():
        f.flags[uh[redirtied]] &= ~np.uint16(PG_LAZYFREE)
    dev = sys.swap
    if dev is None:
        return done
    want = ok & ~lazy
    # whole folios only, in address order, while slots last
    sizes = np.left_shift(1, orders.astype(np.int64))
    fits = np.cumsum(np.where(want, sizes, 0)) <= dev.nr_free
    want &= fits
    sel = want[inv]
    if not sel.any():
        return done
    s_idx = idx[sel]
    s_pfns = pfns[sel]
    slots = dev.alloc_slots(s_idx.size)
    assert slots is not None
    dev.content[slots] = f.content[s_pfns]
    dev.count[slots] = 1
    pt.kind[row, s_idx] = PTE_SWAP
    pt.pfn[row, s_idx] = slots
    pt.flags[row, s_idx] = 0
    mm.rss_anon -= s_idx.size
    mm.rss_swap += s_idx.size
    c = sys.counters
    c.count_vm_event("pswpout", int(s_idx.size))
    for o in orders[want].tolist():
        if o:
            c.count_mthp_stat(o, "swpout")
            if o == sys.geometry.pmd_order:
                c.count_vm_event("thp_swpout")
    rmap.folio_remove_ptes(sys, s_pfns)
    return done + int(s_idx.size)
