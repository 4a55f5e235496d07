"""The anonymous fault path and zapping (twin of mm/memory.c).

``handle_mm_fault`` follows ``__handle_mm_fault``: a none PMD first tries the
PMD path (``do_huge_pmd_anonymous_page``), then the PTE level handles
``do_anonymous_page`` (mTHP order choice of ``alloc_anon_folio``),
``do_wp_page`` (reuse or order-0 COW) and ``do_swap_page`` (order-0 swap-in).

``touch_pages`` is the batched API: it resolves faults page by page where
the order choice depends on earlier faults, and vectorises the common cases
(already-mapped pages, order-0-only regions, zero-page read faults).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from thpsim.mm import huge_memory, rmap, swapfile
from thpsim.mm.huge_memory import TVA_PAGEFAULT, thp_vma_allowable_orders
from thpsim.mm.pgtable import (
    F_DIRTY,
    F_WRITE,
    F_YOUNG,
    HUGE_ZERO_PFN,
    PTE_NONE,
    PTE_PRESENT,
    PTE_SWAP,
    PTE_ZERO,
)
from thpsim.mm.vma import VM_READ, VM_WRITE, VMA, new_anon_vma_id

if TYPE_CHECKING:
    from thpsim.mm.mm import MM
    from thpsim.system import System

__all__ = [
    "OOMError",
    "SegvError",
    "alloc_anon_folio_order",
    "anon_vma_prepare",
    "handle_mm_fault",
    "touch_pages",
    "zap_page_range",
]

NEW_PTE_FLAGS = F_YOUNG | F_DIRTY | F_WRITE


class SegvError(Exception):
    """The access would raise SIGSEGV (no VMA, or the protection forbids it)."""


class OOMError(MemoryError):
    """An order-0 allocation failed: the model's machine is out of memory."""


def anon_vma_prepare(vma: VMA) -> None:
    """``anon_vma_prepare``: the first write fault gives the VMA an anon_vma."""
    if not vma.anon_vma:
        vma.anon_vma = new_anon_vma_id()


def _vma_for_access(mm: MM, vpn: int, write: bool) -> VMA:
    vma = mm.vmas.find(vpn)
    if vma is None:
        raise SegvError(f"no VMA at {vpn << mm.geometry.page_shift:#x}")
    need = VM_WRITE if write else VM_READ
    if not vma.flags & need:
        raise SegvError(f"{'write' if write else 'read'} to {vpn << mm.geometry.page_shift:#x}"
                        " not permitted by the VMA's protection")
    return vma


def handle_mm_fault(sys: System, mm: MM, vpn: int, write: bool) -> None:
    """Resolve one fault at ``vpn`` (``handle_mm_fault``)."""
    vma = _vma_for_access(mm, vpn, write)
    g = sys.geometry
    pmd = vpn >> g.pmd_order
    pt = mm.pt
    huge = pt.huge.get(pmd)
    if huge is not None:
        if not write:
            huge[1] |= F_YOUNG
            return
        if huge_memory.do_huge_pmd_wp_page(sys, mm, vma, pmd):
            return
    elif pmd not in pt.tables:
        if huge_memory.pmd_fault_allowed(sys, mm, vma, pmd) and \
                huge_memory.do_huge_pmd_anonymous_page(sys, mm, vma, pmd, write):
            return
        pt.alloc_table(pmd)
    row = pt.tables[pmd]
    _handle_pte_fault(sys, mm, vma, row, vpn, write)


def _handle_pte_fault(sys: System, mm: MM, vma: VMA, row: int, vpn: int, write: bool) -> None:
    pt = mm.pt
    i = vpn & (pt.nr - 1)
    kind = pt.kind[row, i]
    if kind == PTE_NONE:
        if not write:
            pt.kind[row, i] = PTE_ZERO  # the shared zero page; no anon_vma needed
            pt.flags[row, i] = 0
            return
        do_anonymous_page(sys, mm, vma, row, vpn)
    elif kind == PTE_ZERO:
        if write:
            wp_page_copy(sys, mm, vma, row, i)
    elif kind == PTE_SWAP:
        do_swap_page(sys, mm, vma, row, i, write)
    elif not write:
        pt.flags[row, i] |= F_YOUNG
    elif pt.flags[row, i] & F_WRITE:
        pt.flags[row, i] |= F_YOUNG | F_DIRTY
    else:
        do_wp_page(sys, mm, vma, row, i)


def fault_orders(sys: System, mm: MM, vma: VMA, vpn: int) -> list[int]:
    """Candidate mTHP orders for a write fault at ``vpn``, highest first.

    ``thp_vma_allowable_orders(TVA_PAGEFAULT)`` for orders below the PMD
    order, then ``thp_vma_suitable_orders``: the naturally aligned block around
    the address must lie inside the VMA.  A uffd-armed VMA gets order 0 only.
    """
    if vma.uffd_armed:
        return []
    g = sys.geometry
    mask = ((1 << g.pmd_order) - 1) & ~0b11  # orders 2 .. PMD order - 1
    mask = thp_vma_allowable_orders(sys, mm, vma, TVA_PAGEFAULT, mask)
    out = []
    for order in range(g.pmd_order - 1, 1, -1):
        if mask & (1 << order):
            start = vpn & ~((1 << order) - 1)
            if start >= vma.start and start + (1 << order) <= vma.end:
                out.append(order)
    return out


def alloc_anon_folio_order(sys: System, mm: MM, vma: VMA, row: int, vpn: int) -> list[int]:
    """Orders ``alloc_anon_folio`` will try for a write fault, highest first (ending in 0).

    The first candidate is the highest order whose aligned block is entirely
    ``pte_none`` (a zero-page or swap PTE disqualifies it); lower candidates
    follow, since their blocks lie inside it.
    """
    cands = fault_orders(sys, mm, vma, vpn)
    kinds = mm.pt.kind[row]
    i = vpn & (mm.pt.nr - 1)
    for pos, order in enumerate(cands):
        s = i & ~((1 << order) - 1)
        if not kinds[s : s + (1 << order)].any():  # PTE_NONE == 0
            return [*cands[pos:], 0]
    return [0]


def do_anonymous_page(sys: System, mm: MM, vma: VMA, row: int, vpn: int) -> None:
    """Write fault on a none PTE: allocate the largest possible folio and map it."""
    anon_vma_prepare(vma)
    pt = mm.pt
    for order in alloc_anon_folio_order(sys, mm, vma, row, vpn):
        head, status = sys.alloc_folio(order, vpn & ~((1 << order) - 1))
        if status:
            if order == 0:
                raise OOMError("order-0 allocation failed in do_anonymous_page")
            if status == sys.CHARGE_FAIL:
                sys.counters.count_mthp_stat(order, "anon_fault_fallback_charge")
            sys.counters.count_mthp_stat(order, "anon_fault_fallback")
            continue
        n = 1 << order
        s = (vpn & (pt.nr - 1)) & ~(n - 1)
        pt.kind[row, s : s + n] = PTE_PRESENT
        pt.pfn[row, s : s + n] = np.arange(head, head + n, dtype=np.int32)
        pt.flags[row, s : s + n] = NEW_PTE_FLAGS
        rmap.folio_add_new_ptes(sys, head, n)
        mm.rss_anon += n
        if order:
            sys.counters.count_mthp_stat(order, "anon_fault_alloc")
        return


def wp_page_copy(sys: System, mm: MM, vma: VMA, row: int, i: int) -> None:
    """COW: replace the zero page or a shared page by a private order-0 copy."""
    anon_vma_prepare(vma)
    pt = mm.pt
    vpn_base = 0  # order-0 folios need no index
    head, status = sys.alloc_folio(0, vpn_base)
    if status:
        raise OOMError("order-0 allocation failed in wp_page_copy")
    if pt.kind[row, i] == PTE_PRESENT:
        old = int(pt.pfn[row, i])
        sys.folios.content[head] = sys.folios.content[old]
        pt.kind[row, i] = PTE_PRESENT
        pt.pfn[row, i] = head
        pt.flags[row, i] = NEW_PTE_FLAGS
        rmap.folio_add_new_ptes(sys, head, 1)
        rmap.folio_remove_ptes(sys, np.array([old]))
    else:  # zero page
        pt.kind[row, i] = PTE_PRESENT
        pt.pfn[row, i] = head
        pt.flags[row, i] = NEW_PTE_FLAGS
        rmap.folio_add_new_ptes(sys, head, 1)
        mm.rss_anon += 1


def folio_exclusive(sys: System, mm: MM, head: int) -> bool:
    """Can a write reuse the folio (``wp_can_reuse_anon_folio``)?"""
    f = sys.folios
    if f.refcount[head] != f.folio_mapcount(head):
        return False  # swap cache or transient pins hold it
    return not rmap.folio_maybe_mapped_shared(sys, mm, head)


def do_wp_page(sys: System, mm: MM, vma: VMA, row: int, i: int) -> None:
    """Write to a write-protected present PTE: reuse if exclusive, else copy."""
    pt = mm.pt
    head = int(sys.folios.heads_of(np.array([pt.pfn[row, i]]))[0])
    if folio_exclusive(sys, mm, head):
        pt.flags[row, i] |= F_WRITE | F_DIRTY | F_YOUNG
    else:
        wp_page_copy(sys, mm, vma, row, i)


def do_swap_page(sys: System, mm: MM, vma: VMA, row: int, i: int, write: bool) -> None:
    """Fault on a swap entry: bring the page back as an order-0 folio."""
    pt = mm.pt
    slot = int(pt.pfn[row, i])
    head = swapfile.swapin_folio(sys, slot)
    pt.kind[row, i] = PTE_PRESENT
    pt.pfn[row, i] = head
    rmap.folio_add_new_ptes(sys, head, 1)  # order 0: one more mapping of the page
    mm.rss_anon += 1
    mm.rss_swap -= 1
    swapfile.swap_free(sys, np.array([slot]))
    f = sys.folios
    exclusive = f.mapcount[head] == 1 and f.refcount[head] == 1
    # an exclusive page is mapped writable, but only in a VM_WRITE VMA
    pt.flags[row, i] = F_YOUNG | (F_WRITE if exclusive and vma.flags & VM_WRITE else 0)
    if write:
        if exclusive:
            pt.flags[row, i] |= F_DIRTY
        else:
            wp_page_copy(sys, mm, vma, row, i)


# --- batched touches ----------------------------------------------------------------
def touch_pages(sys: System, mm: MM, vpns: np.ndarray, write: bool, populate: bool = False) -> int:
    """Touch many pages; each written page gets a fresh content token.

    Parameters
    ----------
    vpns : array of int
        Virtual page numbers (any order; duplicates are ignored).
    write : bool
        Write (``True``) or read access.
    populate : bool
        Fault like ``MADV_POPULATE_WRITE``: map pages but do not change content.

    Returns
    -------
    int
        Number of pages touched.
    """
    vpns = np.asarray(vpns, dtype=np.int64)
    if vpns.size == 1:
        vma = mm.vmas.find(int(vpns[0]))
        if vma is not None:
            _touch_pmd(sys, mm, vma, vpns, write, populate)
            return 1
    vpns = np.unique(vpns)
    if vpns.size == 0:
        return 0
    shift = sys.geometry.pmd_order
    pmds = vpns >> shift
    cuts = np.flatnonzero(np.diff(pmds)) + 1
    for chunk in np.split(vpns, cuts):
        lo, hi = int(chunk[0]), int(chunk[-1])
        vma = mm.vmas.find(lo)
        if vma is not None and vma.contains(hi):
            _touch_pmd(sys, mm, vma, chunk, write, populate)
            continue
        for v in mm.vmas.overlapping(lo, hi + 1):
            sub = chunk[(chunk >= v.start) & (chunk < v.end)]
            if sub.size:
                _touch_pmd(sys, mm, v, sub, write, populate)
        covered = sum(int(((chunk >= v.start) & (chunk < v.end)).sum())
                      for v in mm.vmas.overlapping(lo, hi + 1))
        if covered != chunk.size:
            _vma_for_access(mm, int(next(x for x in chunk if mm.vmas.find(int(x)) is None)), write)
    return int(vpns.size)


def _touch_pmd(sys: System, mm: MM, vma: VMA, chunk: np.ndarray, write: bool,
               populate: bool) -> None:
    _vma_for_access(mm, int(chunk[0]), write)
    pt = mm.pt
    nr = pt.nr
    pmd = int(chunk[0]) >> sys.geometry.pmd_order
    idx = (chunk & (nr - 1)).astype(np.int64)
    f = sys.folios
    for _ in range(4):  # at most: huge -> split -> table; bounded for safety
        huge = pt.huge.get(pmd)
        if huge is not None:
            if write and (huge[0] == HUGE_ZERO_PFN or not huge[1] & F_WRITE):
                handle_mm_fault(sys, mm, int(chunk[0]), True)
                continue
            huge[1] |= F_YOUNG | (F_DIRTY if write else 0)
            if write and not populate:
                f.content[huge[0] + idx] = sys.next_tokens(idx.size)
            return
        if pmd not in pt.tables:
            handle_mm_fault(sys, mm, int(chunk[0]), write)
            continue
        break
    row = pt.tables[pmd]
    kinds = pt.kind[row, idx]
    if write:
        need = (kinds != PTE_PRESENT) | ((pt.flags[row, idx] & F_WRITE) == 0)
    else:
        need = (kinds == PTE_NONE) | (kinds == PTE_SWAP)
    if need.any():
        _resolve_faults(sys, mm, vma, row, pmd, idx[need], kinds[need], write)
    pt.flags[row, idx] |= F_YOUNG | (F_DIRTY if write else 0)
    if write and not populate:
        f.content[pt.pfn[row, idx]] = sys.next_tokens(idx.size)


def _resolve_faults(sys: System, mm: MM, vma: VMA, row: int, pmd: int, idx: np.ndarray,
                    kinds: np.ndarray, write: bool) -> None:
    pt = mm.pt
    base = pmd << sys.geometry.pmd_order
    if not write:
        zero = idx[kinds == PTE_NONE]
        pt.kind[row, zero] = PTE_ZERO
        pt.flags[row, zero] = 0
        for i in idx[kinds == PTE_SWAP].tolist():
            do_swap_page(sys, mm, vma, row, i, False)
        return
    # Order-0 COW of zero pages, and order-0 anonymous faults where no mTHP order
    # can apply, are independent of each other: do them in one vectorised step.
    bulk = kinds == PTE_ZERO
    none = kinds == PTE_NONE
    if none.any():
        # a none PTE none of whose candidate blocks fits the VMA faults order 0; no
        # block of another fault can contain it either (it would be the same block)
        bulk |= none & ~_mthp_suitable(sys, mm, vma, base + idx)
    if bulk.any() and _bulk_order0(sys, mm, vma, row, idx[bulk]):
        idx = idx[~bulk]
    for i in idx.tolist():
        k = pt.kind[row, i]
        if k == PTE_PRESENT and pt.flags[row, i] & F_WRITE:
            continue  # filled by an earlier fault of this batch (mTHP block)
        handle_mm_fault(sys, mm, base + i, True)


def _mthp_suitable(sys: System, mm: MM, vma: VMA, vpns: np.ndarray) -> np.ndarray:
    """Vectorised ``bool(fault_orders(vpn))`` for many addresses of one VMA."""
    ok = np.zeros(vpns.shape, dtype=bool)
    if vma.uffd_armed:
        return ok
    g = sys.geometry
    mask = thp_vma_allowable_orders(sys, mm, vma, TVA_PAGEFAULT,
                                    ((1 << g.pmd_order) - 1) & ~0b11)
    for order in range(2, g.pmd_order):
        if mask & (1 << order):
            start = vpns & ~((1 << order) - 1)
            ok |= (start >= vma.start) & (start + (1 << order) <= vma.end)
    return ok


def _bulk_order0(sys: System, mm: MM, vma: VMA, row: int, idx: np.ndarray) -> bool:
    pt = mm.pt
    pfns = sys.alloc_order0_bulk(idx.size)
    if pfns is None:
        return False
    anon_vma_prepare(vma)
    was_zero = int(np.count_nonzero(pt.kind[row, idx] == PTE_ZERO))
    pt.kind[row, idx] = PTE_PRESENT
    pt.pfn[row, idx] = pfns
    pt.flags[row, idx] = NEW_PTE_FLAGS
    sys.folios.mapcount[pfns] += 1  # fresh order-0 folios: page == folio
    sys.folios.refcount[pfns] += 1
    mm.rss_anon += idx.size
    del was_zero  # zero pages are not counted in RSS, so every new page adds one
    return True


# --- zap ------------------------------------------------------------------------------
def zap_page_range(sys: System, mm: MM, start: int, end: int, reclaim_pt: bool = False) -> None:
    """Unmap ``[start, end)`` (vpn): ``zap_page_range_single`` / ``unmap_vmas``.

    A huge PMD fully inside the range is zapped whole (its deposited table goes
    too); one partly inside is split first.  With ``reclaim_pt`` (PT_RECLAIM,
    MADV_DONTNEED) a PTE table the range covers whole is freed once empty.
    """
    pt = mm.pt
    nr = pt.nr
    shift = sys.geometry.pmd_order
    for pmd in range(start >> shift, ((end - 1) >> shift) + 1):
        ws = pmd << shift
        s, e = max(start, ws), min(end, ws + nr)
        huge = pt.huge.get(pmd)
        if huge is not None:
            if s == ws and e == ws + nr:
                huge_memory.zap_huge_pmd(sys, mm, pmd)
                continue
            huge_memory.split_huge_pmd(sys, mm, pmd)
        row = pt.tables.get(pmd)
        if row is None:
            continue
        sl = slice(s - ws, e - ws)
        kinds = pt.kind[row, sl]
        pfns = pt.pfn[row, sl]
        present = kinds == PTE_PRESENT
        swap = kinds == PTE_SWAP
        if present.any():
            rmap.folio_remove_ptes(sys, pfns[present])
            mm.rss_anon -= int(present.sum())
        if swap.any():
            swapfile.swap_free(sys, pfns[swap].astype(np.int64))
            mm.rss_swap -= int(swap.sum())
        pt.kind[row, sl] = PTE_NONE
        pt.pfn[row, sl] = 0
        pt.flags[row, sl] = 0
        if reclaim_pt and e - s == nr and not pt.kind[row].any():  # a whole table
            pt.free_table(pmd)
