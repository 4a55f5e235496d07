"""The invariant checker catches deliberately corrupted states."""

from __future__ import annotations

import pytest

from tests.conftest import PMD, set_sizes
from thpsim.mm.folio import PG_DEFERRED, PG_SWAPCACHE
from thpsim.mm.pgtable import PTE_PRESENT, PTE_SWAP

PG = 4096


@pytest.fixture
def populated(system, proc):
    """A PMD THP, a 64K folio, order-0 pages and swap entries in one process."""
    a = proc.mmap(2 * PMD)
    proc.touch(a, pages=[0])
    set_sizes(system, {64: "always", 2048: "never"})
    proc.touch(a + PMD, pages=[0])
    proc.madvise(a + PMD + 16 * PG, 16 * PG, "nohugepage")
    proc.touch(a + PMD + 16 * PG, pages=range(8))
    proc.madvise(a + PMD + 20 * PG, 4 * PG, "pageout")
    system.check()
    return a


def pte_row(proc, addr):
    return proc.mm.pt.row(addr >> 21)


def test_clean_state_passes(system, proc, populated):
    proc.fork()
    system.check()


def test_wrong_page_mapcount(system, proc, populated):
    pfn = int(proc.mm.pt.pfn[pte_row(proc, populated + PMD), 16])
    system.folios.mapcount[pfn] += 1
    with pytest.raises(AssertionError, match="mapcount"):
        system.check()


def test_wrong_entire_mapcount(system, proc, populated):
    head = proc.mm.pt.huge[populated >> 21][0]
    system.folios.entire[head] += 1
    with pytest.raises(AssertionError, match="PMD mapcounts"):
        system.check()


@pytest.mark.parametrize("which", ["pmd", "mthp", "order0"])
def test_wrong_refcount(system, proc, populated, which):
    row = pte_row(proc, populated + PMD)
    head = {"pmd": proc.mm.pt.huge[populated >> 21][0],
            "mthp": int(proc.mm.pt.pfn[row, 0]),
            "order0": int(proc.mm.pt.pfn[row, 17])}[which]
    system.folios.refcount[head] -= 1
    with pytest.raises(AssertionError, match="refcount"):
        system.check()


@pytest.mark.parametrize("field", ["rss_anon", "rss_swap"])
def test_wrong_rss(system, proc, populated, field):
    setattr(proc.mm, field, getattr(proc.mm, field) + 1)
    with pytest.raises(AssertionError, match=field):
        system.check()


def test_leaked_folio(system, proc, populated):
    _head, status = system.alloc_folio(0, 0)  # allocated, charged, never mapped
    assert status == system.ALLOC_OK
    with pytest.raises(AssertionError, match="leak"):
        system.check()


def test_swap_count_mismatch(system, proc, populated):
    row = pte_row(proc, populated + PMD)
    assert proc.mm.pt.kind[row, 20] == PTE_SWAP
    slot = int(proc.mm.pt.pfn[row, 20])
    system.swap.count[slot] += 1
    with pytest.raises(AssertionError, match="swap slot"):
        system.check()


def test_swap_cache_flag_without_cache_entry(system, proc, populated):
    pfn = int(proc.mm.pt.pfn[pte_row(proc, populated + PMD), 16])
    system.folios.set(pfn, PG_SWAPCACHE)
    system.folios.refcount[pfn] += 1  # keep the refcount rule satisfied
    with pytest.raises(AssertionError, match="swap cache"):
        system.check()


def test_page_both_free_and_mapped(system, proc, populated):
    """Give a mapped page back to the buddy allocator and take another free page out,
    so that the page totals still add up."""
    pfn = int(proc.mm.pt.pfn[pte_row(proc, populated + PMD), 16])
    other = system.buddy.alloc(0)
    assert other >= 0
    system.buddy.free(pfn, 0)
    with pytest.raises(AssertionError, match="both free and part of a live folio"):
        system.check()


def test_buddy_conservation(system, proc, populated):
    system.buddy.alloc(0)  # a page nobody owns
    with pytest.raises(AssertionError, match="conservation"):
        system.check()


def test_wrong_memcg_usage(system, proc, populated):
    system.memcg.usage += 1
    with pytest.raises(AssertionError, match="memcg"):
        system.check()


def test_entry_outside_vma(system, proc, populated):
    a = populated
    assert proc.munmap(a + PMD + 100 * PG, PG) == 0
    row = pte_row(proc, a + PMD)
    proc.mm.pt.kind[row, 100] = PTE_PRESENT
    proc.mm.pt.pfn[row, 100] = proc.mm.pt.pfn[row, 16]
    with pytest.raises(AssertionError, match="outside any VMA"):
        system.check()


def test_huge_pmd_to_non_folio(system, proc, populated):
    pmd = populated >> 21
    head = proc.mm.pt.huge[pmd][0]
    proc.mm.pt.huge[pmd][0] = head + 1  # a tail page
    with pytest.raises(AssertionError, match="not a live PMD folio"):
        system.check()


def test_pmd_both_table_and_huge(system, proc, populated):
    pmd = populated >> 21
    proc.mm.pt.alloc_table(pmd + 5)
    proc.mm.pt.huge[pmd + 5] = list(proc.mm.pt.huge[pmd])
    with pytest.raises(AssertionError, match="both a table and huge"):
        system.check()


def test_bad_deferred_queue_entry(system, proc, populated):
    pfn = int(proc.mm.pt.pfn[pte_row(proc, populated + PMD), 16])  # order 0
    system.folios.set(pfn, PG_DEFERRED)
    system.deferred[pfn] = None
    with pytest.raises(AssertionError, match="deferred-split queue"):
        system.check()


def test_checked_system_raises_at_next_call(system, proc, populated):
    """With check=True every process call runs the checker."""
    proc.mm.rss_anon -= 1
    with pytest.raises(AssertionError, match="rss_anon"):
        proc.touch(populated, pages=[1], write=False)
