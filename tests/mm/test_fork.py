"""fork() and exit() (kernel/fork.c dup_mm, copy_page_range, exit_mmap): COW,
mapcounts (real-kernel.md §1: kpagecount is 2 after fork, 1 again after COW),
swap-entry sharing, khugepaged registration of the child, uffd not inherited."""

from __future__ import annotations

import numpy as np

from tests.conftest import PMD, set_sizes
from thpsim.mm.mm import THP_DISABLE_COMPLETELY
from thpsim.mm.pgtable import F_UFFD_WP, F_WRITE, F_YOUNG, PTE_PRESENT
from thpsim.mm.vma import VM_UFFD_ANY
from thpsim.system import System

PG = 4096


def pic(proc, addr, length=PMD):
    return proc.layout(addr, length).pictures()[0]


def shared(proc, addr, length=PMD):
    return proc.layout(addr, length).pmds[0].shared


def ptes(proc, addr):
    """(kind, pfn, flags) rows of the PTE table mapping ``addr``'s PMD."""
    pt = proc.mm.pt
    row = pt.row(addr >> 21)
    return pt.kind[row], pt.pfn[row].astype(np.int64), pt.flags[row]


def order0(system):
    system.settings.write("enabled", "never")


# --- order-0 pages --------------------------------------------------------------------------
def test_fork_shares_order0_pages_with_mapcount_2(system, proc):
    order0(system)
    a = proc.mmap(PMD)
    proc.touch(a, pages=range(10))
    _, ppfn, _ = ptes(proc, a)
    child = proc.fork()
    ckind, cpfn, cflags = ptes(child, a)
    assert np.array_equal(cpfn[:10], ppfn[:10])
    assert (system.folios.mapcount[ppfn[:10]] == 2).all()
    assert (system.folios.refcount[ppfn[:10]] == 2).all()
    assert child.rss_anon == 10 and proc.rss_anon == 10
    assert (ckind[:10] == PTE_PRESENT).all()
    _, _, pflags = ptes(proc, a)
    assert (pflags[:10] & F_WRITE == 0).all()  # the parent is write-protected too
    assert (cflags[:10] & (F_WRITE | F_YOUNG) == 0).all()  # the child's PTEs are old
    assert shared(proc, a)[:11] == "S" * 10 + "-"
    assert shared(child, a)[:11] == "S" * 10 + "-"
    assert np.array_equal(child.peek(a, 10 * PG), proc.peek(a, 10 * PG))


def test_child_write_copies_one_page(system, proc):
    order0(system)
    a = proc.mmap(PMD)
    proc.touch(a, pages=range(4))
    data = proc.peek(a, 4 * PG)
    _, ppfn, _ = ptes(proc, a)
    child = proc.fork()
    tok = child.write(a + 2 * PG)
    _, cpfn, _ = ptes(child, a)
    assert cpfn[2] != ppfn[2]
    assert system.folios.mapcount[ppfn[2]] == 1
    assert system.folios.mapcount[cpfn[2]] == 1
    assert shared(child, a)[:4] == "SS-S"
    assert shared(proc, a)[:4] == "SS-S"
    assert np.array_equal(proc.peek(a, 4 * PG), data)
    assert child.peek(a + 2 * PG)[0] == tok != data[2]
    assert child.rss_anon == 4


def test_parent_write_after_fork_also_copies(system, proc):
    order0(system)
    a = proc.mmap(PMD)
    proc.touch(a, pages=[0])
    _, old, _ = ptes(proc, a)
    child = proc.fork()
    proc.touch(a, pages=[0])
    _, new, _ = ptes(proc, a)
    _, cpfn, _ = ptes(child, a)
    assert new[0] != old[0] and cpfn[0] == old[0]
    assert system.folios.mapcount[old[0]] == 1


def test_fork_of_mthp_keeps_folio_shared_until_cow(system, proc):
    set_sizes(system, {64: "always", 2048: "never"})
    a = proc.mmap(PMD)
    proc.touch(a, pages=[0])
    _, ppfn, _ = ptes(proc, a)
    child = proc.fork()
    assert (system.folios.mapcount[ppfn[:16]] == 2).all()
    assert system.folios.folio_mapcount(int(ppfn[0])) == 32
    child.touch(a, pages=[3])
    assert pic(child, a)[:17] == "444" + "0" + "4" * 12 + "."
    mc = system.folios.mapcount[ppfn[:16]]
    assert mc[3] == 1 and (np.delete(mc, 3) == 2).all()
    # still mapped by two mms: every page of the folio is maybe-shared in the parent
    assert shared(proc, a)[:16] == "S" * 16
    # all of the folio is still mapped by someone: not partially mapped
    assert system.counters.mthp_value(4, "split_deferred") == 0


def test_fork_of_pmd_thp_entire_mapcount_2_then_reuse_after_child_exit(system, proc):
    a = proc.mmap(PMD)
    proc.touch(a, PMD)
    head = proc.mm.pt.huge[a >> 21][0]
    child = proc.fork()
    assert pic(child, a) == "H" * 512
    assert system.folios.entire[head] == 2
    assert system.folios.refcount[head] == 2
    assert shared(proc, a) == "S" * 512 == shared(child, a)
    assert child.rss_anon == 512
    assert not child.mm.pt.huge[a >> 21][1] & F_YOUNG
    child.exit()
    assert system.folios.entire[head] == 1
    assert shared(proc, a) == "-" * 512
    proc.touch(a, pages=[0])  # exclusive again: reuse, no split, no copy
    assert pic(proc, a) == "H" * 512
    assert system.counters.vmstat["thp_split_pmd"] == 0
    assert system.counters.vmstat["thp_fault_alloc"] == 1


def test_parent_write_to_shared_pmd_thp_splits_parent_only(system, proc):
    a = proc.mmap(PMD)
    proc.touch(a, PMD)
    child = proc.fork()
    proc.touch(a, pages=[0])
    assert pic(proc, a) == "0" + "9" * 511
    assert pic(child, a) == "H" * 512
    c = system.counters
    assert c.vmstat["thp_split_pmd"] == 1
    # the child still maps all of it through its PMD: not partially mapped
    assert c.mthp_value(9, "nr_anon_partially_mapped") == 0
    child.exit()
    # now page 0 of the folio is mapped by nobody: partially mapped
    assert c.mthp_value(9, "split_deferred") == 1
    assert c.mthp_value(9, "nr_anon_partially_mapped") == 1
    assert c.vmstat["thp_deferred_split_page"] == 1


def test_fork_copies_huge_zero_pmd_without_rss(system, proc):
    a = proc.mmap(PMD)
    proc.touch(a, pages=[0], write=False)
    child = proc.fork()
    assert pic(child, a) == "Z" * 512
    assert child.rss_anon == 0
    child.touch(a, pages=[1])
    assert pic(child, a) == "H" * 512
    assert pic(proc, a) == "Z" * 512


def test_fork_does_not_copy_vma_without_anon_vma(system, proc):
    """vma_needs_copy: a VMA that was only read-faulted has no anon_vma, so its page
    tables are not copied; the child faults the zero pages again lazily."""
    order0(system)
    a = proc.mmap(PMD)
    proc.touch(a, pages=[0, 1], write=False)
    assert pic(proc, a)[:3] == "zz."
    child = proc.fork()
    assert pic(child, a) == "." * 512
    assert child.read(a) == 0
    assert pic(child, a)[:2] == "z."


# --- swap entries -----------------------------------------------------------------------------
def test_fork_shares_swap_entries(system, proc):
    order0(system)
    a = proc.mmap(PMD)
    proc.touch(a, pages=range(8))
    data = proc.peek(a, 8 * PG)
    proc.madvise(a, 8 * PG, "pageout")
    _, slots, _ = ptes(proc, a)
    slots = slots[:8]
    used = system.swap.nr_slots - system.swap.nr_free
    child = proc.fork()
    assert (system.swap.count[slots] == 2).all()
    assert child.rss_swap == 8 and child.rss_anon == 0
    assert pic(child, a)[:9] == "s" * 8 + "."
    assert np.array_equal(child.peek(a, 8 * PG), data)
    child.exit()
    assert (system.swap.count[slots] == 1).all()
    assert system.swap.nr_slots - system.swap.nr_free == used
    proc.exit()
    assert system.swap.nr_free == system.swap.nr_slots


def test_fork_copies_prctl_thp_disable(system, proc):
    assert proc.prctl_thp_disable("completely") == 0
    child = proc.fork()
    assert child.mm.thp_disable == THP_DISABLE_COMPLETELY
    a = child.mmap(PMD)
    child.touch(a, pages=[0])
    assert pic(child, a)[:2] == "0."


# --- khugepaged registration ------------------------------------------------------------------
def test_child_of_registered_parent_is_registered(system, proc):
    a = proc.mmap(PMD)
    proc.touch(a, pages=[0])  # PMD fault registers
    assert proc.mm.registered
    child = proc.fork()
    assert child.mm.registered
    assert system.khugepaged.mm_slots == [proc.mm, child.mm]
    child.exit()
    assert system.khugepaged.mm_slots == [proc.mm]
    assert not child.mm.registered


def test_child_of_unregistered_parent_is_not_registered():
    sys = System(memory="256M", check=True)
    set_sizes(sys, {64: "always", 2048: "inherit"}, top="madvise")
    p = sys.spawn()
    a = p.mmap(PMD)
    p.touch(a, pages=[0])  # a 64K fault: no registration
    child = p.fork()
    assert not p.mm.registered and not child.mm.registered
    assert sys.khugepaged.mm_slots == []


# --- userfaultfd ------------------------------------------------------------------------------
def test_uffd_registration_is_not_inherited(system, proc):
    set_sizes(system, {64: "always", 2048: "never"})
    a = proc.mmap(PMD)
    assert proc.uffd_register(a, PMD, "missing") == 0
    assert proc.uffd_register(a, PMD, "bogus") < 0
    proc.touch(a, pages=[0])
    assert pic(proc, a)[:2] == "0."  # armed: order 0 only
    row = proc.mm.pt.row(a >> 21)
    proc.mm.pt.flags[row, 0] |= F_UFFD_WP  # as if UFFDIO_WRITEPROTECT had marked it
    child = proc.fork()
    (cv,) = list(child.mm.vmas)
    assert cv.flags & VM_UFFD_ANY == 0
    (pv,) = list(proc.mm.vmas)
    assert pv.flags & VM_UFFD_ANY
    assert child.mm.pt.flags[child.mm.pt.row(a >> 21), 0] & F_UFFD_WP == 0
    child.touch(a, pages=[16])
    assert pic(child, a)[16:33] == "4" * 16 + "."


# --- exit -------------------------------------------------------------------------------------
def test_exit_frees_everything(system, proc):
    set_sizes(system, {64: "always"})
    a = proc.mmap(3 * PMD)
    proc.touch(a, PMD)
    proc.madvise(a + PMD, 2 * PMD, "nohugepage")
    proc.madvise(a + PMD, 2 * PMD, "hugepage")
    set_sizes(system, {2048: "never"})
    proc.touch(a + PMD, 64 * PG)
    proc.madvise(a + PMD, 16 * PG, "pageout")
    child = proc.fork()
    proc.exit()
    assert proc.pid not in system.processes
    assert system.memcg.usage > 0  # the child still holds everything
    child.exit()
    assert system.processes == {}
    assert system.folios.nr_live == 0
    assert system.memcg.usage == 0
    assert system.buddy.nr_free_pages() == system.buddy.total_pages
    assert system.swap.nr_free == system.swap.nr_slots
    assert system.deferred == {}
    assert system.khugepaged.mm_slots == []
