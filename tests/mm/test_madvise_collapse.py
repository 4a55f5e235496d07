"""MADV_COLLAPSE semantics per policy.

Sources: kernel-model.md §1.4 (eligibility), §1.10 (base MADV_COLLAPSE: whitelist
and errno table), §2.A (v11 quirks 2 and 3, E15); linux-7.2.md §2.1, §5.4, §5.5
(7.2: limits 512, uffd 0, SCAN_NO_PTE_TABLE, errno table, E15/E19b);
real-kernel.md §2 (measured on the 6.18 host = ``legacy``: ignores ``enabled``,
``max_ptes_*`` and mTHP sizes; EINVAL under MADV_NOHUGEPAGE, for a never-written
VMA and for a PMD without a page table; collapses zero pages and 64K folios;
re-collapse returns 0).

Errno table (base and 7.2): SCAN_ALLOC_HUGE_PAGE_FAIL -ENOMEM;
SCAN_CGROUP_CHARGE_FAIL and SCAN_EXCEED_NONE_PTE -EBUSY; SCAN_PAGE_COUNT/LOCK/
LRU/DEL_PAGE_LRU (and FILLED; 7.2 adds two file-only ones) -EAGAIN; anything
else -EINVAL.  Whitelist (record the failure and go on with the next PMD):
SCAN_PMD_NULL (7.2: SCAN_NO_PTE_TABLE), SCAN_PTE_NON_PRESENT, SCAN_PTE_UFFD_WP,
SCAN_LACK_REFERENCED_PAGE, SCAN_PAGE_NULL, SCAN_PAGE_COUNT, SCAN_PAGE_LOCK,
SCAN_PAGE_COMPOUND, SCAN_PAGE_LRU, SCAN_DEL_PAGE_LRU; anything else stops.
"""

from __future__ import annotations

import errno

import numpy as np
import pytest

from thpsim.mm.folio import PG_LOCKED, PG_LRU
from thpsim.mm.pgtable import F_UFFD_WP
from thpsim.system import System

PG = 4096
NR = 512
PMD = NR * PG
BASE = 1 << 30
POLICIES = ("legacy", "v11", "linux-7.2")
EINVAL, ENOMEM, EBUSY, EAGAIN = -errno.EINVAL, -errno.ENOMEM, -errno.EBUSY, -errno.EAGAIN

#: PMD lookup result of a none PMD whose PUD has a PMD table / has none
PMD_NONE = {"legacy": "SCAN_PMD_NONE", "v11": "SCAN_PMD_NONE", "linux-7.2": "SCAN_NO_PTE_TABLE"}
PMD_NULL = {"legacy": "SCAN_PMD_NULL", "v11": "SCAN_PMD_NULL", "linux-7.2": "SCAN_NO_PTE_TABLE"}


@pytest.fixture(params=POLICIES)
def policy(request) -> str:
    return request.param


def machine(policy: str, **kw) -> System:
    """A checked machine whose faults are order 0 (every size ``never``), as in
    real-kernel.md §3.1 ``madv_collapse_allnever``."""
    kw.setdefault("memory", "64M")
    sys = System(swap="16M", policy=policy, check=True, **kw)
    sys.settings.write("enabled", "never")
    return sys


def pictures(proc, a, size):
    return proc.layout(a, size).pictures()


def huge(proc, a, nr=1) -> list[bool]:
    """Per PMD of ``[a, a + nr PMDs)``: PMD-mapped by a real folio?"""
    first = a // PG // NR
    return [(first + k) in proc.mm.pt.huge and proc.mm.pt.huge[first + k][0] >= 0
            for k in range(nr)]


def collapse(proc, a, size) -> int:
    return proc.madvise(a, size, "collapse")


def full(sys, nr=1, addr=BASE):
    """A process with ``nr`` PMDs mapped at ``addr`` and fully written (order 0)."""
    proc = sys.spawn()
    a = proc.mmap(nr * PMD, addr=addr)
    proc.touch(a, nr * PMD)
    return proc, a


def scan_results(sys) -> list[str]:
    return [r for _, r, is_kh in sys.khugepaged.scans if not is_kh]


# --- eligibility -----------------------------------------------------------------------
def test_enabled_never_still_collapses(policy):
    sys = machine(policy)
    for kb in (16, 64, 2048):
        sys.settings.write(f"hugepages-{kb}kB/enabled", "never")
    proc, a = full(sys)
    before = proc.peek(a, PMD)
    assert pictures(proc, a, PMD) == ["0" * NR]
    assert collapse(proc, a, PMD) == 0
    assert huge(proc, a) == [True]
    assert np.array_equal(proc.peek(a, PMD), before)
    assert sys.counters.vmstat["thp_collapse_alloc"] == 1
    # khugepaged's counters are not MADV_COLLAPSE's
    assert sys.settings.pages_collapsed == 0 and sys.settings.full_scans == 0
    assert [a_.khugepaged for a_ in sys.khugepaged.attempts] == [False]


def test_nohugepage_is_einval(policy):
    sys = machine(policy)
    proc, a = full(sys)
    assert proc.madvise(a, PMD, "nohugepage") == 0
    assert collapse(proc, a, PMD) == EINVAL
    assert huge(proc, a) == [False]
    assert sys.khugepaged.scans == [] and sys.khugepaged.attempts == []
    # MADV_HUGEPAGE clears it again
    assert proc.madvise(a, PMD, "hugepage") == 0
    assert collapse(proc, a, PMD) == 0


def test_never_written_vma_is_einval(policy):
    sys = machine(policy)
    proc = sys.spawn()
    a = proc.mmap(PMD, addr=BASE)
    assert collapse(proc, a, PMD) == EINVAL
    assert proc.mm.vmas.find(a // PG).anon_vma == 0
    assert sys.khugepaged.scans == []


def test_read_only_faulted_vma_is_einval(policy):
    """Read faults map the 4K zero page and give the VMA no anon_vma: ineligible."""
    sys = machine(policy)
    proc = sys.spawn()
    a = proc.mmap(PMD, addr=BASE)
    proc.touch(a, PMD, write=False)
    assert pictures(proc, a, PMD) == ["z" * NR]
    assert proc.mm.vmas.find(a // PG).anon_vma == 0
    assert collapse(proc, a, PMD) == EINVAL
    assert proc.rss_anon == 0


def test_huge_zero_pmd_counts_as_pmd_mapped(policy):
    """A read fault on the PMD path (top level ``always``, use_zero_page) maps the huge
    zero page, and that path prepares the anon_vma first (do_huge_pmd_anonymous_page:
    vmf_anon_prepare before the zero-page branch).  The VMA is then eligible and the
    huge zero PMD is "PMD-mapped" (check_pmd_state: pmd_trans_huge; linux-7.2.md §2.1),
    which MADV_COLLAPSE counts as done: 0, nothing changes, AnonHugePages stays 0."""
    sys = machine(policy)
    sys.settings.write("enabled", "always")
    proc = sys.spawn()
    a = proc.mmap(PMD, addr=BASE)
    proc.touch(a, PMD, write=False)
    assert pictures(proc, a, PMD) == ["Z" * NR]
    assert collapse(proc, a, PMD) == 0
    assert scan_results(sys) == ["SCAN_PMD_MAPPED"]
    assert pictures(proc, a, PMD) == ["Z" * NR]
    assert huge(proc, a) == [False] and proc.rss_anon == 0


def test_vma_smaller_than_pmd_is_einval(policy):
    """The size filter of thp_vma_allowable_orders (not for faults) drops order 9 when
    no aligned 2 MiB block fits in the VMA."""
    sys = machine(policy)
    proc = sys.spawn()
    a = proc.mmap(PMD // 2, addr=BASE)
    proc.touch(a, PMD // 2)
    assert collapse(proc, a, PMD // 2) == EINVAL


@pytest.mark.parametrize("mode,want", [("completely", EINVAL), ("except-advised", 0)])
def test_prctl_thp_disable(policy, mode, want):
    """PR_SET_THP_DISABLE: "completely" forbids even forced collapse; "except
    advised" does not apply to MADV_COLLAPSE (the VMA is not VM_HUGEPAGE here)."""
    sys = machine(policy)
    proc, a = full(sys)
    assert proc.prctl_thp_disable(mode) == 0
    assert collapse(proc, a, PMD) == want
    assert huge(proc, a) == [want == 0]


# --- ranges ---------------------------------------------------------------------------
def test_range_smaller_than_pmd_does_nothing(policy):
    """No 2 MiB-aligned block fully inside [start, end) -> 0, nothing scanned."""
    sys = machine(policy)
    proc, a = full(sys, nr=2)
    before = pictures(proc, a, 2 * PMD)
    assert collapse(proc, a, PMD // 2) == 0
    assert collapse(proc, a + PG, PMD) == 0  # unaligned, straddles the boundary
    assert collapse(proc, a + PMD - PG, 2 * PG) == 0
    assert pictures(proc, a, 2 * PMD) == before
    assert sys.khugepaged.scans == [] and sys.khugepaged.attempts == []


def test_only_blocks_fully_inside_the_range(policy):
    sys = machine(policy)
    proc, a = full(sys, nr=3)
    assert collapse(proc, a + PG, 3 * PMD - 2 * PG) == 0  # only the middle PMD
    assert huge(proc, a, 3) == [False, True, False]


def test_range_with_a_hole_is_enomem(policy):
    """A hole gives -ENOMEM at the end; the VMAs on both sides are still collapsed."""
    sys = machine(policy)
    proc = sys.spawn()
    a = proc.mmap(PMD, addr=BASE)
    b = proc.mmap(PMD, addr=BASE + 2 * PMD)
    proc.touch(a, PMD)
    proc.touch(b, PMD)
    assert collapse(proc, a, 3 * PMD) == ENOMEM
    assert huge(proc, a, 3) == [True, False, True]
    # a range that starts in a hole
    c = proc.mmap(PMD, addr=BASE + 4 * PMD)
    proc.touch(c, PMD)
    assert collapse(proc, c - PMD, 2 * PMD) == ENOMEM
    assert huge(proc, c) == [True]


def test_first_failing_vma_stops_the_walk(policy):
    """madvise_walk_vmas stops at the first VMA returning an error."""
    sys = machine(policy)
    proc, a = full(sys, nr=2)
    assert proc.madvise(a, PMD, "nohugepage") == 0  # splits the VMA
    assert len(proc.mm.vmas) == 2
    assert collapse(proc, a, 2 * PMD) == EINVAL
    assert huge(proc, a, 2) == [False, False]


def test_recollapse_of_pmd_mapped_range_is_zero(policy):
    """SCAN_PMD_MAPPED counts as done; the PMD is left alone."""
    sys = machine(policy)
    sys.settings.write("enabled", "always")
    proc, a = full(sys, nr=2)
    assert huge(proc, a, 2) == [True, True]
    heads = [proc.mm.pt.huge[a // PG // NR + k][0] for k in range(2)]
    assert collapse(proc, a, 2 * PMD) == 0
    assert [proc.mm.pt.huge[a // PG // NR + k][0] for k in range(2)] == heads
    assert scan_results(sys) == ["SCAN_PMD_MAPPED"] * 2
    assert sys.khugepaged.attempts == []
    # after a collapse as well
    sys.settings.write("enabled", "never")
    c = proc.mmap(PMD, addr=BASE + 4 * PMD)
    proc.touch(c, PMD)
    assert collapse(proc, c, PMD) == 0
    assert collapse(proc, c, PMD) == 0
    assert huge(proc, c) == [True]


# --- PMD without a page table ------------------------------------------------------------
def test_pmd_none_in_a_populated_pud(policy):
    """A none PMD next to a PTE table: SCAN_PMD_NONE (not whitelisted -> stop) in the
    base and v11, SCAN_NO_PTE_TABLE (whitelisted) in 7.2; -EINVAL either way
    (real-kernel.md §2: EINVAL for a PMD without a page table)."""
    sys = machine(policy)
    proc = sys.spawn()
    a = proc.mmap(2 * PMD, addr=BASE)
    proc.touch(a, PMD)  # the anon_vma and PMD 0's table
    assert collapse(proc, a + PMD, PMD) == EINVAL
    assert scan_results(sys) == [PMD_NONE[policy]]
    assert huge(proc, a, 2) == [False, False]


def test_pmd_null_no_pmd_table_in_the_pud(policy):
    """The VMA straddles the 1 GiB PUD boundary; the PUD of the upper PMD holds no PMD
    table at all: SCAN_PMD_NULL (7.2: SCAN_NO_PTE_TABLE), -EINVAL."""
    sys = machine(policy)
    proc = sys.spawn()
    a = proc.mmap(2 * PMD, addr=BASE - PMD)
    proc.touch(a, PMD)  # lower PMD, other PUD
    assert collapse(proc, BASE, PMD) == EINVAL
    assert scan_results(sys) == [PMD_NULL[policy]]


def test_multi_pmd_with_a_none_pmd_in_the_middle(policy):
    """[full, none, full]: 7.2 goes on past SCAN_NO_PTE_TABLE and collapses the third
    PMD; the base/v11 SCAN_PMD_NONE is not whitelisted and stops the walk."""
    sys = machine(policy)
    proc = sys.spawn()
    a = proc.mmap(3 * PMD, addr=BASE)
    proc.touch(a, PMD)
    proc.touch(a + 2 * PMD, PMD)
    assert collapse(proc, a, 3 * PMD) == EINVAL
    third = policy == "linux-7.2"
    assert huge(proc, a, 3) == [True, False, third]


def test_multi_pmd_with_pmd_null_continues(policy):
    """[none (SCAN_PMD_NULL: no PMD table in its PUD), full]: whitelisted everywhere."""
    sys = machine(policy)
    proc = sys.spawn()
    a = proc.mmap(2 * PMD, addr=BASE - PMD)
    proc.touch(BASE, PMD)
    assert collapse(proc, a, 2 * PMD) == EINVAL
    assert huge(proc, a, 2) == [False, True]
    assert scan_results(sys) == [PMD_NULL[policy], "SCAN_SUCCEED"]


def test_pt_reclaimed_pmd_is_pmd_none():
    """Write a PMD, MADV_DONTNEED all of it (PT_RECLAIM frees the PTE table): the PMD
    is none inside a present PMD table -> SCAN_PMD_NONE, which stops a multi-PMD
    walk in the base kernel.  The VMA straddles the PUD boundary so that no other
    PTE table shares the reclaimed PMD's PUD."""
    sys = machine("legacy")
    proc, a = full(sys, nr=2, addr=BASE - PMD)
    assert proc.madvise(a, PMD, "dontneed") == 0
    assert proc.mm.pt.row(a // PG // NR) is None
    assert collapse(proc, a, 2 * PMD) == EINVAL
    assert scan_results(sys) == ["SCAN_PMD_NONE"]
    assert huge(proc, a, 2) == [False, False]


# --- content: zero pages, mTHP, lazy-free, cold ------------------------------------------
@pytest.mark.parametrize("max_ptes_none", [511, 0])
def test_all_zero_page_pmd(policy, max_ptes_none):
    """E19b: 512 zero-page PTEs (the anon_vma from one write + MADV_DONTNEED): the base
    (real-kernel.md §2) and 7.2 make a zero-filled PMD THP, whatever max_ptes_none.

    v11, quirk 2: the bitmap holds no present page, so the o9 threshold
    (present >= 512 - max_ptes_none >= 1) is never met: SCAN_FAIL, -EINVAL.
    """
    sys = machine(policy)
    sys.settings.write("khugepaged/max_ptes_none", str(max_ptes_none))
    proc = sys.spawn()
    a = proc.mmap(PMD, addr=BASE)
    proc.write(a)
    assert proc.madvise(a, PG, "dontneed") == 0
    proc.touch(a, PMD, write=False)
    assert pictures(proc, a, PMD) == ["z" * NR]
    ret = collapse(proc, a, PMD)
    if policy == "v11":
        assert ret == EINVAL and sys.khugepaged.attempts == []
        assert pictures(proc, a, PMD) == ["z" * NR]
        return
    assert ret == 0
    assert huge(proc, a) == [True]
    assert (proc.peek(a, PMD) == 0).all()
    assert proc.rss_anon == NR


def test_pmd_of_64k_folios_becomes_one_pmd_thp(policy):
    sys = machine(policy)
    sys.settings.write("hugepages-64kB/enabled", "always")
    proc, a = full(sys)
    assert pictures(proc, a, PMD) == ["4" * NR]
    before = proc.peek(a, PMD)
    assert collapse(proc, a, PMD) == 0
    assert huge(proc, a) == [True]
    assert np.array_equal(proc.peek(a, PMD), before)
    assert sys.folios.nr_live == 1  # the 32 order-4 folios are freed
    assert [(x.order, x.result) for x in sys.khugepaged.attempts] == [(9, "SCAN_SUCCEED")]


def test_no_referenced_requirement(policy):
    """MADV_COLD clears every young bit; khugepaged would say
    SCAN_LACK_REFERENCED_PAGE, MADV_COLLAPSE does not look."""
    sys = machine(policy)
    proc, a = full(sys)
    assert proc.madvise(a, PMD, "cold") == 0
    assert collapse(proc, a, PMD) == 0


def test_lazyfree_pages_are_collapsed(policy):
    """E20: 7.2's SCAN_PAGE_LAZYFREE is for khugepaged only; MADV_COLLAPSE copies
    clean lazy-free pages like any other (content kept)."""
    sys = machine(policy)
    proc, a = full(sys)
    before = proc.peek(a, PMD)
    assert proc.madvise(a, 16 * PG, "free") == 0
    assert collapse(proc, a, PMD) == 0
    assert huge(proc, a) == [True]
    assert np.array_equal(proc.peek(a, PMD), before)


# --- limits --------------------------------------------------------------------------------
@pytest.mark.parametrize("present", [1, 100])
def test_max_ptes_none_ignored_except_v11(policy, present):
    """E15: PTEs 0..present-1 present, max_ptes_none 0.  Base and 7.2 (limit 512)
    collapse; v11 (quirk 2) needs 512 present for o9, attempts nothing, SCAN_FAIL,
    -EINVAL."""
    sys = machine(policy)
    sys.settings.write("khugepaged/max_ptes_none", "0")
    proc = sys.spawn()
    a = proc.mmap(PMD, addr=BASE)
    proc.touch(a, present * PG)
    before = proc.peek(a, PMD)
    ret = collapse(proc, a, PMD)
    if policy == "v11":
        assert ret == EINVAL
        assert huge(proc, a) == [False]
        assert sys.khugepaged.attempts == []
        assert scan_results(sys) == ["SCAN_FAIL"]
    else:
        assert ret == 0
        assert huge(proc, a) == [True]
        assert np.array_equal(proc.peek(a, PMD), before)
        assert proc.rss_anon == NR


def test_max_ptes_swap_ignored(policy):
    """65 swap entries over max_ptes_swap 0: swapped in and collapsed (v11 too: with
    max_ptes_none 511 its o9 threshold is 1 present page)."""
    sys = machine(policy)
    sys.settings.write("khugepaged/max_ptes_swap", "0")
    proc, a = full(sys)
    before = proc.peek(a, PMD)
    assert proc.madvise(a, 65 * PG, "pageout") == 0
    assert proc.rss_swap == 65
    assert collapse(proc, a, PMD) == 0
    assert huge(proc, a) == [True]
    assert proc.rss_swap == 0
    assert np.array_equal(proc.peek(a, PMD), before)


def test_v11_quirk1_swap_counts_as_missing(policy):
    """511 present + 1 swap entry, max_ptes_none 0.  Base and 7.2 (swap entries count
    as occupied for o9, linux-7.2.md §3.2) collapse; v11 sees 511 < 512 present
    (quirks 1 + 2) and returns -EINVAL without an attempt."""
    sys = machine(policy)
    sys.settings.write("khugepaged/max_ptes_none", "0")
    proc, a = full(sys)
    assert proc.madvise(a, PG, "pageout") == 0
    ret = collapse(proc, a, PMD)
    assert ret == (EINVAL if policy == "v11" else 0)
    assert huge(proc, a) == [policy != "v11"]


def test_max_ptes_shared_ignored(policy):
    """All 512 pages shared with a child, max_ptes_shared 0: the parent collapses, the
    child keeps the old pages."""
    sys = machine(policy)
    sys.settings.write("khugepaged/max_ptes_shared", "0")
    proc, a = full(sys)
    child = proc.fork()
    before = proc.peek(a, PMD)
    assert collapse(proc, a, PMD) == 0
    assert huge(proc, a) == [True]
    assert huge(child, a) == [False]
    assert np.array_equal(proc.peek(a, PMD), before)
    assert np.array_equal(child.peek(a, PMD), before)
    assert pictures(child, a, PMD) == ["0" * NR]


# --- failures inside an attempt: v11 quirk 3 ------------------------------------------------
def test_alloc_failure_enomem_v11_einval(policy):
    """SCAN_ALLOC_HUGE_PAGE_FAIL -> -ENOMEM, not whitelisted: the walk stops at the
    first PMD.  v11 (quirk 3) flattens the walk's failure to SCAN_FAIL -> -EINVAL."""
    sys = machine(policy)
    proc, a = full(sys, nr=2)
    sys.khugepaged.alloc_fail_orders = {9}
    ret = collapse(proc, a, 2 * PMD)
    assert ret == (EINVAL if policy == "v11" else ENOMEM)
    assert [(x.order, x.result) for x in sys.khugepaged.attempts] == \
        [(9, "SCAN_ALLOC_HUGE_PAGE_FAIL")]
    assert sys.counters.vmstat["thp_collapse_alloc_failed"] == 1
    assert huge(proc, a, 2) == [False, False]
    sys.khugepaged.alloc_fail_orders = set()
    assert collapse(proc, a, 2 * PMD) == 0


def test_memcg_charge_failure_ebusy_v11_einval(policy):
    """SCAN_CGROUP_CHARGE_FAIL -> -EBUSY (v11, quirk 3: -EINVAL).  512 pages are
    charged; the new PMD folio would need 512 more under a 3 MiB limit."""
    sys = machine(policy, memcg_limit="3M")
    proc, a = full(sys)
    ret = collapse(proc, a, PMD)
    assert ret == (EINVAL if policy == "v11" else EBUSY)
    assert [x.result for x in sys.khugepaged.attempts] == ["SCAN_CGROUP_CHARGE_FAIL"]
    assert sys.counters.vmstat["thp_collapse_alloc"] == 1  # allocated, then not charged
    assert huge(proc, a) == [False]
    assert sys.memcg.usage == NR


# --- scan-time failures: errno and whitelist -------------------------------------------------
def _pin(sys, proc, addr):
    """An extra reference (a GUP pin) on the folio mapped at ``addr``."""
    pt = proc.mm.pt
    vpn = addr // PG
    pfn = int(pt.pfn[pt.row(vpn // NR), vpn % NR])
    head = sys.folios.folio_of(pfn)
    sys.folios.pins[head] = sys.folios.pins.get(head, 0) + 1
    sys.folios.refcount[head] += 1
    return head


def _folio_at(sys, proc, addr):
    pt = proc.mm.pt
    vpn = addr // PG
    return sys.folios.folio_of(int(pt.pfn[pt.row(vpn // NR), vpn % NR]))


@pytest.mark.parametrize("how,result", [
    ("pin", "SCAN_PAGE_COUNT"),
    ("lock", "SCAN_PAGE_LOCK"),
    ("lru", "SCAN_PAGE_LRU"),
])
def test_whitelisted_failure_continues_with_eagain(policy, how, result):
    """[full, one bad page, full]: the middle PMD fails at scan time with a
    whitelisted result (-EAGAIN); the other two are collapsed.  Scan results are
    not flattened, so v11 agrees."""
    sys = machine(policy)
    proc, a = full(sys, nr=3)
    bad = a + PMD + 7 * PG
    if how == "pin":
        _pin(sys, proc, bad)
    elif how == "lock":
        sys.folios.set(_folio_at(sys, proc, bad), PG_LOCKED)
    else:
        sys.folios.clear(_folio_at(sys, proc, bad), PG_LRU)
    assert collapse(proc, a, 3 * PMD) == EAGAIN
    assert huge(proc, a, 3) == [True, False, True]
    assert scan_results(sys) == ["SCAN_SUCCEED", result, "SCAN_SUCCEED"]


def test_v11_sparse_pmd_stops_the_walk(policy):
    """[full, one page, full] with max_ptes_none 0: base and 7.2 collapse all three;
    v11 (quirk 2) fails the middle PMD with SCAN_FAIL, which is not whitelisted:
    the third PMD is never looked at."""
    sys = machine(policy)
    sys.settings.write("khugepaged/max_ptes_none", "0")
    proc = sys.spawn()
    a = proc.mmap(3 * PMD, addr=BASE)
    proc.touch(a, PMD)
    proc.write(a + PMD)
    proc.touch(a + 2 * PMD, PMD)
    ret = collapse(proc, a, 3 * PMD)
    if policy == "v11":
        assert ret == EINVAL
        assert huge(proc, a, 3) == [True, False, False]
        assert scan_results(sys) == ["SCAN_SUCCEED", "SCAN_FAIL"]
    else:
        assert ret == 0
        assert huge(proc, a, 3) == [True, True, True]


# --- userfaultfd -------------------------------------------------------------------------------
def test_uffd_armed_vma_with_none_ptes_is_ebusy(policy):
    """uffd-armed: no none/zero PTE allowed even for MADV_COLLAPSE (7.2: limit 0 with
    only the PMD order asked for) -> SCAN_EXCEED_NONE_PTE -> -EBUSY, and the walk stops."""
    sys = machine(policy)
    proc = sys.spawn()
    a = proc.mmap(2 * PMD, addr=BASE)
    assert proc.uffd_register(a, 2 * PMD, "missing") == 0
    proc.touch(a, PMD - PG)  # last page of PMD 0 stays none
    proc.touch(a + PMD, PMD)
    assert collapse(proc, a, 2 * PMD) == EBUSY
    assert huge(proc, a, 2) == [False, False]
    assert scan_results(sys) == ["SCAN_EXCEED_NONE_PTE"]
    # a fully populated PMD of an armed VMA is collapsed
    assert collapse(proc, a + PMD, PMD) == 0
    assert huge(proc, a, 2) == [False, True]


def test_uffd_wp_pte_is_whitelisted_einval(policy):
    """A present PTE with the uffd-wp bit: SCAN_PTE_UFFD_WP, whitelisted, -EINVAL."""
    sys = machine(policy)
    proc, a = full(sys, nr=2)
    assert proc.uffd_register(a, 2 * PMD, "wp") == 0
    pt = proc.mm.pt
    pt.flags[pt.row(a // PG // NR), 3] |= F_UFFD_WP  # UFFDIO_WRITEPROTECT of page 3
    assert collapse(proc, a, 2 * PMD) == EINVAL
    assert huge(proc, a, 2) == [False, True]
    assert scan_results(sys) == ["SCAN_PTE_UFFD_WP", "SCAN_SUCCEED"]
