"""The anonymous fault path (mm/memory.c): order choice, zero page, COW, swap-in."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import PMD, set_sizes
from thpsim.mm.memory import SegvError
from thpsim.system import System


def folios_of(proc, addr, length=PMD):
    return proc.layout(addr, length).pmds[0].folios


def test_real_kernel_fault_order_table(system, proc):
    """real-kernel.md §2: 16K..1M always, 2M never, order-0 pages at 5, 40, 130."""
    set_sizes(system, {16: "always", 32: "always", 64: "always", 128: "always",
                       256: "always", 512: "always", 1024: "always", 2048: "never"})
    a = proc.mmap(PMD)
    assert proc.madvise(a, PMD, "nohugepage") == 0
    proc.touch(a, pages=[5, 40, 130])
    assert proc.madvise(a, PMD, "hugepage") == 0
    for page in (0, 100, 300, 140):
        proc.touch(a, pages=[page])
    got = {fl[0]: (fl[1], fl[2]) for fl in folios_of(proc, a)}
    assert got[0] == (2, 4)  # 16K: the 32K block 0-7 contains page 5
    assert got[64] == (6, 64)  # 256K
    assert got[256] == (8, 256)  # 1M
    assert got[136] == (3, 8)  # 32K: the 64K block 128-143 contains page 130
    assert got[5] == (0, 1) and got[40] == (0, 1) and got[130] == (0, 1)


def test_vma_limit_72k(system, proc):
    """real-kernel.md §2: in a 72K VMA page 0 gets 64K, page 16 gets order 0."""
    set_sizes(system, {64: "always", 2048: "never"})
    a = proc.mmap(72 << 10)
    proc.touch(a, pages=[0, 16])
    pic = proc.layout(a, 72 << 10).pmds[0].picture
    assert pic[:16] == "4" * 16 and pic[16] == "0" and pic[17] == "."
    assert pic[18:] == "x" * (512 - 18)


def test_zero_page_blocks_mthp_order(system, proc):
    """A zero-page PTE in a block disqualifies that order (only 64K → order 0)."""
    set_sizes(system, {64: "always", 2048: "never"})
    a = proc.mmap(PMD)
    proc.touch(a, pages=[3], write=False)
    proc.touch(a, pages=[0, 16])
    pic = proc.layout(a).pmds[0].picture
    assert pic[0] == "0" and pic[3] == "z" and pic[1] == "."
    assert pic[16:32] == "4" * 16


def test_pmd_fault_and_huge_zero(system, proc):
    a = proc.mmap(2 * PMD)
    proc.touch(a, pages=[0])  # enabled=always by default: PMD fault
    proc.touch(a + PMD, pages=[7], write=False)  # read: huge zero page
    pics = proc.layout(a, 2 * PMD).pictures()
    assert pics[0] == "H" * 512 and pics[1] == "Z" * 512
    assert proc.rss_anon == 512
    c = system.counters.snapshot()
    assert c["vmstat"]["thp_fault_alloc"] == 1
    assert c["mthp"]["2048kB"]["anon_fault_alloc"] == 1
    proc.touch(a + PMD, pages=[9])  # write to the huge zero PMD: a fresh THP
    assert proc.layout(a + PMD, PMD).pictures()[0] == "H" * 512
    assert proc.rss_anon == 1024


def test_use_zero_page_off_allocates_on_read(system, proc):
    system.settings.write("use_zero_page", "0")
    a = proc.mmap(PMD)
    proc.touch(a, pages=[0], write=False)
    assert proc.layout(a).pictures()[0] == "H" * 512


def test_pmd_fault_needs_empty_pmd(system, proc):
    """With a page table present the PMD order is not used."""
    a = proc.mmap(PMD)
    proc.madvise(a, PMD, "nohugepage")
    proc.touch(a, pages=[0])
    proc.madvise(a, PMD, "hugepage")
    proc.touch(a, pages=[1])
    pic = proc.layout(a).pictures()[0]
    assert pic[:2] == "00" and pic[2] == "."


def test_pmd_alloc_failure_falls_back(system, proc):
    system.buddy.fail_orders.add(9)
    a = proc.mmap(PMD)
    proc.touch(a, pages=[0])
    assert proc.layout(a).pictures()[0][0] == "0"
    c = system.counters.snapshot()
    assert c["vmstat"]["thp_fault_fallback"] == 1
    assert c["mthp"]["2048kB"]["anon_fault_fallback"] == 1


def test_mthp_fallback_counts(system, proc):
    set_sizes(system, {64: "always", 16: "always", 2048: "never"})
    system.buddy.fail_orders.add(4)
    a = proc.mmap(PMD)
    proc.touch(a, pages=[0])
    assert proc.layout(a).pmds[0].folios[0][:2] == [0, 2]
    c = system.counters.snapshot()["mthp"]
    assert c["64kB"]["anon_fault_fallback"] == 1
    assert c["16kB"]["anon_fault_alloc"] == 1


def test_charge_failure_counts_charge_fallback():
    sys = System(memory="256M", memcg_limit="1M", check=True)
    p = sys.spawn()
    a = p.mmap(PMD)
    p.touch(a, pages=[0])
    c = sys.counters.snapshot()
    assert c["vmstat"]["thp_fault_fallback_charge"] == 1
    assert p.layout(a).pictures()[0][0] == "0"


def test_nohugepage_forbids_mthp(system, proc):
    set_sizes(system, {64: "always"})
    a = proc.mmap(PMD)
    proc.madvise(a, PMD, "nohugepage")
    proc.touch(a, length=PMD)
    assert set(proc.layout(a).pictures()[0]) == {"0"}


def test_inherit_follows_top_level(system, proc):
    set_sizes(system, {64: "inherit", 2048: "never"}, top="madvise")
    a = proc.mmap(PMD)
    proc.touch(a, pages=[0])
    assert proc.layout(a).pictures()[0][0] == "0"
    b = proc.mmap(PMD)
    proc.madvise(b, PMD, "hugepage")
    proc.touch(b, pages=[0])
    assert proc.layout(b).pictures()[0][:16] == "4" * 16


def test_cow_after_fork_is_order0(system, proc):
    set_sizes(system, {64: "always", 2048: "never"})
    a = proc.mmap(PMD)
    proc.touch(a, pages=[0])
    before = proc.peek(a, 16 << 10)
    child = proc.fork()
    assert proc.layout(a).pmds[0].shared[:16] == "S" * 16
    child.touch(a, pages=[3])
    lay = child.layout(a).pmds[0]
    assert lay.picture[:16] == "444" + "0" + "4" * 12
    assert lay.shared[:16] == "SSS-" + "S" * 12
    # the parent's data is unchanged; the child's page 3 has new content
    assert np.array_equal(proc.peek(a, 16 << 10), before)
    assert child.peek(a + 3 * 4096)[0] != before[3]


def test_write_to_shared_pmd_thp_splits_and_copies(system, proc):
    a = proc.mmap(PMD)
    proc.touch(a, length=PMD)
    child = proc.fork()
    child.touch(a, pages=[0])
    assert child.layout(a).pictures()[0] == "0" + "9" * 511
    assert proc.layout(a).pictures()[0] == "H" * 512
    assert system.counters.vmstat["thp_split_pmd"] == 1


def test_exclusive_write_after_child_exit_reuses(system, proc):
    system.settings.write("enabled", "never")
    a = proc.mmap(PMD)
    proc.touch(a, pages=[0])
    pfn_before = proc.mm.pt.pfn[proc.mm.pt.row(a >> 21), 0]
    child = proc.fork()
    child.exit()
    proc.touch(a, pages=[0])
    assert proc.mm.pt.pfn[proc.mm.pt.row(a >> 21), 0] == pfn_before


def test_swap_in_is_order0_and_keeps_content(system, proc):
    set_sizes(system, {64: "always", 2048: "never"})
    a = proc.mmap(PMD)
    proc.touch(a, pages=range(16))
    data = proc.peek(a, 64 << 10)
    assert proc.madvise(a, 64 << 10, "pageout") == 0
    assert proc.layout(a).pictures()[0][:16] == "s" * 16
    assert proc.rss_swap == 16
    assert np.array_equal(proc.peek(a, 64 << 10), data)
    proc.touch(a, pages=[5], write=False)
    pic = proc.layout(a).pictures()[0]
    assert pic[5] == "0" and pic[4] == "s"
    assert proc.read(a + 5 * 4096) == data[5]


def test_segv_outside_vma_and_on_readonly(system, proc):
    a = proc.mmap(PMD)
    with pytest.raises(SegvError):
        proc.touch(a + PMD, pages=[0])
    proc.mprotect(a, PMD, "r")
    with pytest.raises(SegvError):
        proc.touch(a, pages=[0])
    proc.touch(a, pages=[0], write=False)


def test_batched_touch_equals_single_touches():
    """The vectorised paths give the same layout as page-by-page faults."""
    results = []
    for batched in (True, False):
        sys = System(memory="256M", check=False)
        set_sizes(sys, {16: "always", 64: "always", 2048: "never"})
        p = sys.spawn()
        a = p.mmap(4 * PMD)
        rng = np.random.default_rng(1)
        pages = np.sort(rng.choice(4 * 512, 700, replace=False))
        p.touch(a, pages=pages[:100], write=False)
        if batched:
            p.touch(a, pages=pages)
        else:
            for pg in pages:
                p.touch(a, pages=[pg])
        sys.check()
        results.append(p.layout(a, 4 * PMD).pictures())
    assert results[0] == results[1]


def test_populate_does_not_change_content(system, proc):
    system.settings.write("enabled", "never")
    a = proc.mmap(PMD)
    proc.touch(a, length=PMD, populate=True)
    assert not proc.peek(a, PMD).any()
    assert proc.rss_anon == 512
