"""Swap (mm/swapfile.c, mm/swap_state.c, the anon part of mm/vmscan.c) driven by
MADV_PAGEOUT: swap-out of order-0 and large folios with their counters, no swap
device, a full device, lazy-free folios, swap-in as order 0 (real-kernel.md §2) and
the swap cache shared after fork."""

from __future__ import annotations

import numpy as np

from tests.conftest import PMD, set_sizes
from thpsim.mm.folio import PG_LAZYFREE, PG_SWAPCACHE
from thpsim.system import System

PG = 4096


def pic(proc, addr, length=PMD):
    return proc.layout(addr, length).pictures()[0]


def pfn_at(proc, addr):
    pt = proc.mm.pt
    return int(pt.pfn[pt.row(addr >> 21), (addr >> 12) & 511])


def order0(sys):
    sys.settings.write("enabled", "never")
    return sys


# --- swap-out ---------------------------------------------------------------------------------
def test_pageout_order0(system, proc):
    order0(system)
    a = proc.mmap(PMD)
    proc.touch(a, pages=range(8))
    data = proc.peek(a, 8 * PG)
    assert proc.madvise(a, 8 * PG, "pageout") == 0
    assert pic(proc, a)[:9] == "s" * 8 + "."
    assert proc.rss_anon == 0 and proc.rss_swap == 8
    assert system.swap.nr_free == system.swap.nr_slots - 8
    assert np.array_equal(proc.peek(a, 8 * PG), data)
    c = system.counters
    assert c.vmstat["pswpout"] == 8
    assert c.vmstat["thp_swpout"] == 0
    assert system.memcg.usage == 0 and system.folios.nr_live == 0


def test_pageout_64k_folios(system, proc):
    set_sizes(system, {64: "always", 2048: "never"})
    a = proc.mmap(PMD)
    proc.touch(a, 32 * PG)
    assert proc.madvise(a, 32 * PG, "pageout") == 0
    assert pic(proc, a)[:33] == "s" * 32 + "."
    c = system.counters
    assert c.mthp_value(4, "swpout") == 2
    assert c.vmstat["pswpout"] == 32
    assert c.vmstat["thp_swpout"] == 0
    assert c.mthp_value(4, "nr_anon") == 0
    assert c.mthp_value(4, "split") == 0


def test_pageout_pmd_thp(system, proc):
    a = proc.mmap(PMD)
    proc.touch(a, pages=[0, 511])
    data = proc.peek(a, PMD)
    assert proc.madvise(a, PMD, "pageout") == 0
    assert pic(proc, a) == "s" * 512
    assert proc.rss_swap == 512 and proc.rss_anon == 0
    assert np.array_equal(proc.peek(a, PMD), data)
    c = system.counters
    assert c.vmstat["thp_swpout"] == 1
    assert c.mthp_value(9, "swpout") == 1
    assert c.vmstat["pswpout"] == 512
    assert c.vmstat["thp_split_page"] == 0  # swapped whole, not split
    assert c.mthp_value(9, "nr_anon") == 0
    assert system.deferred == {}


def test_pageout_part_of_mthp_splits_it(system, proc):
    set_sizes(system, {64: "always", 2048: "never"})
    a = proc.mmap(PMD)
    proc.touch(a, 16 * PG)
    assert proc.madvise(a, PG, "pageout") == 0
    assert pic(proc, a)[:17] == "s" + "0" * 15 + "."
    assert proc.rss_swap == 1 and proc.rss_anon == 15
    assert system.counters.mthp_value(4, "split") == 1
    assert system.counters.mthp_value(4, "swpout") == 0


def test_pageout_one_page_of_pmd_thp(system, proc):
    """selftests.md collapse_swapin_single_pte: MADV_PAGEOUT of page 0 of a full PMD
    THP splits it and swaps exactly one page (smaps Swap: 4 kB)."""
    a = proc.mmap(PMD)
    proc.touch(a, PMD)
    assert proc.madvise(a, PG, "pageout") == 0
    assert pic(proc, a) == "s" + "0" * 511
    assert proc.rss_swap == 1 and proc.rss_anon == 511
    assert system.counters.vmstat["thp_split_page"] == 1
    assert system.counters.vmstat["pswpout"] == 1


def test_pageout_skips_shared_pages_and_shared_pmd(system, proc):
    a = proc.mmap(2 * PMD)
    proc.touch(a, PMD)
    proc.madvise(a + PMD, PMD, "nohugepage")
    proc.touch(a + PMD, pages=range(4))
    proc.fork()
    assert proc.madvise(a, 2 * PMD, "pageout") == 0
    assert proc.madvise(a, PG, "pageout") == 0
    assert pic(proc, a) == "H" * 512
    assert pic(proc, a + PMD)[:5] == "0000."
    assert system.counters.vmstat["pswpout"] == 0
    assert system.counters.vmstat["thp_split_pmd"] == 0


def test_pageout_skips_pinned_folio(system, proc):
    order0(system)
    a = proc.mmap(PMD)
    proc.touch(a, pages=[0, 1])
    pfn = pfn_at(proc, a)
    system.folios.pins[pfn] = 1
    system.folios.refcount[pfn] += 1
    proc.madvise(a, 2 * PG, "pageout")
    assert pic(proc, a)[:2] == "0s"


def test_pageout_huge_zero_page_is_left_alone(system, proc):
    a = proc.mmap(PMD)
    proc.touch(a, pages=[0], write=False)
    assert proc.madvise(a, PMD, "pageout") == 0
    assert proc.madvise(a, PG, "pageout") == 0
    assert pic(proc, a) == "Z" * 512


def test_no_swap_device_pageout_does_nothing():
    sys = order0(System(memory="256M", check=True))
    assert sys.swap is None
    p = sys.spawn()
    a = p.mmap(PMD)
    p.touch(a, pages=range(8))
    data = p.peek(a, 8 * PG)
    assert p.madvise(a, 8 * PG, "pageout") == 0
    assert pic(p, a)[:9] == "0" * 8 + "."
    assert p.rss_anon == 8 and p.rss_swap == 0
    assert np.array_equal(p.peek(a, 8 * PG), data)
    assert sys.counters.vmstat["pswpout"] == 0


def test_no_swap_device_still_discards_clean_lazyfree():
    sys = order0(System(memory="256M", check=True))
    p = sys.spawn()
    a = p.mmap(PMD)
    p.touch(a, pages=range(8))
    p.madvise(a, 4 * PG, "free")
    p.madvise(a, 8 * PG, "pageout")
    assert pic(p, a)[:9] == "...." + "0000" + "."
    assert p.rss_anon == 4


def test_swap_full():
    sys = order0(System(memory="256M", swap="64K", check=True))  # 16 slots
    p = sys.spawn()
    a = p.mmap(PMD)
    p.touch(a, pages=range(32))
    assert p.madvise(a, 32 * PG, "pageout") == 0
    assert pic(p, a)[:33] == "s" * 16 + "0" * 16 + "."
    assert sys.swap.nr_free == 0
    assert sys.counters.vmstat["pswpout"] == 16
    assert p.madvise(a, 32 * PG, "pageout") == 0
    assert pic(p, a)[:33] == "s" * 16 + "0" * 16 + "."
    p.touch(a, pages=[0], write=False)  # a swap-in frees one slot
    assert sys.swap.nr_free == 1
    p.madvise(a + 16 * PG, 16 * PG, "pageout")
    assert pic(p, a)[:33] == "0" + "s" * 15 + "s" + "0" * 15 + "."


def test_swap_full_with_large_folios():
    """Sixteen slots: the first 64K folio is swapped whole, nothing of the second.
    (What becomes of the second folio is not asserted: the kernel splits a large
    folio it cannot get swap for, the model keeps it whole.)"""
    sys = System(memory="256M", swap="64K", check=True)
    set_sizes(sys, {64: "always", 2048: "never"})
    p = sys.spawn()
    a = p.mmap(PMD)
    p.touch(a, 32 * PG)
    data = p.peek(a, 32 * PG)
    p.madvise(a, 32 * PG, "pageout")
    pic0 = pic(p, a)
    assert pic0[:16] == "s" * 16 and "s" not in pic0[16:]
    assert sys.counters.mthp_value(4, "swpout") == 1
    assert sys.counters.vmstat["pswpout"] == 16
    assert p.rss_anon == 16
    assert np.array_equal(p.peek(a, 32 * PG), data)


# --- lazy-free (MADV_FREE) --------------------------------------------------------------------
def test_lazyfree_clean_folios_are_discarded_not_swapped(system, proc):
    set_sizes(system, {64: "always", 2048: "never"})
    a = proc.mmap(PMD)
    proc.touch(a, 32 * PG)
    assert proc.madvise(a, 16 * PG, "free") == 0
    assert proc.madvise(a, 32 * PG, "pageout") == 0
    assert pic(proc, a)[:33] == "." * 16 + "s" * 16 + "."
    assert proc.rss_anon == 0 and proc.rss_swap == 16
    c = system.counters
    assert c.vmstat["pswpout"] == 16
    assert c.mthp_value(4, "swpout") == 1
    assert system.swap.nr_free == system.swap.nr_slots - 16
    assert not proc.peek(a, 16 * PG).any()  # discarded pages read as zeros again


def test_lazyfree_written_again_is_kept(system, proc):
    """A lazy-free page written after MADV_FREE is dirty: reclaim cannot drop it and
    puts it back as a normal (swap-backed) page; the next reclaim swaps it."""
    order0(system)
    a = proc.mmap(PMD)
    proc.touch(a, pages=range(8))
    proc.madvise(a, 8 * PG, "free")
    tok = proc.write(a + 3 * PG)
    pfn = pfn_at(proc, a + 3 * PG)
    assert proc.madvise(a, 8 * PG, "pageout") == 0
    assert pic(proc, a)[:8] == "...0...."
    assert proc.peek(a + 3 * PG)[0] == tok
    assert pfn_at(proc, a + 3 * PG) == pfn
    assert not system.folios.test(pfn, PG_LAZYFREE)
    assert system.counters.vmstat["pswpout"] == 0
    assert proc.madvise(a, 8 * PG, "pageout") == 0
    assert pic(proc, a)[:8] == "...s...."
    assert proc.peek(a + 3 * PG)[0] == tok
    assert system.counters.vmstat["pswpout"] == 1


def test_lazyfree_large_folio_with_one_written_page_is_kept_whole(system, proc):
    set_sizes(system, {64: "always", 2048: "never"})
    a = proc.mmap(PMD)
    proc.touch(a, 16 * PG)
    proc.madvise(a, 16 * PG, "free")
    proc.touch(a, pages=[9])
    proc.madvise(a, 16 * PG, "pageout")
    assert pic(proc, a)[:17] == "4" * 16 + "."
    assert proc.rss_anon == 16


# --- swap-in and the swap cache -------------------------------------------------------------------
def test_swap_in_of_large_folio_is_order0_page_by_page(system, proc):
    a = proc.mmap(PMD)
    proc.touch(a, pages=[0, 1, 2])
    data = proc.peek(a, PMD)
    proc.madvise(a, PMD, "pageout")
    proc.touch(a, pages=[1], write=False)
    assert pic(proc, a) == "s0" + "s" * 510
    assert system.counters.vmstat["pswpin"] == 1
    proc.touch(a, PMD, write=False)
    assert pic(proc, a) == "0" * 512
    assert np.array_equal(proc.peek(a, PMD), data)
    assert system.counters.vmstat["pswpin"] == 512
    assert (system.swap.count == 0).all()
    assert proc.rss_swap == 0 and proc.rss_anon == 512


def test_swap_in_by_write_maps_exclusive_page_writable(system, proc):
    order0(system)
    a = proc.mmap(PMD)
    proc.touch(a, pages=[0])
    proc.madvise(a, PG, "pageout")
    tok = proc.write(a)
    assert proc.peek(a)[0] == tok
    assert pic(proc, a)[0] == "0"
    assert system.folios.nr_live == 1  # no COW copy was needed


def test_swap_cache_shared_after_fork(system, proc):
    """Both processes swap in the same slot: the second finds the page in the swap
    cache and maps the same page, which then has mapcount 2."""
    order0(system)
    a = proc.mmap(PMD)
    proc.touch(a, pages=range(2))
    data = proc.peek(a, 2 * PG)
    proc.madvise(a, 2 * PG, "pageout")
    slot = pfn_at(proc, a)
    child = proc.fork()
    assert system.swap.count[slot] == 2
    assert proc.read(a) == data[0]
    pfn = pfn_at(proc, a)
    assert system.folios.test(pfn, PG_SWAPCACHE)  # the child's entry still needs it
    assert system.swap.count[slot] == 1
    assert system.folios.refcount[pfn] == 2  # one mapping + the swap cache
    assert child.read(a) == data[0]
    assert pfn_at(child, a) == pfn
    assert system.folios.mapcount[pfn] == 2
    assert system.counters.vmstat["pswpin"] == 1
    assert system.swap.count[slot] == 0  # no swap PTE refers to the slot any more
    assert proc.layout(a).pmds[0].shared[0] == "S"
    child.touch(a, pages=[0])  # COW: order-0 copy for the child
    assert pfn_at(child, a) != pfn
    assert system.folios.mapcount[pfn] == 1


def test_write_to_shared_swap_entry_copies(system, proc):
    order0(system)
    a = proc.mmap(PMD)
    proc.touch(a, pages=[0])
    orig = proc.peek(a)[0]
    proc.madvise(a, PG, "pageout")
    slot = pfn_at(proc, a)
    child = proc.fork()
    tok = proc.write(a)  # the slot is shared: the parent gets a private copy
    cached = system.swap.cache[slot]
    assert pfn_at(proc, a) != cached
    assert system.folios.mapcount[cached] == 0
    assert child.read(a) == orig != tok
    assert pfn_at(child, a) == cached
    assert proc.peek(a)[0] == tok


def test_unmapped_swap_cache_folio_freed_with_last_entry(system, proc):
    """After the parent's COW the swap-cache folio is mapped by nobody; it goes when
    the child's swap entry (the last reference to the slot) goes."""
    order0(system)
    a = proc.mmap(PMD)
    proc.touch(a, pages=[0])
    proc.madvise(a, PG, "pageout")
    child = proc.fork()
    proc.write(a)
    assert len(system.swap.cache) == 1
    assert system.folios.nr_live == 2  # the parent's copy + the swap-cache folio
    child.exit()
    assert system.swap.cache == {}
    assert system.folios.nr_live == 1
    assert system.swap.nr_free == system.swap.nr_slots


def test_pageout_splits_partially_mapped_folio_inside_range(system, proc):
    """A large folio the range covers but that is only partly mapped (shorter PTE
    batch than the folio) is split too, wherever it lies in the range."""
    set_sizes(system, {64: "always", 2048: "never"})
    a = proc.mmap(PMD)
    proc.touch(a, 48 * PG)  # 64K folios at 0-15, 16-31, 32-47
    proc.madvise(a + 20 * PG, PG, "dontneed")
    assert proc.madvise(a, 48 * PG, "pageout") == 0
    assert pic(proc, a)[:49] == "s" * 20 + "." + "s" * 27 + "."
    c = system.counters
    assert c.mthp_value(4, "split") == 1
    assert c.mthp_value(4, "swpout") == 2
    assert c.vmstat["pswpout"] == 47
    assert proc.rss_anon == 0 and proc.rss_swap == 47
