"""Regression tests for model bugs found by the stateful tests (test_stateful.py)."""

from __future__ import annotations

from tests.conftest import PMD
from thpsim.mm.pgtable import F_WRITE


def test_swapin_in_readonly_vma_is_not_writable(system, proc):
    """do_swap_page maps an exclusive page writable only in a VM_WRITE VMA."""
    system.settings.write("enabled", "never")
    a = proc.mmap(PMD)
    tok = proc.write(a)
    assert proc.mprotect(a, PMD, "r") == 0
    assert proc.madvise(a, 4096, "pageout") == 0
    assert proc.rss_swap == 1
    assert proc.read(a) == tok
    pt = proc.mm.pt
    assert not pt.flags[pt.row(a >> 21), 0] & F_WRITE
    # made writable again, the write reuses the exclusive page
    assert proc.mprotect(a, PMD, "rw") == 0
    pfn = int(pt.pfn[pt.row(a >> 21), 0])
    assert proc.write(a) != tok
    assert int(pt.pfn[pt.row(a >> 21), 0]) == pfn


def test_read_fault_thp_in_readonly_vma_is_not_writable(system, proc):
    """Without the huge zero page a read fault maps a THP, writable only with VM_WRITE."""
    system.settings.write("use_zero_page", "0")
    a = proc.mmap(PMD, prot="r")
    assert proc.read(a) == 0
    huge = proc.mm.pt.huge[a >> 21]
    assert not huge[1] & F_WRITE
    b = proc.mmap(PMD)
    assert proc.read(b) == 0
    assert proc.mm.pt.huge[b >> 21][1] & F_WRITE
