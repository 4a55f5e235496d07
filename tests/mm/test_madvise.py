"""madvise() (mm/madvise.c): DONTNEED + PT_RECLAIM, HUGEPAGE/NOHUGEPAGE, FREE, COLD.

MADV_PAGEOUT is covered with the swap tests in ``test_swapfile.py``.
Expected values come from real-kernel.md §1-2, selftests.md (``alloc_at_fault``)
and linux-7.2.md §5.3-§6.
"""

from __future__ import annotations

import errno

import numpy as np

from tests.conftest import PMD, set_sizes
from thpsim.mm.folio import PG_LAZYFREE
from thpsim.mm.pgtable import F_DIRTY, F_YOUNG
from thpsim.mm.vma import VM_HUGEPAGE, VM_NOHUGEPAGE
from thpsim.system import System

PG = 4096


def pic(proc, addr, length=PMD):
    return proc.layout(addr, length).pictures()[0]


def pmd_of(addr):
    return addr >> 21


def order0_system(**kw) -> System:
    """A checked 4K system where every fault is order 0."""
    sys = System(memory="256M", swap="64M", check=True, **kw)
    sys.settings.write("enabled", "never")
    return sys


# --- MADV_DONTNEED ---------------------------------------------------------------------
def test_alloc_at_fault_then_dontneed_one_page_splits_pmd(system, proc):
    """selftests.md alloc_at_fault: one write gives a PMD THP; DONTNEED of the first
    4K splits the PMD (the folio stays order 9, now PTE-mapped and partially mapped)."""
    a = proc.mmap(PMD)
    proc.touch(a, 1)
    assert pic(proc, a) == "H" * 512
    assert pmd_of(a) in proc.mm.pt.huge
    assert proc.madvise(a, PG, "dontneed") == 0
    assert pmd_of(a) not in proc.mm.pt.huge  # AnonHugePages would be 0
    assert pic(proc, a) == "." + "9" * 511
    assert proc.layout(a).pmds[0].folios == [[1, 9, 511, 0]]
    assert proc.rss_anon == 511
    c = system.counters
    assert c.vmstat["thp_split_pmd"] == 1
    assert c.vmstat["thp_deferred_split_page"] == 1
    assert c.mthp_value(9, "split_deferred") == 1
    assert c.mthp_value(9, "nr_anon_partially_mapped") == 1
    assert c.vmstat["thp_split_page"] == 0  # only the PMD was split, not the folio


def test_dontneed_whole_pmd_thp_frees_it_without_split(system, proc):
    a = proc.mmap(PMD)
    proc.touch(a, PMD)
    assert system.counters.mthp_value(9, "nr_anon") == 1
    assert proc.madvise(a, PMD, "dontneed") == 0
    assert pic(proc, a) == "." * 512
    assert proc.rss_anon == 0
    assert system.counters.vmstat["thp_split_pmd"] == 0
    assert system.counters.mthp_value(9, "nr_anon") == 0
    assert system.memcg.usage == 0
    assert proc.mm.pt.pmd_is_none(pmd_of(a))
    proc.touch(a, pages=[7])  # the PMD is none again: a fresh PMD fault
    assert pic(proc, a) == "H" * 512
    assert system.counters.vmstat["thp_fault_alloc"] == 2


def test_dontneed_whole_table_reclaims_page_table():
    """real-kernel.md §2: with PT_RECLAIM, MADV_DONTNEED over a whole PTE table frees
    it, so the next fault can take the PMD path again."""
    sys = order0_system()
    p = sys.spawn()
    a = p.mmap(2 * PMD)
    p.touch(a, 2 * PMD)
    assert pic(p, a) == "0" * 512
    assert p.madvise(a, PMD, "dontneed") == 0
    assert pmd_of(a) not in p.mm.pt.tables
    assert p.madvise(a + PMD, PMD - PG, "dontneed") == 0  # one entry short of the table
    assert pmd_of(a) + 1 in p.mm.pt.tables
    sys.settings.write("enabled", "always")
    p.touch(a, pages=[0])
    p.touch(a + PMD, pages=[0])
    assert pic(p, a) == "H" * 512
    assert pic(p, a + PMD) == "0" + "." * 510 + "0"


def test_dontneed_only_reclaims_tables_it_covers_whole():
    """PT_RECLAIM applies per PTE table: a table the range only partly covers stays,
    even if the whole range is longer than a PMD and the table ends up empty."""
    sys = order0_system()
    p = sys.spawn()
    a = p.mmap(3 * PMD)
    p.touch(a + 256 * PG, 2 * PMD)  # pages 256..511 of PMD 0, all of PMD 1, 0..255 of PMD 2
    assert p.madvise(a + 256 * PG, 2 * PMD, "dontneed") == 0
    assert p.rss_anon == 0
    pmd0 = pmd_of(a)
    assert pmd0 + 1 not in p.mm.pt.tables  # fully covered: freed
    assert pmd0 in p.mm.pt.tables  # half covered: kept (empty)
    assert pmd0 + 2 in p.mm.pt.tables
    sys.settings.write("enabled", "always")
    p.touch(a, pages=[0])  # a table exists: no PMD fault
    assert pic(p, a)[0] == "0"


def test_dontneed_drops_zero_and_swap_entries(system, proc):
    system.settings.write("enabled", "never")
    a = proc.mmap(PMD)
    proc.touch(a, pages=range(8))
    proc.touch(a, pages=range(8, 16), write=False)
    free_slots = system.swap.nr_free
    assert proc.madvise(a, 4 * PG, "pageout") == 0
    assert pic(proc, a)[:16] == "ssss0000" + "z" * 8
    assert system.swap.nr_free == free_slots - 4
    assert proc.madvise(a, 16 * PG, "dontneed") == 0
    assert pic(proc, a)[:16] == "." * 16
    assert proc.rss_swap == 0 and proc.rss_anon == 0
    assert system.swap.nr_free == free_slots
    assert not proc.peek(a, 16 * PG).any()


def test_dontneed_mthp_partial_queues_deferred_split(system, proc):
    set_sizes(system, {64: "always", 2048: "never"})
    a = proc.mmap(PMD)
    proc.touch(a, 16 * PG)
    assert proc.madvise(a + 4 * PG, PG, "dontneed") == 0
    assert pic(proc, a)[:17] == "4" * 4 + "." + "4" * 11 + "."
    c = system.counters
    assert c.mthp_value(4, "split_deferred") == 1
    assert c.mthp_value(4, "nr_anon_partially_mapped") == 1
    assert c.vmstat["thp_deferred_split_page"] == 0  # not PMD-mappable
    assert len(system.deferred) == 1


def test_dontneed_hole_gives_enomem_after_handling_mapped_parts(system, proc):
    system.settings.write("enabled", "never")
    a = proc.mmap(4 * PG, addr=1 << 30)
    b = proc.mmap(4 * PG, addr=(1 << 30) + 8 * PG)
    proc.touch(a, 4 * PG)
    proc.touch(b, 4 * PG)
    assert proc.madvise(a, 12 * PG, "dontneed") == -errno.ENOMEM
    assert proc.rss_anon == 0


def test_invalid_advice_and_unaligned_address(system, proc):
    a = proc.mmap(PMD)
    assert proc.madvise(a, PG, "bogus") == -errno.EINVAL
    assert proc.madvise(a, PG, 99) == -errno.EINVAL
    assert proc.madvise(a + 1, PG, "dontneed") == -errno.EINVAL
    assert proc.madvise(a, 0, "dontneed") == 0


# --- MADV_HUGEPAGE / MADV_NOHUGEPAGE -------------------------------------------------------
def test_hugepage_nohugepage_split_and_merge_vmas(system, proc):
    a = proc.mmap(3 * PMD)
    assert proc.madvise(a + PMD, PMD, "hugepage") == 0
    vmas = list(proc.mm.vmas)
    assert len(vmas) == 3
    assert [bool(v.flags & VM_HUGEPAGE) for v in vmas] == [False, True, False]
    assert proc.madvise(a + PMD, PMD, "nohugepage") == 0
    mid = proc.mm.vmas.find(pmd_of(a + PMD) << 9)
    assert mid.flags & VM_NOHUGEPAGE and not mid.flags & VM_HUGEPAGE
    assert proc.madvise(a, 3 * PMD, "hugepage") == 0
    (only,) = list(proc.mm.vmas)
    assert (only.start, only.end) == (a >> 12, (a + 3 * PMD) >> 12)
    assert only.flags & VM_HUGEPAGE and not only.flags & VM_NOHUGEPAGE


def test_nohugepage_forbids_pmd_huge_zero_and_mthp(system, proc):
    set_sizes(system, {16: "always", 64: "always"})
    a = proc.mmap(2 * PMD)
    proc.madvise(a, 2 * PMD, "nohugepage")
    proc.touch(a, pages=[0, 100])
    proc.touch(a + PMD, pages=[0], write=False)
    assert pic(proc, a) == "0" + "." * 99 + "0" + "." * 411
    assert pic(proc, a + PMD) == "z" + "." * 511
    assert system.counters.vmstat["thp_fault_alloc"] == 0


def test_hugepage_enables_pmd_under_top_level_madvise(system, proc):
    system.settings.write("enabled", "madvise")
    a = proc.mmap(2 * PMD)
    proc.madvise(a + PMD, PMD, "hugepage")
    proc.touch(a, pages=[0])
    proc.touch(a + PMD, pages=[0])
    assert pic(proc, a)[:2] == "0."
    assert pic(proc, a + PMD) == "H" * 512


def test_hugepage_registers_only_once_the_vma_has_an_anon_vma():
    """linux-7.2.md §5.3: MADV_HUGEPAGE registers the mm, but only if the VMA has an
    anon_vma; an mTHP fault never registers."""
    sys = System(memory="256M", check=True)
    set_sizes(sys, {64: "always", 2048: "inherit"}, top="madvise")
    p = sys.spawn()
    a = p.mmap(PMD)
    p.touch(a, pages=[0])  # 64K fault (PMD inherit needs VM_HUGEPAGE under madvise)
    assert pic(p, a)[:17] == "4" * 16 + "."
    assert not p.mm.registered
    assert p.madvise(a, PMD, "hugepage") == 0
    assert p.mm.registered
    assert sys.khugepaged.mm_slots == [p.mm]

    q = sys.spawn("q")
    b = q.mmap(PMD)
    assert q.madvise(b, PMD, "hugepage") == 0
    assert not q.mm.registered  # untouched: no anon_vma
    q.touch(b, pages=[0], write=False)  # PMD read fault: huge zero page, registers
    assert pic(q, b) == "Z" * 512
    assert q.mm.registered
    assert sys.khugepaged.mm_slots == [p.mm, q.mm]


def test_nohugepage_does_not_register(system, proc):
    a = proc.mmap(PMD)
    proc.madvise(a, PMD, "nohugepage")
    proc.touch(a, pages=[0])
    assert proc.madvise(a, PMD, "nohugepage") == 0
    assert not proc.mm.registered


def test_hugepage_does_not_register_when_every_size_is_never(system, proc):
    set_sizes(system, {2048: "never"}, top="never")
    a = proc.mmap(PMD)
    proc.touch(a, pages=[0])
    assert proc.madvise(a, PMD, "hugepage") == 0
    assert not proc.mm.registered


# --- MADV_FREE -------------------------------------------------------------------------------
def test_free_marks_exclusive_pages_lazy_and_clean():
    sys = order0_system()
    p = sys.spawn()
    a = p.mmap(PMD)
    p.touch(a, pages=range(8))
    assert p.madvise(a, 4 * PG, "free") == 0
    row = p.mm.pt.row(pmd_of(a))
    pfns = p.mm.pt.pfn[row, :8]
    lazy = (sys.folios.flags[pfns] & PG_LAZYFREE) > 0
    assert lazy.tolist() == [True] * 4 + [False] * 4
    assert (p.mm.pt.flags[row, :4] & F_DIRTY == 0).all()
    assert (p.mm.pt.flags[row, 4:8] & F_DIRTY != 0).all()
    # MADV_FREE does not unmap: the pages are still there until reclaim
    assert pic(p, a)[:8] == "0" * 8 and p.rss_anon == 8


def test_free_drops_swap_entries():
    sys = order0_system()
    p = sys.spawn()
    a = p.mmap(PMD)
    p.touch(a, pages=range(4))
    p.madvise(a, 4 * PG, "pageout")
    assert pic(p, a)[:4] == "ssss"
    assert p.madvise(a, 2 * PG, "free") == 0
    assert pic(p, a)[:4] == "..ss"
    assert p.rss_swap == 2
    assert sys.swap.nr_free == sys.swap.nr_slots - 2


def test_free_in_parent_does_not_touch_child_data():
    """MADV_FREE of pages still shared with a child, then MADV_PAGEOUT (which skips
    shared pages): the child keeps its data and its mappings."""
    sys = order0_system()
    p = sys.spawn()
    a = p.mmap(PMD)
    p.touch(a, pages=range(4))
    data = p.peek(a, 4 * PG)
    child = p.fork()
    assert p.madvise(a, 4 * PG, "free") == 0
    assert p.madvise(a, 4 * PG, "pageout") == 0
    assert pic(child, a)[:5] == "0000."
    assert np.array_equal(child.peek(a, 4 * PG), data)
    assert sys.counters.vmstat["pswpout"] == 0


def test_free_whole_pmd_thp_keeps_it_pmd_mapped_then_discards(system, proc):
    a = proc.mmap(PMD)
    proc.touch(a, PMD)
    assert proc.madvise(a, PMD, "free") == 0
    head = proc.mm.pt.huge[pmd_of(a)][0]
    assert pic(proc, a) == "H" * 512
    assert system.folios.test(head, PG_LAZYFREE)
    free_slots = system.swap.nr_free
    assert proc.madvise(a, PMD, "pageout") == 0
    assert pic(proc, a) == "." * 512
    assert proc.rss_anon == 0 and proc.rss_swap == 0
    assert system.swap.nr_free == free_slots
    assert system.counters.vmstat["pswpout"] == 0


def test_free_part_of_exclusive_pmd_thp_splits_it(system, proc):
    a = proc.mmap(PMD)
    proc.touch(a, PMD)  # every page written: no zero-page remap on split
    assert proc.madvise(a, 16 * PG, "free") == 0
    assert pic(proc, a) == "0" * 512
    assert system.counters.vmstat["thp_split_page"] == 1
    proc.madvise(a, PMD, "pageout")
    # the 16 lazy-free pages are discarded, the other 496 are swapped
    assert pic(proc, a) == "." * 16 + "s" * 496


def test_free_part_of_shared_pmd_thp_leaves_it_alone(system, proc):
    """madvise_free_huge_pmd skips a folio mapped by another process (and the huge
    zero page) before looking at the range: the PMD stays mapped."""
    a = proc.mmap(PMD)
    proc.touch(a, PMD)
    proc.fork()
    assert proc.madvise(a, PG, "free") == 0
    assert pic(proc, a) == "H" * 512
    assert system.counters.vmstat["thp_split_pmd"] == 0
    b = proc.mmap(PMD)
    proc.touch(b, pages=[0], write=False)
    assert pic(proc, b) == "Z" * 512
    assert proc.madvise(b, PG, "free") == 0
    assert pic(proc, b) == "Z" * 512


# --- MADV_COLD -------------------------------------------------------------------------------
def test_cold_clears_young_without_unmapping(system, proc):
    a = proc.mmap(2 * PMD)
    proc.touch(a, PMD)
    proc.madvise(a + PMD, PMD, "nohugepage")
    proc.touch(a + PMD, pages=range(8))
    assert proc.mm.pt.huge[pmd_of(a)][1] & F_YOUNG
    assert proc.madvise(a, 2 * PMD, "cold") == 0
    assert not proc.mm.pt.huge[pmd_of(a)][1] & F_YOUNG
    row = proc.mm.pt.row(pmd_of(a) + 1)
    assert (proc.mm.pt.flags[row, :8] & F_YOUNG == 0).all()
    assert pic(proc, a) == "H" * 512
    assert pic(proc, a + PMD)[:9] == "0" * 8 + "."
    assert proc.rss_anon == 520 and proc.rss_swap == 0


def test_repeated_hugepage_registers_once_anon_vma_exists(system, proc):
    """MADV_HUGEPAGE on an untouched VMA cannot register (no anon_vma); after an mTHP
    fault, which never registers, the same advice again does."""
    set_sizes(system, {64: "madvise", 2048: "never"}, top="never")
    a = proc.mmap(PMD)
    assert proc.madvise(a, PMD, "hugepage") == 0
    assert not proc.mm.registered
    proc.touch(a, pages=[0])
    assert pic(proc, a)[:17] == "4" * 16 + "."
    assert not proc.mm.registered
    assert proc.madvise(a, PMD, "hugepage") == 0
    assert proc.mm.registered


def test_free_splits_partially_mapped_folio_inside_range(system, proc):
    set_sizes(system, {64: "always", 2048: "never"})
    a = proc.mmap(PMD)
    proc.touch(a, 48 * PG)
    proc.madvise(a + 20 * PG, PG, "dontneed")
    assert proc.madvise(a, 48 * PG, "free") == 0
    assert pic(proc, a)[:49] == "4" * 16 + "0000.00000000000" + "4" * 16 + "."
    assert system.counters.mthp_value(4, "split") == 1
    assert system.counters.mthp_value(4, "nr_anon_partially_mapped") == 0
    proc.madvise(a, 48 * PG, "pageout")
    assert pic(proc, a)[:49] == "." * 49
    assert proc.rss_anon == 0
