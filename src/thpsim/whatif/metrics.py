"""Metrics of a mapped layout: RSS, folio-size histogram, TLB entries.

A layout here is, per VMA, arrays over its pages: ``kind`` (``K_*`` of
:mod:`thpsim.whatif.layout`) and ``order`` (folio order of present pages).

TLB entries follow the models of :mod:`thpsim.metrics.tlb` (x86-64, AMD 4-page
coalescing, arm64 16-entry contpte) under one assumption the snapshot forces
(it has no physical addresses): a large folio's pages are physically contiguous
and naturally aligned, so a page's physical offset in its folio equals its
virtual offset; order-0 pages and zero pages never share an entry.  The counting works on
aligned blocks instead of the reference's ``np.unique`` (the test suite checks
both agree), so a 64 GiB layout takes a fraction of a second.
"""

from __future__ import annotations

import numpy as np

from thpsim.whatif.layout import K_HUGE, K_HZERO, K_PRESENT, K_SWAP, K_ZERO

__all__ = ["LayoutMetrics", "layout_metrics"]

TLB_MODELS = ("x86-64", "amd", "arm64")


class LayoutMetrics:
    """Accumulates metrics over the VMAs of one layout."""

    def __init__(self, max_order: int) -> None:
        self.rss_anon = 0
        self.swap = 0
        self.zero = 0
        self.huge_zero_pmds = 0
        self.pmd_mapped = 0
        self.folios = np.zeros(max_order + 1, dtype=np.int64)  # PTE-mapped, by order
        self.pages = np.zeros(max_order + 1, dtype=np.int64)
        self.tlb = dict.fromkeys(TLB_MODELS, 0)

    def add(self, vpn0: int, kind: np.ndarray, order: np.ndarray, pmd_nr: int) -> None:
        """Add one VMA whose first page has virtual page number ``vpn0``.

        Folios are identified by their natural alignment: every folio of order
        ``o`` occupies one aligned block of ``2**o`` virtual pages (true of loaded
        snapshots and of everything khugepaged creates), so a block holding a mapped
        page of order ``o`` is exactly one folio.
        """
        huge = int(np.count_nonzero(kind == K_HUGE))
        hz = int(np.count_nonzero(kind == K_HZERO))
        n_pr = int(np.count_nonzero(kind == K_PRESENT))
        n_zero = int(np.count_nonzero(kind == K_ZERO))
        self.rss_anon += huge + n_pr
        self.swap += int(np.count_nonzero(kind == K_SWAP))
        self.zero += n_zero
        self.huge_zero_pmds += hz // pmd_nr
        self.pmd_mapped += huge // pmd_nr
        pmds = (huge + hz) // pmd_nr
        n_huge = huge // pmd_nr  # PMD-mapped pages keep the PMD order in ``order``
        by_order = np.array([np.count_nonzero(order == o) for o in range(self.pages.size)])
        by_order[-1] -= huge
        self.pages += by_order
        # x86-64: one entry per PTE; AMD: one per 4-block of a folio of order >= 2, one
        # per order-1 folio, one per other page; arm64: a full 16-block of a folio of
        # order >= 4 is one entry, every other PTE one.  PMD-mapped windows are
        # aligned, so they fill whole blocks, which are subtracted.
        top = self.pages.size - 1
        per = {o: pmd_nr >> o for o in range(top + 1)}
        amd = n_zero + int(by_order[0])
        arm = n_zero + int(by_order[: min(4, by_order.size)].sum())
        self.folios[0] += by_order[0]
        for o in np.flatnonzero(by_order[1:]).tolist():
            o += 1
            blocks = _block_any(order == o, vpn0, 1 << o)
            self.folios[o] += blocks - (n_huge if o == top else 0)
            if o == 1:
                amd += blocks
        if by_order[2:].any():
            amd += _block_any(order >= 2, vpn0, 4) - n_huge * per[2]
        if by_order[4:].any():
            m4 = order >= 4
            full = _block_full(m4, vpn0, 16) - n_huge * per[4]
            arm += full + int(by_order[4:].sum()) - 16 * full
        self.tlb["x86-64"] += pmds + n_pr + n_zero
        self.tlb["amd"] += pmds + amd
        self.tlb["arm64"] += pmds + arm

    def as_dict(self, size_names: list[str], page_size: int = 4096) -> dict:
        hist = {size_names[o]: {"order": o, "folios": int(self.folios[o]),
                                "pages": int(self.pages[o]), "bytes": 0}
                for o in range(self.pages.size) if self.pages[o]}
        return {"rss_anon_pages": self.rss_anon, "swap_pages": self.swap,
                "zero_pages": self.zero, "pmd_mapped": self.pmd_mapped,
                "huge_zero_pmds": self.huge_zero_pmds,
                "pte_folios": {k: {**v, "bytes": page_size << v["order"]} for k, v in hist.items()},
                "tlb_entries": dict(self.tlb)}


def _blocks(mask: np.ndarray, vpn0: int, size: int) -> np.ndarray:
    """``mask`` as rows of naturally aligned ``size``-page virtual blocks, viewed as
    unsigned words where a row fits one (zero padded; no copy when aligned)."""
    pad = vpn0 % size
    if pad or mask.size % size:
        total = -(-(pad + mask.size) // size) * size
        out = np.zeros(total, dtype=bool)
        out[pad : pad + mask.size] = mask
        mask = out
    m = mask.view(np.uint8)
    word = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}.get(size)
    if word is not None:
        return m.view(word).reshape(-1, 1)
    return m.view(np.uint64).reshape(-1, size // 8)


def _block_any(mask: np.ndarray, vpn0: int, size: int) -> int:
    """Aligned ``size``-blocks holding at least one True."""
    b = _blocks(mask, vpn0, size)
    return int(np.count_nonzero(b.any(axis=1)))


def _block_full(mask: np.ndarray, vpn0: int, size: int) -> int:
    """Aligned ``size``-blocks that are all True."""
    b = _blocks(mask, vpn0, size)
    return int(np.count_nonzero((b == np.array(0x0101010101010101, dtype=np.uint64)).all(axis=1)))


def layout_metrics(layouts, max_order: int, pmd_nr: int) -> LayoutMetrics:
    """Metrics of ``layouts``: iterable of ``(vpn0, kind, order)`` per VMA."""
    lm = LayoutMetrics(max_order)
    for vpn0, kind, order in layouts:
        lm.add(vpn0, kind, order, pmd_nr)
    return lm
