"""madvise() for private anonymous memory (twin of mm/madvise.c).

Advice values are the kernel's numbers; :data:`ADVICE` maps the names the
CLI and scenarios use.  ``do_madvise`` returns 0 or a negative errno; a hole
in the range gives ``-ENOMEM`` after the mapped parts were handled.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

import numpy as np

from thpsim.mm import huge_memory, rmap, swapfile
from thpsim.mm.folio import PG_DIRTY, PG_LAZYFREE, PG_REFERENCED, PG_YOUNG
from thpsim.mm.memory import zap_page_range
from thpsim.mm.mmap import vma_modify_flags
from thpsim.mm.pgtable import F_DIRTY, F_YOUNG, PTE_NONE, PTE_PRESENT, PTE_SWAP
from thpsim.mm.vma import VM_HUGEPAGE, VM_NOHUGEPAGE, VMA

if TYPE_CHECKING:
    from thpsim.mm.mm import MM
    from thpsim.system import System

__all__ = ["ADVICE", "do_madvise"]

MADV_DONTNEED = 4
MADV_FREE = 8
MADV_HUGEPAGE = 14
MADV_NOHUGEPAGE = 15
MADV_COLD = 20
MADV_PAGEOUT = 21
MADV_COLLAPSE = 25

ADVICE = {
    "dontneed": MADV_DONTNEED,
    "free": MADV_FREE,
    "hugepage": MADV_HUGEPAGE,
    "nohugepage": MADV_NOHUGEPAGE,
    "cold": MADV_COLD,
    "pageout": MADV_PAGEOUT,
    "collapse": MADV_COLLAPSE,
}


def do_madvise(sys: System, mm: MM, start: int, end: int, advice: int) -> int:
    """Apply ``advice`` to ``[start, end)`` (vpn)."""
    if advice not in ADVICE.values():
        return -errno.EINVAL
    if end <= start:
        return 0
    if advice == MADV_COLLAPSE:
        return sys.khugepaged.madvise_collapse(mm, start, end)
    vmas = mm.vmas.overlapping(start, end)
    covered = sum(min(v.end, end) - max(v.start, start) for v in vmas)
    for vma in vmas:
        s, e = max(vma.start, start), min(vma.end, end)
        if advice in (MADV_HUGEPAGE, MADV_NOHUGEPAGE):
            _hugepage_madvise(sys, mm, vma, s, e, advice)
        elif advice == MADV_DONTNEED:
            zap_page_range(sys, mm, s, e, reclaim_pt=True)
        elif advice == MADV_FREE:
            _madvise_free(sys, mm, vma, s, e)
        else:
            _madvise_cold_or_pageout(sys, mm, vma, s, e, pageout=advice == MADV_PAGEOUT)
    return 0 if covered == end - start else -errno.ENOMEM


def _hugepage_madvise(sys: System, mm: MM, vma: VMA, s: int, e: int, advice: int) -> None:
    if advice == MADV_HUGEPAGE:
        new = (vma.flags | VM_HUGEPAGE) & ~VM_NOHUGEPAGE
    else:
        new = (vma.flags | VM_NOHUGEPAGE) & ~VM_HUGEPAGE
    vma = vma_modify_flags(sys, mm, vma, s, e, new)
    if advice == MADV_HUGEPAGE:
        sys.khugepaged.enter_vma(mm, vma)


def _windows(sys: System, s: int, e: int):
    """(pmd, window start, lo, hi) for every PMD window overlapping [s, e)."""
    g = sys.geometry
    for pmd in range(s >> g.pmd_order, ((e - 1) >> g.pmd_order) + 1):
        ws = pmd << g.pmd_order
        yield pmd, ws, max(s, ws), min(e, ws + g.hpage_pmd_nr)


def _huge_exclusive(sys: System, head: int) -> bool:
    f = sys.folios
    return f.refcount[head] == 1 and f.entire.get(head, 0) == 1


def _split_partial_large(sys: System, mm: MM, row: int, lo: int, hi: int) -> None:
    """Split exclusive large folios that ``[lo, hi)`` (PTE indices) only partly covers,
    or that are only partly mapped (the PTE batch is shorter than the folio)."""
    pt = mm.pt
    f = sys.folios
    present = lo + np.flatnonzero(pt.kind[row, lo:hi] == PTE_PRESENT)
    if not present.size:
        return
    heads = np.unique(f.heads_of(pt.pfn[row, present].astype(np.int64)))
    for head in heads[f.order[heads] > 0].tolist():
        n = f.nr_pages(head)
        pf = pt.pfn[row]
        mine = np.flatnonzero((pt.kind[row] == PTE_PRESENT) & (pf >= head) & (pf < head + n))
        partial = mine.size and (mine[0] < lo or mine[-1] >= hi or mine.size < n)
        if partial and not rmap.folio_maybe_mapped_shared(sys, mm, head):
            huge_memory.split_folio(sys, head)


def _exclusive_present(sys: System, mm: MM, row: int, lo: int, hi: int) -> np.ndarray:
    """PTE indices in [lo, hi) mapping folios that only ``mm`` maps."""
    pt = mm.pt
    kinds = pt.kind[row, lo:hi]
    shared = rmap.shared_mask_row(sys, pt.kind[row], pt.pfn[row])[lo:hi]
    return lo + np.flatnonzero((kinds == PTE_PRESENT) & ~shared)


def _madvise_free(sys: System, mm: MM, vma: VMA, s: int, e: int) -> None:
    """MADV_FREE: mark exclusive pages lazy-free and clean; drop swap entries."""
    pt = mm.pt
    f = sys.folios
    nr = pt.nr
    for pmd, ws, lo, hi in _windows(sys, s, e):
        huge = pt.huge.get(pmd)
        if huge is not None:
            head = huge[0]
            # madvise_free_huge_pmd: the huge zero page and shared folios are skipped
            if head < 0 or not _huge_exclusive(sys, head):
                continue
            if lo == ws and hi == ws + nr:
                f.set(head, PG_LAZYFREE)
                f.clear(head, PG_DIRTY)
                huge[1] &= ~(F_DIRTY | F_YOUNG)
                continue
            huge_memory.split_huge_pmd(sys, mm, pmd)
        row = pt.row(pmd)
        if row is None:
            continue
        a, b = lo - ws, hi - ws
        swap = a + np.flatnonzero(pt.kind[row, a:b] == PTE_SWAP)
        if swap.size:
            swapfile.swap_free(sys, pt.pfn[row, swap].astype(np.int64))
            pt.kind[row, swap] = PTE_NONE
            pt.pfn[row, swap] = 0
            mm.rss_swap -= swap.size
        _split_partial_large(sys, mm, row, a, b)
        idx = _exclusive_present(sys, mm, row, a, b)
        if idx.size:
            heads = np.unique(f.heads_of(pt.pfn[row, idx].astype(np.int64)))
            f.flags[heads] = (f.flags[heads] | PG_LAZYFREE) & ~np.uint16(PG_DIRTY)
            pt.flags[row, idx] &= np.uint8(0xFF ^ (F_DIRTY | F_YOUNG))


def _madvise_cold_or_pageout(sys: System, mm: MM, vma: VMA, s: int, e: int,
                             pageout: bool) -> None:
    """MADV_COLD deactivates (clears young); MADV_PAGEOUT reclaims."""
    pt = mm.pt
    f = sys.folios
    nr = pt.nr
    for pmd, ws, lo, hi in _windows(sys, s, e):
        huge = pt.huge.get(pmd)
        if huge is not None:
            head = huge[0]
            whole = lo == ws and hi == ws + nr
            if head < 0 or not _huge_exclusive(sys, head):
                continue  # the huge zero page and shared folios are left alone
            if whole and not pageout:
                huge[1] &= ~F_YOUNG
                f.clear(head, PG_YOUNG | PG_REFERENCED)
                continue
            huge_memory.split_huge_pmd(sys, mm, pmd)
        row = pt.row(pmd)
        if row is None:
            continue
        a, b = lo - ws, hi - ws
        _split_partial_large(sys, mm, row, a, b)
        idx = _exclusive_present(sys, mm, row, a, b)
        if not idx.size:
            continue
        if pageout:
            # only folios wholly inside the range (a split may have failed)
            pf = pt.pfn[row, idx].astype(np.int64)
            heads = f.heads_of(pf)
            uh, inv, cnt = np.unique(heads, return_inverse=True, return_counts=True)
            whole_folio = (np.left_shift(1, f.order[uh].astype(np.int64)) == cnt)[inv]
            swapfile.reclaim_ptes(sys, mm, row, idx[whole_folio])
        else:
            pt.flags[row, idx] &= np.uint8(0xFF ^ F_YOUNG)
            heads = np.unique(f.heads_of(pt.pfn[row, idx].astype(np.int64)))
            f.flags[heads] &= ~np.uint16(PG_YOUNG | PG_REFERENCED)
