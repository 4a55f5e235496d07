"""Physical pages and folios as a struct of arrays indexed by pfn.

Twin of ``struct folio`` / ``struct page``.  A folio is identified by the pfn
of its head page; only head entries of the per-folio arrays are meaningful.
Per page we keep the content token and the per-page mapcount (``_mapcount``
of the kernel's ``struct page``), so that partial mappings and
``kpagecount`` are exact.

Memory cost: 20 bytes per physical page (order 1, refcount 4, mapcount 4,
flags 2, node 1, content 8); arrays come from ``np.zeros`` so untouched memory
costs nothing.  The rare per-large-folio extras (PMD mapcount, virtual index,
transient pins) live in dicts keyed by head pfn.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "PG_ANON",
    "PG_DIRTY",
    "PG_LAZYFREE",
    "PG_LOCKED",
    "PG_LRU",
    "PG_PARTIALLY_MAPPED",
    "PG_REFERENCED",
    "PG_SWAPCACHE",
    "PG_YOUNG",
    "FolioTable",
]

# Folio flag bits (names follow enum pageflags / folio tests).
PG_ANON = 1 << 0
PG_LRU = 1 << 1
PG_LOCKED = 1 << 2
PG_SWAPCACHE = 1 << 3
PG_YOUNG = 1 << 4  # folio_test_young (page_idle)
PG_REFERENCED = 1 << 5
PG_LAZYFREE = 1 << 6  # anon && !swapbacked after MADV_FREE
PG_PARTIALLY_MAPPED = 1 << 7
PG_DIRTY = 1 << 8
PG_DEFERRED = 1 << 9  # on the deferred-split queue
PG_MLOCKED = 1 << 10


class FolioTable:
    """Per-pfn page and folio state.

    Parameters
    ----------
    total_pages : int
        Number of physical pages (pfns ``0 .. total_pages - 1``).
    """

    def __init__(self, total_pages: int) -> None:
        self.total_pages = total_pages
        #: folio order at the head pfn, -1 elsewhere (tail or not allocated)
        self.order = np.full(total_pages, -1, dtype=np.int8)
        self.refcount = np.zeros(total_pages, dtype=np.int32)
        #: per-page count of PTE mappings over all mms
        self.mapcount = np.zeros(total_pages, dtype=np.int32)
        self.flags = np.zeros(total_pages, dtype=np.uint16)
        self.node = np.zeros(total_pages, dtype=np.uint8)
        #: content token of every page; 0 means zero-filled
        self.content = np.zeros(total_pages, dtype=np.int64)
        #: PMD mappings of a PMD-order folio (``_entire_mapcount``), head -> count
        self.entire: dict[int, int] = {}
        #: ``folio->index`` of large folios: virtual page number at creation
        self.vpn: dict[int, int] = {}
        #: transient extra references (per-CPU LRU batch, GUP pins), head -> count
        self.pins: dict[int, int] = {}
        self.nr_live = 0

    # --- creation / destruction -------------------------------------------------
    def init_folio(self, head: int, order: int, node: int = 0, vpn: int | None = None) -> None:
        """Set up a freshly allocated anon folio (zeroed, on the LRU, unmapped)."""
        n = 1 << order
        self.order[head] = order
        self.refcount[head] = 0
        self.mapcount[head : head + n] = 0
        self.flags[head] = PG_ANON | PG_LRU
        self.node[head] = node
        self.content[head : head + n] = 0
        if order > 0 and vpn is not None:
            self.vpn[head] = vpn
        self.nr_live += 1

    def init_bulk_order0(self, pfns: np.ndarray, node: int = 0) -> None:
        """Vectorised :meth:`init_folio` for many order-0 folios."""
        self.order[pfns] = 0
        self.refcount[pfns] = 0
        self.mapcount[pfns] = 0
        self.flags[pfns] = PG_ANON | PG_LRU
        self.node[pfns] = node
        self.content[pfns] = 0
        self.nr_live += len(pfns)

    def clear_folio(self, head: int) -> int:
        """Forget a folio being freed; returns its order."""
        order = int(self.order[head])
        self.order[head] = -1
        self.refcount[head] = 0
        self.flags[head] = 0
        n = 1 << order
        self.content[head : head + n] = 0
        self.mapcount[head : head + n] = 0
        self.entire.pop(head, None)
        self.vpn.pop(head, None)
        self.pins.pop(head, None)
        self.nr_live -= 1
        return order

    # --- queries -------------------------------------------------------------
    def nr_pages(self, head: int) -> int:
        return 1 << int(self.order[head])

    def folio_of(self, pfn: int) -> int:
        """Head pfn of the folio containing ``pfn`` (walks back like kpageflags TAIL)."""
        if self.order[pfn] >= 0:
            return pfn
        # Large folios are naturally aligned: try each alignment.
        for order in range(1, 14):
            head = pfn & ~((1 << order) - 1)
            o = int(self.order[head])
            if o >= order:
                return head
        raise KeyError(f"pfn {pfn} is not part of a live folio")

    def heads_of(self, pfns: np.ndarray) -> np.ndarray:
        """Vectorised :meth:`folio_of`."""
        pfns = np.asarray(pfns, dtype=np.int64)
        heads = pfns.copy()
        unresolved = self.order[pfns] < 0
        order = 1
        while unresolved.any() and order < 14:
            cand = pfns[unresolved] & ~np.int64((1 << order) - 1)
            ok = self.order[cand] >= order
            idx = np.flatnonzero(unresolved)
            heads[idx[ok]] = cand[ok]
            unresolved[idx[ok]] = False
            order += 1
        if unresolved.any():
            raise KeyError(f"pfn {int(pfns[unresolved][0])} is not part of a live folio")
        return heads

    def folio_mapcount(self, head: int) -> int:
        """``folio_mapcount``: PTE mappings of all pages plus PMD mappings."""
        n = self.nr_pages(head)
        total = int(self.mapcount[head : head + n].sum()) if n > 1 else int(self.mapcount[head])
        return total + self.entire.get(head, 0)

    def expected_refcount(self, head: int) -> int:
        """``folio_expected_ref_count`` plus transient pins: what refcount must be."""
        swapcache = self.nr_pages(head) if self.flags[head] & PG_SWAPCACHE else 0
        return self.folio_mapcount(head) + swapcache + self.pins.get(head, 0)

    def test(self, head: int, flag: int) -> bool:
        return bool(self.flags[head] & flag)

    def set(self, head: int, flag: int) -> None:
        self.flags[head] |= flag

    def clear(self, head: int, flag: int) -> None:
        self.flags[head] &= ~np.uint16(flag)
