"""THP eligibility, PMD faults, PMD split, folio split and the deferred-split
shrinker (twin of mm/huge_memory.c and include/linux/huge_mm.h).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from thpsim.mm import rmap
from thpsim.mm.folio import PG_DEFERRED, PG_LOCKED, PG_MLOCKED, PG_PARTIALLY_MAPPED
from thpsim.mm.mm import THP_DISABLE_COMPLETELY, THP_DISABLE_EXCEPT_ADVISED
from thpsim.mm.pgtable import (
    F_DIRTY,
    F_WRITE,
    F_YOUNG,
    HUGE_ZERO_PFN,
    PTE_PRESENT,
    PTE_ZERO,
)
from thpsim.mm.vma import (
    VM_HUGEPAGE,
    VM_LOCKED,
    VM_NOHUGEPAGE,
    VM_SPECIAL,
    VM_STACK_INCOMPLETE_SETUP,
    VM_WRITE,
    VMA,
)

if TYPE_CHECKING:
    from thpsim.mm.mm import MM
    from thpsim.system import System

__all__ = [
    "TVA_FORCED_COLLAPSE",
    "TVA_KHUGEPAGED",
    "TVA_PAGEFAULT",
    "TVA_SMAPS",
    "deferred_split_scan",
    "do_huge_pmd_anonymous_page",
    "do_huge_pmd_wp_page",
    "pmd_fault_allowed",
    "split_folio",
    "split_huge_pmd",
    "thp_underused",
    "thp_vma_allowable_orders",
    "zap_huge_pmd",
]

# enum tva_type
TVA_SMAPS = 0
TVA_PAGEFAULT = 1
TVA_KHUGEPAGED = 2
TVA_FORCED_COLLAPSE = 3


def orders_mask(orders) -> int:
    m = 0
    for o in orders:
        m |= 1 << o
    return m


def thp_vma_allowable_orders(sys: System, mm: MM, vma: VMA, tva_type: int, orders: int) -> int:
    """``thp_vma_allowable_orders``: the subset of ``orders`` (bitmask) allowed.

    Rules in the kernel's order (kernel-model.md §1.4, linux-7.2.md §5.4):
    sysfs mask (not for forced collapse), anon orders only, the disable checks
    (VM_NOHUGEPAGE, prctl), VM_NO_KHUGEPAGED, the size filter (not for faults),
    temporary stacks, and the anon_vma requirement (not for faults/smaps).
    """
    s = sys.settings
    in_pf = tva_type == TVA_PAGEFAULT
    forced = tva_type == TVA_FORCED_COLLAPSE
    flags = vma.flags
    if not forced:
        mask = s.huge_anon_orders_always
        if flags & VM_HUGEPAGE:
            mask |= s.huge_anon_orders_madvise
        top = s.enabled
        if top == "always" or (flags & VM_HUGEPAGE and top == "madvise"):
            mask |= s.huge_anon_orders_inherit
        orders &= mask
        if not orders:
            return 0
    orders &= orders_mask(sys.geometry.anon_orders)
    if not orders:
        return 0
    if sys.hw_thp_disabled or flags & VM_NOHUGEPAGE:
        return 0
    if mm.thp_disable == THP_DISABLE_COMPLETELY:
        return 0
    if mm.thp_disable == THP_DISABLE_EXCEPT_ADVISED and not (flags & VM_HUGEPAGE or forced):
        return 0
    if not in_pf and tva_type != TVA_SMAPS and flags & VM_SPECIAL:
        return 0
    if not in_pf:
        # Keep the highest order whose aligned block ending at vm_end starts
        # inside the VMA, and everything below it.
        for order in range(orders.bit_length() - 1, -1, -1):
            if not orders & (1 << order):
                continue
            start = (vma.end - (1 << order)) & ~((1 << order) - 1)
            if start >= vma.start:
                orders &= (1 << (order + 1)) - 1
                break
            orders &= ~(1 << order)
        if not orders:
            return 0
    if flags & VM_STACK_INCOMPLETE_SETUP:
        return 0
    if not in_pf and tva_type != TVA_SMAPS and not vma.anon_vma:
        return 0
    return orders


def pmd_fault_allowed(sys: System, mm: MM, vma: VMA, pmd: int) -> bool:
    """May a fault in this none PMD take the PMD path (``create_huge_pmd``)?"""
    g = sys.geometry
    if vma.uffd_armed:
        return False  # the model does not emulate a userfaultfd handler
    start = pmd << g.pmd_order
    if start < vma.start or start + g.hpage_pmd_nr > vma.end:
        return False
    return bool(thp_vma_allowable_orders(sys, mm, vma, TVA_PAGEFAULT, 1 << g.pmd_order))


def _alloc_pmd_folio(sys: System, pmd: int) -> int:
    """``vma_alloc_anon_folio_pmd``: allocate and count a fault-time PMD folio."""
    g = sys.geometry
    head, status = sys.alloc_folio(g.pmd_order, pmd << g.pmd_order)
    c = sys.counters
    if status:
        c.count_vm_event("thp_fault_fallback")
        c.count_mthp_stat(g.pmd_order, "anon_fault_fallback")
        if status == sys.CHARGE_FAIL:
            c.count_vm_event("thp_fault_fallback_charge")
            c.count_mthp_stat(g.pmd_order, "anon_fault_fallback_charge")
        return -1
    c.count_vm_event("thp_fault_alloc")
    c.count_mthp_stat(g.pmd_order, "anon_fault_alloc")
    return head


def _map_pmd_folio(sys: System, mm: MM, vma: VMA, pmd: int, head: int) -> None:
    # maybe_pmd_mkwrite: writable only in a VM_WRITE VMA (a read fault without the
    # huge zero page maps a new THP in a read-only VMA too)
    mm.pt.huge[pmd] = [head, F_YOUNG | F_DIRTY | (F_WRITE if vma.flags & VM_WRITE else 0)]
    rmap.folio_add_pmd(sys, head)
    mm.rss_anon += sys.geometry.hpage_pmd_nr
    rmap.deferred_split_folio(sys, head, partially_mapped=False)


def do_huge_pmd_anonymous_page(sys: System, mm: MM, vma: VMA, pmd: int, write: bool) -> bool:
    """PMD-level anonymous fault; returns False to fall back to the PTE level."""
    from thpsim.mm.memory import anon_vma_prepare

    anon_vma_prepare(vma)
    sys.khugepaged.enter_vma(mm, vma)
    if not write and sys.settings.use_zero_page:
        mm.pt.huge[pmd] = [HUGE_ZERO_PFN, 0]
        return True
    head = _alloc_pmd_folio(sys, pmd)
    if head < 0:
        return False
    _map_pmd_folio(sys, mm, vma, pmd, head)
    return True


def do_huge_pmd_wp_page(sys: System, mm: MM, vma: VMA, pmd: int) -> bool:
    """Write to a huge PMD; returns False after splitting it (PTE level continues)."""
    huge = mm.pt.huge[pmd]
    head = huge[0]
    if head == HUGE_ZERO_PFN:
        new = _alloc_pmd_folio(sys, pmd)
        if new >= 0:
            del mm.pt.huge[pmd]
            _map_pmd_folio(sys, mm, vma, pmd, new)
            return True
        split_huge_pmd(sys, mm, pmd)
        return False
    f = sys.folios
    if f.refcount[head] == 1 and f.entire.get(head, 0) == 1:
        huge[1] |= F_WRITE | F_DIRTY | F_YOUNG
        return True
    split_huge_pmd(sys, mm, pmd)
    return False


def zap_huge_pmd(sys: System, mm: MM, pmd: int) -> None:
    """Remove a huge PMD mapping and its deposited table."""
    head, _ = mm.pt.huge.pop(pmd)
    if head != HUGE_ZERO_PFN:
        mm.rss_anon -= sys.geometry.hpage_pmd_nr
        rmap.folio_remove_pmd(sys, head)


def split_huge_pmd(sys: System, mm: MM, pmd: int) -> None:
    """``__split_huge_pmd``: replace a huge PMD by a PTE table mapping the same pages.

    The folio stays order 9 (now PTE-mapped); a huge zero PMD becomes
    ``HPAGE_PMD_NR`` zero-page PTEs.
    """
    pt = mm.pt
    head, flags = pt.huge.pop(pmd)
    row = pt.alloc_table(pmd)
    sys.counters.count_vm_event("thp_split_pmd")
    if head == HUGE_ZERO_PFN:
        pt.kind[row] = PTE_ZERO
        return
    n = pt.nr
    pfns = np.arange(head, head + n, dtype=np.int64)
    pt.kind[row] = PTE_PRESENT
    pt.pfn[row] = pfns
    pt.flags[row] = flags
    f = sys.folios
    f.mapcount[head : head + n] += 1
    f.refcount[head] += n - 1
    f.entire[head] -= 1
    if f.entire[head] == 0:
        del f.entire[head]


def _mms_mapping(sys: System, head: int):
    """(mm, pmd) pairs that may map folio ``head`` (it lives at one vpn)."""
    vpn = sys.folios.vpn.get(head)
    if vpn is None:
        return []
    pmd = vpn >> sys.geometry.pmd_order
    return [(p.mm, pmd) for p in sys.processes.values()]


def split_folio(sys: System, head: int) -> bool:
    """``split_folio``: split a large anon folio into order-0 folios.

    PMD mappings are split first.  Subpages that are zero-filled and still
    mapped are remapped to the shared zero page (``TTU_USE_SHARED_ZEROPAGE``),
    unless mlocked.  Fails (``split_failed``) if the folio is pinned or locked.
    """
    f = sys.folios
    order = int(f.order[head])
    assert order > 0
    c = sys.counters
    if f.pins.get(head, 0) or f.test(head, PG_LOCKED):
        c.count_mthp_stat(order, "split_failed")
        if order == sys.geometry.pmd_order:
            c.count_vm_event("thp_split_page_failed")
        return False
    maps = _mms_mapping(sys, head)
    for mm, pmd in maps:
        huge = mm.pt.huge.get(pmd)
        if huge is not None and huge[0] == head:
            split_huge_pmd(sys, mm, pmd)
    n = 1 << order
    pfns = np.arange(head, head + n, dtype=np.int64)
    flags = f.flags[head] & ~np.uint16(PG_DEFERRED | PG_PARTIALLY_MAPPED)
    if f.test(head, PG_PARTIALLY_MAPPED):
        c.count_mthp_stat(order, "nr_anon_partially_mapped", -1)
    sys.deferred.pop(head, None)
    c.count_mthp_stat(order, "nr_anon", -1)
    c.count_mthp_stat(order, "split")
    if order == sys.geometry.pmd_order:
        c.count_vm_event("thp_split_page")
    f.vpn.pop(head, None)
    f.order[pfns] = 0
    f.flags[pfns] = flags
    f.node[pfns] = f.node[head]
    f.refcount[pfns] = f.mapcount[pfns]
    f.nr_live += n - 1
    mlocked = bool(flags & PG_MLOCKED)
    # remap zero-filled subpages to the zero page, free unmapped ones
    zero_pfns = pfns[f.content[pfns] == 0] if not mlocked else pfns[:0]
    zero_set = set(zero_pfns.tolist())
    for mm, pmd in maps:
        row = mm.pt.row(pmd)
        if row is None:
            continue
        kinds, pf = mm.pt.kind[row], mm.pt.pfn[row]
        mine = (kinds == PTE_PRESENT) & (pf >= head) & (pf < head + n)
        if not mine.any() or not zero_set:
            continue
        vma = mm.vmas.find(pmd << sys.geometry.pmd_order)
        if vma is not None and vma.flags & VM_LOCKED:
            continue
        hit = mine & np.isin(pf, zero_pfns)
        if hit.any():
            gone = pf[hit].astype(np.int64)
            mm.pt.kind[row, hit] = PTE_ZERO
            mm.pt.flags[row, hit] = 0
            mm.pt.pfn[row, hit] = 0
            mm.rss_anon -= int(hit.sum())
            f.mapcount[gone] -= 1
            f.refcount[gone] -= 1
    dead = pfns[f.refcount[pfns] == 0]
    if dead.size:
        sys.free_folios_order0(dead)
    return True


def thp_underused(sys: System, head: int) -> bool:
    """``thp_underused``: more than ``max_ptes_none`` zero-filled subpages."""
    m = sys.settings.max_ptes_none
    nr = sys.geometry.hpage_pmd_nr
    if m == nr - 1:
        return False
    f = sys.folios
    n = f.nr_pages(head)
    content = f.content[head : head + n]
    zero = 0
    filled = 0
    for val in content.tolist():  # the kernel stops at the first decision
        if val == 0:
            zero += 1
            if zero > m:
                return True
        else:
            filled += 1
            if filled >= nr - m:
                return False
    return False


def deferred_split_scan(sys: System, nr_to_scan: int | None = None) -> int:
    """The deferred-split shrinker under memory pressure; returns folios split.

    Partially mapped folios are split; others (queued by ``shrink_underused``)
    are split when :func:`thp_underused`; mlocked ones are skipped.  Only a
    partially mapped folio whose split failed stays queued.
    """
    split = 0
    queue = list(sys.deferred)
    if nr_to_scan is not None:
        queue = queue[:nr_to_scan]
    f = sys.folios
    for head in queue:
        if head not in sys.deferred:
            continue
        if f.test(head, PG_PARTIALLY_MAPPED):
            if split_folio(sys, head):
                split += 1
            continue
        if not f.test(head, PG_MLOCKED) and thp_underused(sys, head) \
                and split_folio(sys, head):
            sys.counters.count_vm_event("thp_underused_split_page")
            split += 1
            continue
        # mlocked, not underused or the split failed: considered used, not requeued
        sys.deferred.pop(head, None)
        f.clear(head, PG_DEFERRED)
    return split

