"""mmap, munmap and mprotect of private anonymous memory (twin of mm/mmap.c,
mm/vma.c and mm/mprotect.c).

All addresses here are virtual page numbers; functions return 0 or a
negative errno like the system calls.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

import numpy as np

from thpsim.mm import huge_memory
from thpsim.mm.memory import zap_page_range
from thpsim.mm.pgtable import F_WRITE
from thpsim.mm.vma import VM_READ, VM_WRITE, VMA

if TYPE_CHECKING:
    from thpsim.mm.mm import MM
    from thpsim.system import System

__all__ = ["do_mmap", "do_mprotect", "do_munmap", "split_vma", "vma_modify_flags"]

PROT_NONE, PROT_READ, PROT_WRITE = 0, 1, 2


def prot_to_flags(prot: int) -> int:
    return (VM_READ if prot & PROT_READ else 0) | (VM_WRITE if prot & PROT_WRITE else 0)


def split_vma(sys: System, mm: MM, vma: VMA, at: int) -> tuple[VMA, VMA]:
    """``split_vma`` with ``vma_adjust_trans_huge``: a huge PMD straddling the new
    boundary is split into PTEs first."""
    g = sys.geometry
    if at & (g.hpage_pmd_nr - 1):
        pmd = at >> g.pmd_order
        if pmd in mm.pt.huge:
            huge_memory.split_huge_pmd(sys, mm, pmd)
    return mm.vmas.split(vma, at)


def vma_modify_flags(sys: System, mm: MM, vma: VMA, start: int, end: int, new_flags: int) -> VMA:
    """Give ``[start, end)`` of ``vma`` new flags: split, set, merge (``vma_modify_flags``).

    A merge calls ``khugepaged_enter_vma`` as ``vma_merge_existing_range`` does.
    """
    if new_flags == vma.flags:
        return vma
    if vma.start < start:
        _, vma = split_vma(sys, mm, vma, start)
    if vma.end > end:
        vma, _ = split_vma(sys, mm, vma, end)
    vma.flags = new_flags
    vma, merged = mm.vmas.try_merge(vma)
    if merged:
        sys.khugepaged.enter_vma(mm, vma)
    return vma


def get_unmapped_area(sys: System, mm: MM, nr_pages: int) -> int:
    """Lowest free range above ``mmap_base``; PMD-aligned for lengths that are a
    multiple of the PMD size (``thp_get_unmapped_area`` for anonymous mappings,
    Linux 6.12+)."""
    g = sys.geometry
    align = g.hpage_pmd_nr if nr_pages % g.hpage_pmd_nr == 0 else 1
    addr = mm.mmap_base
    for v in mm.vmas:
        if v.end <= addr:
            continue
        cand = -(-addr // align) * align
        if cand + nr_pages <= v.start:
            return cand
        addr = max(addr, v.end)
    return -(-addr // align) * align


def do_mmap(sys: System, mm: MM, nr_pages: int, prot: int = PROT_READ | PROT_WRITE,
            addr: int | None = None, name: str = "") -> int:
    """Map ``nr_pages`` of private anonymous memory; returns the start vpn.

    With ``addr`` (``MAP_FIXED``) any existing mapping there is unmapped first.
    A new VMA adjacent to a compatible one is merged into it
    (``vma_merge_new_range``), which may register the mm with khugepaged.
    """
    if nr_pages <= 0:
        raise ValueError("mmap length must be positive")
    if addr is None:
        addr = get_unmapped_area(sys, mm, nr_pages)
    else:
        do_munmap(sys, mm, addr, addr + nr_pages)
    vma = VMA(addr, addr + nr_pages, prot_to_flags(prot), name=name)
    mm.vmas.insert(vma)
    vma, merged = mm.vmas.try_merge(vma)
    if merged:
        sys.khugepaged.enter_vma(mm, vma)
    return addr


def do_munmap(sys: System, mm: MM, start: int, end: int) -> int:
    """Unmap ``[start, end)``: split the edge VMAs, zap, remove, free page tables."""
    g = sys.geometry
    vmas = mm.vmas.overlapping(start, end)
    for vma in vmas:
        if vma.start < start:
            _, vma = split_vma(sys, mm, vma, start)
        if vma.end > end:
            vma, _ = split_vma(sys, mm, vma, end)
        zap_page_range(sys, mm, vma.start, vma.end)
        mm.vmas.remove(vma)
    # free_pgtables: a PTE table no remaining VMA overlaps goes away, and so does a
    # PMD table whose whole PUD range no VMA overlaps
    shift = g.pmd_order
    for pmd in range(start >> shift, ((end - 1) >> shift) + 1):
        ws = pmd << shift
        if mm.vmas.overlapping(ws, ws + g.hpage_pmd_nr):
            continue
        if pmd in mm.pt.tables:
            mm.pt.free_table(pmd)
    pud_pages = g.hpage_pmd_nr * g.ptrs_per_pte
    for pud in range(start // pud_pages, (end - 1) // pud_pages + 1):
        if not mm.vmas.overlapping(pud * pud_pages, (pud + 1) * pud_pages):
            mm.pt.puds.discard(pud)
    return 0


def do_mprotect(sys: System, mm: MM, start: int, end: int, prot: int) -> int:
    """``mprotect``: -ENOMEM if the range is not fully mapped."""
    vmas = mm.vmas.overlapping(start, end)
    covered = sum(min(v.end, end) - max(v.start, start) for v in vmas)
    if covered != end - start:
        return -errno.ENOMEM
    new_rw = prot_to_flags(prot)
    g = sys.geometry
    for vma in vmas:
        new_flags = (vma.flags & ~(VM_READ | VM_WRITE)) | new_rw
        if new_flags == vma.flags:
            continue
        s, e = max(vma.start, start), min(vma.end, end)
        vma = vma_modify_flags(sys, mm, vma, s, e, new_flags)
        if not new_rw & VM_WRITE:
            _wrprotect(sys, mm, s, e)
        else:
            # change_pmd_range splits huge PMDs the range only partly covers
            for pmd in (s >> g.pmd_order, (e - 1) >> g.pmd_order):
                ws = pmd << g.pmd_order
                if pmd in mm.pt.huge and (s > ws or e < ws + g.hpage_pmd_nr):
                    huge_memory.split_huge_pmd(sys, mm, pmd)
    return 0


def _wrprotect(sys: System, mm: MM, s: int, e: int) -> None:
    g = sys.geometry
    pt = mm.pt
    for pmd in range(s >> g.pmd_order, ((e - 1) >> g.pmd_order) + 1):
        ws = pmd << g.pmd_order
        lo, hi = max(s, ws), min(e, ws + g.hpage_pmd_nr)
        if pmd in pt.huge:
            if lo == ws and hi == ws + g.hpage_pmd_nr:
                pt.huge[pmd][1] &= ~F_WRITE
                continue
            huge_memory.split_huge_pmd(sys, mm, pmd)
        row = pt.row(pmd)
        if row is not None:
            pt.flags[row, lo - ws : hi - ws] &= np.uint8(0xFF ^ F_WRITE)
