"""fork() and exit() of an address space (twin of kernel/fork.c ``dup_mm`` with
mm/memory.c ``copy_page_range``, and ``exit_mmap``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from thpsim.mm import rmap
from thpsim.mm.memory import zap_page_range
from thpsim.mm.mm import MM
from thpsim.mm.pgtable import F_UFFD_WP, F_WRITE, F_YOUNG, HUGE_ZERO_PFN, PTE_PRESENT, PTE_SWAP
from thpsim.mm.vma import VM_UFFD_ANY, new_anon_vma_id

if TYPE_CHECKING:
    from thpsim.system import System

__all__ = ["dup_mm", "exit_mmap"]


def dup_mm(sys: System, parent: MM, child: MM) -> None:
    """Copy ``parent``'s VMAs and page tables into the empty ``child``.

    Private anon pages become shared: both sides are write-protected (a later
    write COWs), the child's PTEs are old (``pte_mkold``), swap entries gain a
    reference.  uffd registrations are not inherited (no EVENT_FORK), and the
    child gets its own anon_vma.  A VMA without an anon_vma (only read-faulted)
    gets no page tables (``vma_needs_copy``).  ``khugepaged_fork`` registers
    the child if the parent was registered.
    """
    g = sys.geometry
    ppt, cpt = parent.pt, child.pt
    child.thp_disable = parent.thp_disable
    child.mmap_base = parent.mmap_base
    for vma in parent.vmas:
        cv = vma.copy(flags=vma.flags & ~VM_UFFD_ANY,
                      anon_vma=new_anon_vma_id() if vma.anon_vma else 0)
        child.vmas.insert(cv)
        if not vma.anon_vma:
            continue  # vma_needs_copy: nothing private to copy, faults refill it
        for pmd in range(vma.start >> g.pmd_order, ((vma.end - 1) >> g.pmd_order) + 1):
            ws = pmd << g.pmd_order
            lo, hi = max(vma.start, ws) - ws, min(vma.end, ws + g.hpage_pmd_nr) - ws
            huge = ppt.huge.get(pmd)
            if huge is not None:
                huge[1] &= ~F_WRITE
                cpt.huge[pmd] = [huge[0], huge[1] & ~F_YOUNG]
                if huge[0] != HUGE_ZERO_PFN:
                    rmap.folio_add_pmd(sys, huge[0])
                    child.rss_anon += g.hpage_pmd_nr
                continue
            prow = ppt.row(pmd)
            if prow is None:
                continue
            crow = cpt.row(pmd)
            if crow is None:
                crow = cpt.alloc_table(pmd)
            kinds = ppt.kind[prow, lo:hi]
            cpt.kind[crow, lo:hi] = kinds
            cpt.pfn[crow, lo:hi] = ppt.pfn[prow, lo:hi]
            present = kinds == PTE_PRESENT
            ppt.flags[prow, lo:hi][present] &= np.uint8(0xFF ^ F_WRITE)
            cflags = ppt.flags[prow, lo:hi] & np.uint8(0xFF ^ F_YOUNG)
            cflags &= np.uint8(0xFF ^ F_UFFD_WP)  # the child is not uffd-registered
            cpt.flags[crow, lo:hi] = cflags
            if present.any():
                rmap.folio_add_ptes(sys, ppt.pfn[prow, lo:hi][present].astype(np.int64))
                child.rss_anon += int(present.sum())
            swap = kinds == PTE_SWAP
            if swap.any():
                np.add.at(sys.swap.count, ppt.pfn[prow, lo:hi][swap].astype(np.int64), 1)
                child.rss_swap += int(swap.sum())
    sys.khugepaged.fork(parent, child)


def exit_mmap(sys: System, mm: MM) -> None:
    """``exit_mmap``: unmap everything and free the page tables."""
    mm.exiting = True
    for vma in mm.vmas:
        zap_page_range(sys, mm, vma.start, vma.end)
        mm.vmas.remove(vma)
    for pmd in list(mm.pt.tables):
        mm.pt.free_table(pmd)
    mm.pt.puds.clear()
    sys.khugepaged.exit_mm(mm)
