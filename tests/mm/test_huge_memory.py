"""mm/huge_memory.c: thp_vma_allowable_orders (kernel-model.md §1.4, linux-7.2.md
§5.4), split_huge_pmd, split_folio with the zero-page remap, deferred split and the
underused shrinker (linux-7.2.md §6.3, selftests.md split_pmd_zero_pages)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import PMD, set_sizes
from thpsim.mm.folio import PG_LOCKED, PG_MLOCKED
from thpsim.mm.huge_memory import (
    TVA_FORCED_COLLAPSE,
    TVA_KHUGEPAGED,
    TVA_PAGEFAULT,
    TVA_SMAPS,
    split_folio,
    split_huge_pmd,
    thp_vma_allowable_orders,
)
from thpsim.mm.mm import THP_DISABLE_COMPLETELY, THP_DISABLE_EXCEPT_ADVISED
from thpsim.mm.pgtable import F_WRITE, PTE_PRESENT, PTE_ZERO
from thpsim.mm.vma import (
    VM_HUGEPAGE,
    VM_LOCKED,
    VM_NOHUGEPAGE,
    VM_READ,
    VM_SPECIAL,
    VM_STACK_INCOMPLETE_SETUP,
    VM_WRITE,
    VMA,
)
from thpsim.system import System

PG = 4096
RW = VM_READ | VM_WRITE
O4, O9 = 1 << 4, 1 << 9
ALL_TVA = (TVA_SMAPS, TVA_PAGEFAULT, TVA_KHUGEPAGED, TVA_FORCED_COLLAPSE)


def pic(proc, addr, length=PMD):
    return proc.layout(addr, length).pictures()[0]


@pytest.fixture
def plain():
    """An unchecked system (the eligibility tests call the function directly)."""
    return System(memory="64M")


def vma(flags=0, start=0, end=512, anon_vma=1):
    return VMA(start, end, RW | flags, anon_vma=anon_vma)


def allowed(sys, v, tva=TVA_KHUGEPAGED, orders=O4 | O9, mm=None):
    mm = mm if mm is not None else sys.spawn().mm
    return thp_vma_allowable_orders(sys, mm, v, tva, orders)


# --- thp_vma_allowable_orders: rule 1, the sysfs mask ----------------------------------------
@pytest.mark.parametrize(
    ("word", "top", "advised", "ok"),
    [
        ("always", "always", False, True),
        ("always", "madvise", False, True),
        ("always", "never", False, True),
        ("madvise", "never", True, True),
        ("madvise", "always", False, False),
        ("inherit", "always", False, True),
        ("inherit", "madvise", True, True),
        ("inherit", "madvise", False, False),
        ("inherit", "never", True, False),
        ("never", "always", True, False),
    ],
)
@pytest.mark.parametrize("tva", [TVA_PAGEFAULT, TVA_KHUGEPAGED, TVA_SMAPS])
@pytest.mark.parametrize("kb", [64, 2048])
def test_sysfs_mask(plain, word, top, advised, ok, tva, kb):
    order = {64: 4, 2048: 9}[kb]
    other = 2048 if kb == 64 else 64
    set_sizes(plain, {kb: word, other: "never"}, top=top)
    v = vma(VM_HUGEPAGE if advised else 0)
    assert allowed(plain, v, tva) == ((1 << order) if ok else 0)


def test_sysfs_mask_keeps_only_requested_orders(plain):
    set_sizes(plain, {16: "always", 64: "madvise", 2048: "inherit"}, top="always")
    v = vma()
    assert allowed(plain, v, TVA_PAGEFAULT, (1 << 2) | O4 | O9) == (1 << 2) | O9
    assert allowed(plain, vma(VM_HUGEPAGE), TVA_PAGEFAULT, (1 << 2) | O4 | O9) == \
        (1 << 2) | O4 | O9
    assert allowed(plain, v, TVA_PAGEFAULT, 1 << 5) == 0


def test_forced_collapse_ignores_sysfs(plain):
    set_sizes(plain, {64: "never", 2048: "never"}, top="never")
    assert allowed(plain, vma(), TVA_FORCED_COLLAPSE) == O4 | O9
    assert allowed(plain, vma(), TVA_KHUGEPAGED) == 0


# --- rule 2: anon orders only ---------------------------------------------------------------
def test_only_anon_orders_survive(plain):
    req = (1 << 0) | (1 << 1) | (1 << 2) | O9 | (1 << 10)
    assert allowed(plain, vma(), TVA_FORCED_COLLAPSE, req) == (1 << 2) | O9


# --- rule 3: disable checks -------------------------------------------------------------------
@pytest.mark.parametrize("tva", ALL_TVA)
def test_nohugepage_and_hw_disable_forbid_everything(plain, tva):
    set_sizes(plain, {64: "always"})
    assert allowed(plain, vma(VM_NOHUGEPAGE), tva) == 0
    plain.hw_thp_disabled = True
    assert allowed(plain, vma(), tva) == 0


@pytest.mark.parametrize("tva", ALL_TVA)
def test_prctl_completely_forbids_even_advised_and_forced(plain, tva):
    p = plain.spawn()
    assert p.prctl_thp_disable("completely") == 0
    assert p.mm.thp_disable == THP_DISABLE_COMPLETELY
    assert allowed(plain, vma(VM_HUGEPAGE), tva, mm=p.mm) == 0


def test_prctl_except_advised(plain):
    set_sizes(plain, {64: "always"})
    p = plain.spawn()
    assert p.prctl_thp_disable("except-advised") == 0
    assert p.mm.thp_disable == THP_DISABLE_EXCEPT_ADVISED
    for tva in (TVA_PAGEFAULT, TVA_KHUGEPAGED, TVA_SMAPS):
        assert allowed(plain, vma(), tva, mm=p.mm) == 0
        assert allowed(plain, vma(VM_HUGEPAGE), tva, mm=p.mm) == O4 | O9
    assert allowed(plain, vma(), TVA_FORCED_COLLAPSE, mm=p.mm) == O4 | O9
    assert p.prctl_thp_disable("bogus") < 0
    assert p.prctl_thp_disable("none") == 0
    assert allowed(plain, vma(), TVA_KHUGEPAGED, mm=p.mm) == O4 | O9


def test_prctl_through_faults(system, proc):
    set_sizes(system, {64: "always"})
    a = proc.mmap(2 * PMD)
    proc.madvise(a + PMD, PMD, "hugepage")
    proc.prctl_thp_disable("except-advised")
    proc.touch(a, pages=[0])
    proc.touch(a + PMD, pages=[0])
    assert pic(proc, a)[:2] == "0."
    assert pic(proc, a + PMD) == "H" * 512
    proc.prctl_thp_disable("completely")
    b = proc.mmap(PMD)
    proc.madvise(b, PMD, "hugepage")
    proc.touch(b, pages=[0])
    assert pic(proc, b)[:2] == "0."


# --- rule 4: VM_NO_KHUGEPAGED -------------------------------------------------------------------
def test_special_vma_only_for_faults_and_smaps(plain):
    v = vma(VM_SPECIAL)
    assert allowed(plain, v, TVA_PAGEFAULT) == O9
    assert allowed(plain, v, TVA_SMAPS) == O9
    assert allowed(plain, v, TVA_KHUGEPAGED) == 0
    assert allowed(plain, v, TVA_FORCED_COLLAPSE) == 0


# --- rule 5: size filter (not for faults) -------------------------------------------------------
def test_size_filter_72k_vma(plain):
    """A PMD-aligned 72K VMA: no 2M block fits, a 64K block ending at vm_end does."""
    set_sizes(plain, {64: "always"})
    v = vma(start=0, end=18)
    assert allowed(plain, v, TVA_KHUGEPAGED) == O4
    assert allowed(plain, v, TVA_FORCED_COLLAPSE) == O4
    assert allowed(plain, v, TVA_SMAPS) == O4
    assert allowed(plain, v, TVA_PAGEFAULT) == O4 | O9  # faults check per address


def test_size_filter_keeps_all_lower_orders_of_first_fit(plain):
    req = (1 << 5) | (1 << 4) | (1 << 2)
    v = vma(start=8, end=40)
    # order 5: the 32-page block ending at 40 starts at 0 < 8: dropped.
    # order 4: the block [16, 32) is inside: kept, and order 2 with it.
    assert allowed(plain, v, TVA_FORCED_COLLAPSE, req) == (1 << 4) | (1 << 2)
    assert allowed(plain, vma(start=1, end=3), TVA_FORCED_COLLAPSE, 1 << 2) == 0


def test_fault_in_72k_vma_gets_64k_not_pmd(system, proc):
    set_sizes(system, {64: "always"})
    a = proc.mmap(72 << 10, addr=1 << 30)
    proc.touch(a, pages=[0])
    assert pic(proc, a)[:17] == "4" * 16 + "."
    assert system.counters.vmstat["thp_fault_alloc"] == 0


# --- rules 6 and 7: temporary stack, anon_vma --------------------------------------------------
@pytest.mark.parametrize("tva", ALL_TVA)
def test_temporary_stack_is_never_eligible(plain, tva):
    assert allowed(plain, vma(VM_STACK_INCOMPLETE_SETUP | VM_HUGEPAGE), tva) == 0


def test_anon_vma_needed_for_khugepaged_and_forced_only(plain):
    v = vma(anon_vma=0)
    assert allowed(plain, v, TVA_KHUGEPAGED) == 0
    assert allowed(plain, v, TVA_FORCED_COLLAPSE) == 0
    assert allowed(plain, v, TVA_PAGEFAULT) == O9
    assert allowed(plain, v, TVA_SMAPS) == O9


def test_read_fault_gives_no_anon_vma_write_does(system, proc):
    system.settings.write("enabled", "never")
    a = proc.mmap(PMD)
    proc.touch(a, pages=[0], write=False)
    (v,) = list(proc.mm.vmas)
    assert v.anon_vma == 0
    assert thp_vma_allowable_orders(system, proc.mm, v, TVA_FORCED_COLLAPSE, O9) == 0
    proc.touch(a, pages=[1])
    assert v.anon_vma != 0
    assert thp_vma_allowable_orders(system, proc.mm, v, TVA_FORCED_COLLAPSE, O9) == O9


# --- split_huge_pmd -------------------------------------------------------------------------------
def test_split_huge_pmd_keeps_folio_and_mapping(system, proc):
    a = proc.mmap(PMD)
    proc.touch(a, PMD)
    data = proc.peek(a, PMD)
    pmd = a >> 21
    head = proc.mm.pt.huge[pmd][0]
    split_huge_pmd(system, proc.mm, pmd)
    system.check()
    assert pic(proc, a) == "9" * 512
    f = system.folios
    assert f.order[head] == 9
    assert (f.mapcount[head:head + 512] == 1).all()
    assert head not in f.entire
    assert f.refcount[head] == 512
    assert proc.rss_anon == 512
    row = proc.mm.pt.row(pmd)
    assert np.array_equal(proc.mm.pt.pfn[row], np.arange(head, head + 512))
    assert (proc.mm.pt.flags[row] & F_WRITE).all()
    assert np.array_equal(proc.peek(a, PMD), data)
    assert system.counters.vmstat["thp_split_pmd"] == 1
    assert system.counters.vmstat["thp_split_page"] == 0
    assert system.counters.mthp_value(9, "nr_anon") == 1


def test_split_huge_zero_pmd_gives_zero_ptes(system, proc):
    a = proc.mmap(PMD)
    proc.touch(a, pages=[0], write=False)
    split_huge_pmd(system, proc.mm, a >> 21)
    system.check()
    assert pic(proc, a) == "z" * 512
    assert proc.rss_anon == 0
    assert system.folios.nr_live == 0


# --- split_folio and the zero-page remap ---------------------------------------------------------
def test_split_pmd_zero_pages_drops_rss(system, proc):
    """selftests.md split_pmd_zero_pages: splitting a zero-filled THP remaps every
    subpage to the shared zero page, so RssAnon drops to 0."""
    a = proc.mmap(PMD)
    proc.touch(a, PMD, populate=True)  # faulted, content still zero
    assert pic(proc, a) == "H" * 512 and proc.rss_anon == 512
    head = proc.mm.pt.huge[a >> 21][0]
    assert split_folio(system, head)
    system.check()
    assert pic(proc, a) == "z" * 512
    assert proc.rss_anon == 0
    assert system.folios.nr_live == 0 and system.memcg.usage == 0
    c = system.counters
    assert c.vmstat["thp_split_page"] == 1
    assert c.mthp_value(9, "split") == 1
    assert c.mthp_value(9, "nr_anon") == 0


def test_split_folio_keeps_written_pages_only(system, proc):
    a = proc.mmap(PMD)
    proc.touch(a, pages=[0, 3, 7])
    data = proc.peek(a, PMD)
    head = proc.mm.pt.huge[a >> 21][0]
    assert split_folio(system, head)
    system.check()
    assert pic(proc, a) == "0zz0zzz0" + "z" * 504
    assert proc.rss_anon == 3
    assert system.folios.nr_live == 3
    assert np.array_equal(proc.peek(a, PMD), data)


def test_split_of_mthp_counts_per_size(system, proc):
    set_sizes(system, {64: "always", 2048: "never"})
    a = proc.mmap(PMD)
    proc.touch(a, 16 * PG)
    head = int(proc.mm.pt.pfn[proc.mm.pt.row(a >> 21), 0])
    assert split_folio(system, head)
    system.check()
    assert pic(proc, a)[:17] == "0" * 16 + "."
    c = system.counters
    assert c.mthp_value(4, "split") == 1 and c.mthp_value(4, "nr_anon") == 0
    assert c.vmstat["thp_split_page"] == 0


def test_split_of_mlocked_folio_keeps_zero_pages_mapped(system, proc):
    a = proc.mmap(PMD)
    proc.touch(a, pages=[0])
    head = proc.mm.pt.huge[a >> 21][0]
    system.folios.set(head, PG_MLOCKED)
    assert split_folio(system, head)
    system.check()
    assert pic(proc, a) == "0" * 512
    assert proc.rss_anon == 512


def test_split_in_vm_locked_vma_keeps_zero_pages_mapped(system, proc):
    a = proc.mmap(PMD)
    proc.touch(a, pages=[0])
    head = proc.mm.pt.huge[a >> 21][0]
    proc.mm.vmas.find(a >> 12).flags |= VM_LOCKED
    assert split_folio(system, head)
    system.check()
    assert pic(proc, a) == "0" * 512


def test_split_of_shared_folio_remaps_in_every_mm(system, proc):
    a = proc.mmap(PMD)
    proc.touch(a, pages=[1])
    child = proc.fork()
    head = proc.mm.pt.huge[a >> 21][0]
    assert split_folio(system, head)
    system.check()
    for p in (proc, child):
        assert pic(p, a) == "z0" + "z" * 510
        assert p.rss_anon == 1
    pfn = proc.mm.pt.pfn[proc.mm.pt.row(a >> 21), 1]
    assert system.folios.mapcount[pfn] == 2


def test_split_fails_on_pinned_folio(system, proc):
    """can_split_folio: an extra reference makes the split fail (split_failed)."""
    a = proc.mmap(PMD)
    proc.touch(a, PMD)
    head = proc.mm.pt.huge[a >> 21][0]
    system.folios.pins[head] = 1
    system.folios.refcount[head] += 1
    assert not split_folio(system, head)
    system.check()
    assert pic(proc, a) == "H" * 512
    c = system.counters
    assert c.mthp_value(9, "split_failed") == 1
    assert c.vmstat["thp_split_page_failed"] == 1
    assert c.vmstat["thp_split_page"] == 0 and c.mthp_value(9, "split") == 0


def test_split_refused_on_locked_folio(system, proc):
    a = proc.mmap(PMD)
    proc.touch(a, PMD)
    head = proc.mm.pt.huge[a >> 21][0]
    system.folios.set(head, PG_LOCKED)
    assert not split_folio(system, head)
    system.check()
    assert pic(proc, a) == "H" * 512
    assert system.counters.vmstat["thp_split_page"] == 0


# --- deferred split of partially mapped folios ---------------------------------------------------
def test_partial_unmap_of_mthp_is_split_by_shrinker(system, proc):
    set_sizes(system, {64: "always", 2048: "never"})
    a = proc.mmap(PMD)
    proc.touch(a, 32 * PG)  # two 64K folios, every page written
    proc.madvise(a, PG, "dontneed")
    c = system.counters
    assert c.mthp_value(4, "split_deferred") == 1
    assert c.mthp_value(4, "nr_anon_partially_mapped") == 1
    assert c.vmstat["thp_deferred_split_page"] == 0
    assert system.shrink_deferred_split() == 1
    system.check()
    assert pic(proc, a)[:33] == "." + "0" * 15 + "4" * 16 + "."
    assert c.mthp_value(4, "nr_anon_partially_mapped") == 0
    assert c.mthp_value(4, "nr_anon") == 1
    assert c.mthp_value(4, "split") == 1
    assert system.deferred == {}
    assert proc.rss_anon == 31


def test_partially_mapped_folio_split_remaps_zero_subpages(system, proc):
    a = proc.mmap(PMD)
    proc.touch(a, pages=[0, 1, 2])
    proc.madvise(a, PG, "dontneed")
    assert proc.rss_anon == 511
    assert system.shrink_deferred_split() == 1
    system.check()
    assert pic(proc, a) == ".00" + "z" * 509
    assert proc.rss_anon == 2
    assert system.folios.nr_live == 2
    c = system.counters
    assert c.vmstat["thp_split_page"] == 1
    assert c.vmstat["thp_underused_split_page"] == 0
    assert c.mthp_value(9, "nr_anon_partially_mapped") == 0


def test_freeing_a_queued_folio_leaves_queue_and_counters(system, proc):
    a = proc.mmap(PMD)
    proc.touch(a, PMD)
    proc.madvise(a, PG, "dontneed")
    assert system.counters.mthp_value(9, "nr_anon_partially_mapped") == 1
    assert len(system.deferred) == 1
    proc.madvise(a, PMD, "dontneed")
    assert system.deferred == {}
    assert system.counters.mthp_value(9, "nr_anon_partially_mapped") == 0
    assert system.counters.mthp_value(9, "split_deferred") == 1  # an event: stays
    assert system.shrink_deferred_split() == 0


def test_shrinker_nr_to_scan(system, proc):
    set_sizes(system, {64: "always", 2048: "never"})
    a = proc.mmap(PMD)
    proc.touch(a, 48 * PG)
    for k in range(3):
        proc.madvise(a + k * 16 * PG, PG, "dontneed")
    assert len(system.deferred) == 3
    assert system.shrink_deferred_split(nr_to_scan=2) == 2
    assert len(system.deferred) == 1
    assert system.shrink_deferred_split() == 1
    assert system.counters.mthp_value(4, "split") == 3


def test_pinned_partially_mapped_folio_stays_queued(system, proc):
    a = proc.mmap(PMD)
    proc.touch(a, PMD)
    proc.madvise(a, PG, "dontneed")
    (head,) = list(system.deferred)
    system.folios.pins[head] = 1
    system.folios.refcount[head] += 1
    assert system.shrink_deferred_split() == 0
    assert list(system.deferred) == [head]
    del system.folios.pins[head]
    system.folios.refcount[head] -= 1
    assert system.shrink_deferred_split() == 1


# --- the underused shrinker ----------------------------------------------------------------------
def test_pmd_fault_queues_folio_only_with_shrink_underused(system, proc):
    a = proc.mmap(2 * PMD)
    proc.touch(a, pages=[0])
    assert len(system.deferred) == 1
    system.settings.write("shrink_underused", "0")
    proc.touch(a + PMD, pages=[0])
    assert len(system.deferred) == 1
    assert system.counters.mthp_value(9, "split_deferred") == 0  # not partially mapped


def test_mthp_faults_are_never_queued_as_underused(system, proc):
    set_sizes(system, {64: "always", 2048: "never"})
    system.settings.write("khugepaged/max_ptes_none", "0")
    a = proc.mmap(PMD)
    proc.touch(a, pages=[0])
    assert system.deferred == {}
    assert system.shrink_deferred_split() == 0
    assert pic(proc, a)[:16] == "4" * 16


def test_underused_never_splits_with_max_ptes_none_511(system, proc):
    a = proc.mmap(PMD)
    proc.touch(a, pages=[0])  # 511 zero-filled subpages
    assert system.settings.max_ptes_none == 511
    assert system.shrink_deferred_split() == 0
    assert pic(proc, a) == "H" * 512
    assert system.deferred == {}  # considered used: dropped from the queue
    assert system.counters.vmstat["thp_underused_split_page"] == 0


@pytest.mark.parametrize(
    ("max_none", "written", "split"),
    [
        (256, 255, True),  # 257 zero pages > 256
        (256, 256, False),  # 256 filled >= 512 - 256
        (0, 511, True),  # one zero page > 0
        (510, 1, True),  # 511 zero pages > 510
        (510, 2, False),  # 2 filled >= 512 - 510
    ],
)
def test_underused_split_threshold(system, proc, max_none, written, split):
    """thp_underused: true once more than max_ptes_none subpages are zero-filled,
    false once 512 - max_ptes_none are filled, walking the pages in order."""
    system.settings.write("khugepaged/max_ptes_none", str(max_none))
    a = proc.mmap(PMD)
    proc.touch(a, pages=range(written))
    got = system.shrink_deferred_split()
    system.check()
    c = system.counters
    if split:
        assert got == 1
        assert pic(proc, a) == "0" * written + "z" * (512 - written)
        assert proc.rss_anon == written
        assert c.vmstat["thp_underused_split_page"] == 1
        assert c.vmstat["thp_split_page"] == 1
    else:
        assert got == 0
        assert pic(proc, a) == "H" * 512
        assert c.vmstat["thp_underused_split_page"] == 0
    assert system.deferred == {}


def test_underused_counts_not_positions(system, proc):
    """Only how many subpages are zero-filled matters, not where they are."""
    system.settings.write("khugepaged/max_ptes_none", "300")
    a = proc.mmap(2 * PMD)
    proc.touch(a, pages=range(0, 424, 2))  # 212 filled = 512 - 300: used
    proc.touch(a + PMD, pages=range(301, 512))  # 211 filled, 301 zero > 300: underused
    assert system.shrink_deferred_split() == 1
    assert pic(proc, a) == "H" * 512
    assert pic(proc, a + PMD) == "z" * 301 + "0" * 211


def test_mlocked_folio_is_skipped_by_underused_shrinker(system, proc):
    system.settings.write("khugepaged/max_ptes_none", "0")
    a = proc.mmap(PMD)
    proc.touch(a, pages=[0])
    head = proc.mm.pt.huge[a >> 21][0]
    system.folios.set(head, PG_MLOCKED)
    assert system.shrink_deferred_split() == 0
    assert pic(proc, a) == "H" * 512
    assert system.counters.vmstat["thp_underused_split_page"] == 0
    # like a folio found used, it is not put back on the queue
    assert system.deferred == {}


def test_underused_split_then_pte_kinds(system, proc):
    system.settings.write("khugepaged/max_ptes_none", "256")
    a = proc.mmap(PMD)
    proc.touch(a, pages=range(0, 512, 4))  # 128 filled, 384 zero
    assert system.shrink_deferred_split() == 1
    row = proc.mm.pt.row(a >> 21)
    kinds = proc.mm.pt.kind[row]
    assert (kinds[::4] == PTE_PRESENT).all()
    assert (np.delete(kinds, np.arange(0, 512, 4)) == PTE_ZERO).all()
    assert proc.rss_anon == 128


@pytest.mark.parametrize("batched", [True, False])
def test_fault_orders_are_chosen_per_address_in_unaligned_vma(system, proc, batched):
    """thp_vma_suitable_orders is per fault address: in a VMA covering pages 8-39 of
    a PMD, only the 64K block 16-31 lies inside, whichever way the pages are touched."""
    set_sizes(system, {64: "always", 2048: "never"})
    base = 1 << 30
    a = proc.mmap(32 * PG, addr=base + 8 * PG)
    if batched:
        proc.touch(a, 32 * PG)
    else:
        for k in range(32):
            proc.touch(a + k * PG, PG)
    assert pic(proc, base)[:48] == "x" * 8 + "0" * 8 + "4" * 16 + "0" * 8 + "x" * 8
    assert system.counters.mthp_value(4, "anon_fault_alloc") == 1


def test_underused_folio_whose_split_fails_is_dropped(system, proc):
    system.settings.write("khugepaged/max_ptes_none", "0")
    a = proc.mmap(PMD)
    proc.touch(a, pages=[0])
    head = proc.mm.pt.huge[a >> 21][0]
    system.folios.pins[head] = 1
    system.folios.refcount[head] += 1
    assert system.shrink_deferred_split() == 0
    assert system.deferred == {}  # not partially mapped: not put back
    assert system.counters.mthp_value(9, "split_failed") == 1
    assert pic(proc, a) == "H" * 512
