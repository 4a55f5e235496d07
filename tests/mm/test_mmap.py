"""mmap / munmap / mprotect (mm/mmap.c, mm/vma.c, mm/mprotect.c): VMA split and
merge, khugepaged registration on merge, free_pgtables."""

from __future__ import annotations

import errno

import pytest

from tests.conftest import PMD, set_sizes
from thpsim.mm.memory import SegvError
from thpsim.mm.vma import VM_READ, VM_WRITE
from thpsim.system import System

PG = 4096
BASE = 1 << 30  # PMD aligned


def pic(proc, addr, length=PMD):
    return proc.layout(addr, length).pictures()[0]


def spans(proc):
    """VMAs as (start, end) byte addresses."""
    return [(v.start * PG, v.end * PG) for v in proc.mm.vmas]


def mthp_only_system() -> System:
    """Top level madvise, 64K always, PMD inherit: faults make 64K folios and never
    register the mm with khugepaged (linux-7.2.md §5.3)."""
    sys = System(memory="256M", check=True)
    set_sizes(sys, {64: "always", 2048: "inherit"}, top="madvise")
    return sys


# --- mmap ---------------------------------------------------------------------------------
def test_mmap_of_a_pmd_multiple_is_pmd_aligned(system, proc):
    proc.mmap(3 * PG)
    a = proc.mmap(2 * PMD)
    assert a % PMD == 0
    proc.touch(a, pages=[0])
    assert pic(proc, a) == "H" * 512


def test_mmap_rounds_length_up_to_pages(system, proc):
    a = proc.mmap(PG + 1, addr=BASE)
    assert spans(proc) == [(BASE, BASE + 2 * PG)]
    assert a == BASE


def test_mmap_rejects_bad_arguments(system, proc):
    with pytest.raises(ValueError):
        proc.mmap(0)
    with pytest.raises(ValueError):
        proc.mmap(PG, addr=BASE + 1)


def test_adjacent_mmaps_merge(system, proc):
    proc.mmap(PMD, addr=BASE)
    proc.mmap(PMD, addr=BASE + PMD)
    assert spans(proc) == [(BASE, BASE + 2 * PMD)]


def test_mmaps_with_different_protection_or_name_do_not_merge(system, proc):
    proc.mmap(PMD, addr=BASE)
    proc.mmap(PMD, addr=BASE + PMD, prot="r")
    proc.mmap(PMD, addr=BASE + 2 * PMD, name="other")
    assert len(proc.mm.vmas) == 3


def test_vmas_with_different_anon_vmas_do_not_merge(system, proc):
    """Two VMAs that were each written (so each has its own anon_vma) stay apart when
    the gap between them is filled; the filler merges with the first only."""
    system.settings.write("enabled", "never")
    proc.mmap(PMD, addr=BASE)
    proc.mmap(PMD, addr=BASE + 2 * PMD)
    proc.touch(BASE, pages=[0])
    proc.touch(BASE + 2 * PMD, pages=[0])
    proc.mmap(PMD, addr=BASE + PMD)
    assert spans(proc) == [(BASE, BASE + 2 * PMD), (BASE + 2 * PMD, BASE + 3 * PMD)]


def test_map_fixed_replaces_existing_mapping(system, proc):
    a = proc.mmap(PMD, addr=BASE)
    proc.touch(a, PMD)
    assert proc.rss_anon == 512
    assert proc.mmap(PMD, addr=BASE) == BASE
    assert proc.rss_anon == 0
    assert pic(proc, a) == "." * 512
    assert not proc.peek(a, PMD).any()
    assert system.memcg.usage == 0
    assert spans(proc) == [(BASE, BASE + PMD)]


# --- munmap -------------------------------------------------------------------------------
def test_munmap_middle_pmd_splits_vma(system, proc):
    a = proc.mmap(3 * PMD, addr=BASE)
    proc.touch(a, 3 * PMD)
    assert proc.munmap(a + PMD, PMD) == 0
    assert spans(proc) == [(BASE, BASE + PMD), (BASE + 2 * PMD, BASE + 3 * PMD)]
    assert proc.rss_anon == 1024
    assert proc.mm.pt.pmd_is_none((a + PMD) >> 21)
    assert system.counters.mthp_value(9, "nr_anon") == 2
    assert system.counters.vmstat["thp_split_pmd"] == 0
    assert system.memcg.usage == 1024
    with pytest.raises(SegvError):
        proc.touch(a + PMD, pages=[0])


def test_munmap_one_page_of_pmd_thp_splits_pmd_and_defers_split(system, proc):
    a = proc.mmap(PMD, addr=BASE)
    proc.touch(a, PMD)
    assert proc.munmap(a + 100 * PG, PG) == 0
    lay = proc.layout(a).pmds[0]
    assert lay.picture == "9" * 100 + "x" + "9" * 411
    assert lay.folios == [[0, 9, 511, 0]]
    assert spans(proc) == [(BASE, BASE + 100 * PG), (BASE + 101 * PG, BASE + PMD)]
    assert proc.rss_anon == 511
    c = system.counters
    assert c.vmstat["thp_split_pmd"] == 1
    assert c.mthp_value(9, "split_deferred") == 1
    assert c.mthp_value(9, "nr_anon_partially_mapped") == 1
    assert c.vmstat["thp_deferred_split_page"] == 1


def test_munmap_frees_page_tables_no_vma_overlaps(system, proc):
    """free_pgtables: a PTE table goes when no VMA is left in its PMD window."""
    system.settings.write("enabled", "never")
    a = proc.mmap(2 * PMD, addr=BASE)
    proc.touch(a, 2 * PMD)
    pmd0 = a >> 21
    assert proc.munmap(a, PMD + PG) == 0
    assert pmd0 not in proc.mm.pt.tables
    assert pmd0 + 1 in proc.mm.pt.tables  # the VMA still covers most of it
    assert pic(proc, a + PMD) == "x" + "0" * 511
    assert proc.rss_anon == 511


def test_munmap_keeps_table_shared_with_another_vma(system, proc):
    system.settings.write("enabled", "never")
    a = proc.mmap(256 * PG, addr=BASE)
    b = proc.mmap(256 * PG, addr=BASE + 256 * PG, prot="r")
    proc.touch(a, 256 * PG)
    proc.touch(b, 256 * PG, write=False)
    assert len(proc.mm.vmas) == 2
    assert proc.munmap(a, 256 * PG) == 0
    assert (a >> 21) in proc.mm.pt.tables
    assert pic(proc, a) == "x" * 256 + "z" * 256
    assert proc.rss_anon == 0


def test_munmap_errors_and_holes(system, proc):
    a = proc.mmap(PMD, addr=BASE)
    assert proc.munmap(a + 1, PG) == -errno.EINVAL
    assert proc.munmap(a, 0) == -errno.EINVAL
    assert proc.munmap(BASE + 8 * PMD, PMD) == 0  # nothing mapped there: fine
    assert spans(proc) == [(BASE, BASE + PMD)]


def test_munmap_everything_frees_all_memory(system, proc):
    a = proc.mmap(4 * PMD, addr=BASE)
    proc.touch(a, PMD)  # a PMD THP
    proc.touch(a + 3 * PMD, pages=[0], write=False)  # the huge zero page
    set_sizes(system, {64: "always", 2048: "never"})
    proc.touch(a + PMD, 64 * PG)  # four 64K folios
    proc.touch(a + 2 * PMD, pages=[0], write=False)  # a small zero page
    assert [p[:65] for p in proc.layout(a, 4 * PMD).pictures()] == [
        "H" * 65, "4" * 64 + ".", "z" + "." * 64, "Z" * 65]
    assert proc.munmap(a, 4 * PMD) == 0
    assert len(proc.mm.vmas) == 0
    assert not proc.mm.pt.tables and not proc.mm.pt.huge
    assert system.folios.nr_live == 0
    assert system.memcg.usage == 0
    assert system.buddy.nr_free_pages() == system.buddy.total_pages


# --- mprotect -------------------------------------------------------------------------------
def test_mprotect_one_page_splits_pmd_but_not_folio(system, proc):
    """real-kernel.md §1: after mprotect of one page the PMD THP is PTE-mapped, still
    order 9 and fully mapped (nothing is queued for deferred split)."""
    a = proc.mmap(PMD, addr=BASE)
    proc.touch(a, PMD)
    assert proc.mprotect(a + 5 * PG, PG, "r") == 0
    assert pic(proc, a) == "9" * 512
    assert proc.layout(a).pmds[0].folios == [[0, 9, 512, 0]]
    assert proc.rss_anon == 512
    c = system.counters
    assert c.vmstat["thp_split_pmd"] == 1
    assert c.mthp_value(9, "split_deferred") == 0
    assert c.vmstat["thp_split_page"] == 0
    assert len(proc.mm.vmas) == 3
    with pytest.raises(SegvError):
        proc.touch(a + 5 * PG, pages=[0])
    before = proc.peek(a + 5 * PG)[0]
    assert proc.read(a + 5 * PG) == before != 0


def test_mprotect_whole_pmd_keeps_it_and_write_reuses(system, proc):
    a = proc.mmap(PMD, addr=BASE)
    proc.touch(a, PMD)
    assert proc.mprotect(a, PMD, "r") == 0
    assert pic(proc, a) == "H" * 512
    with pytest.raises(SegvError):
        proc.touch(a, pages=[0])
    assert proc.mprotect(a, PMD, "rw") == 0
    proc.touch(a, pages=[0])
    assert pic(proc, a) == "H" * 512
    assert system.counters.vmstat["thp_split_pmd"] == 0
    assert system.counters.vmstat["thp_fault_alloc"] == 1


def test_mprotect_read_only_then_back_merges_vmas(system, proc):
    system.settings.write("enabled", "never")
    a = proc.mmap(PMD, addr=BASE)
    proc.touch(a, pages=range(4))
    pfn_before = proc.mm.pt.pfn[proc.mm.pt.row(a >> 21), 2]
    assert proc.mprotect(a + PG, 2 * PG, "r") == 0
    vmas = list(proc.mm.vmas)
    assert [(v.start * PG - BASE, v.end * PG - BASE) for v in vmas] == [
        (0, PG), (PG, 3 * PG), (3 * PG, PMD)]
    assert vmas[1].flags & VM_WRITE == 0 and vmas[1].flags & VM_READ
    assert len({v.anon_vma for v in vmas}) == 1  # split halves share the anon_vma
    assert proc.mprotect(a + PG, 2 * PG, "rw") == 0
    assert spans(proc) == [(BASE, BASE + PMD)]
    proc.touch(a, pages=[2])  # exclusive: the write reuses the page
    assert proc.mm.pt.pfn[proc.mm.pt.row(a >> 21), 2] == pfn_before


def test_mprotect_none_forbids_reads(system, proc):
    a = proc.mmap(PMD, addr=BASE)
    assert proc.mprotect(a, PG, "none") == 0
    with pytest.raises(SegvError):
        proc.touch(a, pages=[0], write=False)
    proc.touch(a + PG, pages=[0], write=False)


def test_mprotect_errors(system, proc):
    a = proc.mmap(PMD, addr=BASE)
    assert proc.mprotect(a + 1, PG, "r") == -errno.EINVAL
    assert proc.mprotect(a, 2 * PMD, "r") == -errno.ENOMEM
    assert proc.mprotect(BASE + 4 * PMD, PG, "r") == -errno.ENOMEM
    with pytest.raises(ValueError):
        proc.mprotect(a, PG, "rx-bogus")


# --- khugepaged registration on merge ---------------------------------------------------------
def test_mmap_merge_with_written_vma_registers_mm():
    """vma_merge_new_range calls khugepaged_enter_vma: the merged VMA has the
    anon_vma of the written neighbour, so the mm gets registered."""
    sys = mthp_only_system()
    p = sys.spawn()
    p.mmap(PMD, addr=BASE)
    p.touch(BASE, pages=[0])
    assert not p.mm.registered
    p.mmap(PMD, addr=BASE + PMD)
    assert len(p.mm.vmas) == 1
    assert p.mm.registered
    assert sys.khugepaged.mm_slots == [p.mm]


def test_mmap_without_merge_does_not_register():
    sys = mthp_only_system()
    p = sys.spawn()
    p.mmap(PMD, addr=BASE)
    p.touch(BASE, pages=[0])
    p.mmap(PMD, addr=BASE + 2 * PMD)  # a gap: no merge
    assert len(p.mm.vmas) == 2
    assert not p.mm.registered


def test_merge_of_unwritten_vmas_does_not_register():
    sys = mthp_only_system()
    p = sys.spawn()
    p.mmap(PMD, addr=BASE)
    p.mmap(PMD, addr=BASE + PMD)
    assert len(p.mm.vmas) == 1
    assert not p.mm.registered  # no anon_vma yet


def test_merge_registers_only_if_khugepaged_has_work():
    sys = System(memory="256M", check=True)
    sys.settings.write("enabled", "never")
    p = sys.spawn()
    p.mmap(PMD, addr=BASE)
    p.touch(BASE, pages=[0])
    p.mmap(PMD, addr=BASE + PMD)
    assert len(p.mm.vmas) == 1
    assert not p.mm.registered


def test_mprotect_merge_registers_mm():
    """vma_merge_existing_range (mprotect back to rw) registers; the split alone
    does not."""
    sys = mthp_only_system()
    p = sys.spawn()
    p.mmap(PMD, addr=BASE)
    p.touch(BASE, pages=[0])
    assert p.mprotect(BASE, PG, "r") == 0
    assert len(p.mm.vmas) == 2
    assert not p.mm.registered
    assert p.mprotect(BASE, PG, "rw") == 0
    assert len(p.mm.vmas) == 1
    assert p.mm.registered
