"""The kernel's khugepaged selftest (``tools/testing/selftests/mm/khugepaged.c``), anon part.

Every anonymous case of selftests.md §2.2 (rows 1-13), the ``alloc_at_fault``
pre-check and the ``alloc_hpage`` helper, re-expressed on the model with the
harness' defaults (selftests.md §2.1, linux-7.2.md §8): top level ``madvise``,
``defrag=always``, ``use_zero_page=0``, khugepaged ``max_ptes_none=511``,
``max_ptes_swap=64``, ``max_ptes_shared=256``, ``pages_to_scan=4096``, both
sleeps 10 ms, ``hugepages-2048kB=inherit``; every area at ``BASE_ADDR`` = 1 GiB.

Parametrized over

* the policy: ``legacy``, ``v11``, ``linux-7.2``;
* the ``-s`` option of the 7.2 selftest: none, ``-s 2``, ``-s 4`` (order N
  ``always``; ``fault_nr_pages = 1 << N`` in ``collapse_max_ptes_none``);
* the collapse context: **K** (``MADV_HUGEPAGE``, khugepaged for two full scans,
  ``MADV_NOHUGEPAGE``) and **M** (top level ``never``, ``MADV_HUGEPAGE``,
  ``MADV_COLLAPSE`` retried once on ``-EAGAIN``).

``check_huge`` is the selftest's: the number of PMD-mapped THPs in the VMA
(smaps ``AnonHugePages``).  The kernel's expected outcome holds for
``linux-7.2`` everywhere (linux-7.2.md §8: 26/26 pass with no -s, -s 2, -s 4)
and for ``legacy`` (the host's 6.18 runs the same anon checks, real-kernel.md §4;
mTHP faults under -s do not change any legacy outcome either).  ``v11``
deviates exactly once, by its quirk 2 (kernel-model.md §2.A): MADV_COLLAPSE
obeys ``max_ptes_none``, so ``collapse_max_ptes_none`` in context M returns
``-EINVAL`` without collapsing (E15).  Quirks 1 and 3 change no outcome here:
quirk 1 (swap entries count as missing for the PMD threshold) only bites with
a small ``max_ptes_none``, and no test combines one with swap entries; quirk 3
(flattened ``collapse_huge_page`` failures) needs an attempt to fail, and none
does.

Data integrity (the selftest's ``validate_memory``): the harness remembers the
content token of every page it wrote (per process, copied at fork) and checks
them after each collapse; pages never written must read as 0.
"""

from __future__ import annotations

import errno

import numpy as np
import pytest

from thpsim.mm.pgtable import HUGE_ZERO_PFN, PTE_NONE
from thpsim.process import Process
from thpsim.system import System

PG = 4096
NR = 512
PMD = NR * PG
BASE = 1 << 30  # BASE_ADDR

POLICIES = ("legacy", "v11", "linux-7.2")
ORDERS = (0, 2, 4)  # anon_order: no -s, -s 2, -s 4
ORDER_IDS = ("no-s", "s2", "s4")
CONTEXTS = ("K", "M")

HARNESS_DEFAULTS = {
    "enabled": "madvise",
    "defrag": "always",
    "use_zero_page": "0",
    "hugepages-2048kB/enabled": "inherit",
    "khugepaged/defrag": "1",
    "khugepaged/alloc_sleep_millisecs": "10",
    "khugepaged/scan_sleep_millisecs": "10",
    "khugepaged/max_ptes_none": str(NR - 1),
    "khugepaged/max_ptes_swap": str(NR // 8),
    "khugepaged/max_ptes_shared": str(NR // 2),
    "khugepaged/pages_to_scan": str(NR * 8),
}


class Selftest:
    """The selftest harness on one simulated machine (one test = one machine)."""

    def __init__(self, policy: str, anon_order: int, ctx: str, memory: str = "128M",
                 check: bool = True) -> None:
        self.sys = System(memory=memory, swap="16M", policy=policy, check=check)
        self.policy = policy
        self.anon_order = anon_order
        self.ctx = ctx
        self.sys.settings.apply(HARNESS_DEFAULTS)
        if anon_order:
            self.sys.settings.write(f"hugepages-{4 << anon_order}kB/enabled", "always")
        self.proc = self.sys.spawn("khugepaged")
        #: pid -> {page address: content token written by the test}
        self.mem: dict[int, dict[int, int]] = {self.proc.pid: {}}

    @property
    def enforce_pte_scan_limits(self) -> bool:
        return self.ctx == "K"

    # --- mem_ops (anon) -----------------------------------------------------------
    def setup_area(self, proc: Process, nr_hpages: int) -> int:
        p = proc.mmap(nr_hpages * PMD, addr=BASE)
        assert p == BASE
        return p

    def fault(self, proc: Process, p: int, start: int, end: int) -> None:
        """anon fault: write every page of ``[p+start, p+end)``."""
        proc.touch(p + start, end - start)
        tokens = proc.peek(p + start, end - start)
        assert (tokens != 0).all()
        mine = self.mem[proc.pid]
        for k, tok in enumerate(tokens.tolist()):
            mine[p + start + k * PG] = tok

    def cleanup_area(self, proc: Process, p: int, size: int) -> None:
        assert proc.munmap(p, size) == 0
        mine = self.mem[proc.pid]
        for a in [a for a in mine if p <= a < p + size]:
            del mine[a]

    def check_huge(self, proc: Process, p: int, nr_hpages: int) -> bool:
        """smaps ``AnonHugePages`` of the VMA containing ``p`` == nr_hpages * 2 MiB."""
        vma = proc.mm.vmas.find(p // PG)
        assert vma is not None
        n = sum(1 for pmd, (head, _) in proc.mm.pt.huge.items()
                if head != HUGE_ZERO_PFN and vma.start <= pmd * NR < vma.end)
        return n == nr_hpages

    def check_swap(self, proc: Process, size: int) -> bool:
        return proc.rss_swap * PG == size

    def validate_memory(self, proc: Process, p: int, start: int, end: int) -> None:
        got = proc.peek(p + start, end - start)
        mine = self.mem[proc.pid]
        want = np.array([mine.get(p + start + k * PG, 0) for k in range(got.size)])
        assert (want != 0).all(), "validate_memory over pages the test never wrote"
        assert np.array_equal(got, want), "content changed"

    def fork(self, proc: Process) -> Process:
        child = proc.fork()
        self.mem[child.pid] = dict(self.mem[proc.pid])
        return child

    # --- collapse contexts -----------------------------------------------------------
    def collapse(self, proc: Process, p: int, nr_hpages: int, expect: bool) -> int | None:
        """``c->collapse``; returns MADV_COLLAPSE's result in context M."""
        size = nr_hpages * PMD
        before = proc.peek(p, size)
        ret = None
        if self.ctx == "K":
            self._khugepaged_collapse(proc, p, nr_hpages, expect)
        else:
            ret = self._madvise_collapse(proc, p, nr_hpages, expect)
        after = proc.peek(p, size)
        assert np.array_equal(before, after), "collapse changed the content"
        mine = self.mem[proc.pid]
        written = np.array([p + k * PG in mine for k in range(size // PG)])
        assert (after[~written] == 0).all(), "a page never written is not zero"
        self.sys.check()
        return ret

    def _khugepaged_collapse(self, proc: Process, p: int, nr_hpages: int, expect: bool) -> None:
        # wait_for_scan: sanity check, MADV_HUGEPAGE, two full scans, MADV_NOHUGEPAGE
        assert self.check_huge(proc, p, 0), "Unexpected huge page"
        assert proc.madvise(p, nr_hpages * PMD, "hugepage") == 0
        self.sys.khugepaged.run(full_scans=2)
        assert proc.madvise(p, nr_hpages * PMD, "nohugepage") == 0
        assert self.check_huge(proc, p, nr_hpages if expect else 0)

    def _madvise_collapse(self, proc: Process, p: int, nr_hpages: int, expect: bool) -> int:
        with self.sys.settings.scoped({"enabled": "never"}):
            proc.madvise(p, nr_hpages * PMD, "hugepage")  # clear VM_NOHUGEPAGE
            ret = madvise_collapse_retry(proc, p, nr_hpages * PMD)
            assert (ret == 0) == expect, f"Bad return value {ret}"
            assert self.check_huge(proc, p, nr_hpages if expect else 0)
        return ret

    # --- helpers of khugepaged.c -------------------------------------------------------
    def alloc_hpage(self, proc: Process) -> int:
        """``alloc_hpage``: fault one PMD, MADV_COLLAPSE it (VMA neither HUGEPAGE nor
        NOHUGEPAGE), then MADV_HUGEPAGE."""
        p = self.setup_area(proc, 1)
        self.fault(proc, p, 0, PMD)
        assert madvise_collapse_retry(proc, p, PMD) == 0
        assert self.check_huge(proc, p, 1)
        assert proc.madvise(p, PMD, "hugepage") == 0
        self.validate_memory(proc, p, 0, PMD)
        return p


def folio_orders(proc: Process, p: int, size: int) -> set[int]:
    """Orders of the folios mapped in ``[p, p+size)``."""
    return {f[1] for pmd in proc.layout(p, size).pmds for f in pmd.folios}


def madvise_collapse_retry(proc: Process, p: int, size: int) -> int:
    ret = proc.madvise(p, size, "collapse")
    if ret == -errno.EAGAIN:
        ret = proc.madvise(p, size, "collapse")
    return ret


@pytest.fixture(params=POLICIES)
def policy(request) -> str:
    return request.param


@pytest.fixture(params=ORDERS, ids=ORDER_IDS)
def anon_order(request) -> int:
    return request.param


@pytest.fixture(params=CONTEXTS)
def ctx(request) -> str:
    return request.param


@pytest.fixture
def t(policy, anon_order, ctx) -> Selftest:
    return Selftest(policy, anon_order, ctx)


# --- pre-check and helper ---------------------------------------------------------------
def test_alloc_at_fault(policy, anon_order):
    """Top level ``always``: a one-byte write gives a PMD THP (the PMD order is tried
    first, whatever -s enables); MADV_DONTNEED of the first 4K splits the PMD."""
    t = Selftest(policy, anon_order, "K")
    proc, s = t.proc, t.sys.settings
    with s.scoped({"enabled": "always"}):
        p = proc.mmap(PMD, addr=BASE)
        proc.write(p)
        assert t.check_huge(proc, p, 1)
    assert proc.madvise(p, PG, "dontneed") == 0
    assert t.check_huge(proc, p, 0)
    assert proc.munmap(p, PMD) == 0


def test_alloc_hpage(policy, anon_order):
    """``alloc_hpage`` works under top level ``madvise`` on a VMA without
    VM_HUGEPAGE: MADV_COLLAPSE ignores ``enabled`` and collapses the order-N
    folios (-s N) or order-0 pages of the fault."""
    t = Selftest(policy, anon_order, "M")
    proc = t.proc
    p = t.alloc_hpage(proc)
    assert proc.layout(p, PMD).pictures() == ["H" * NR]


# --- 1-13 ---------------------------------------------------------------------------------
def test_collapse_full(t):
    """#1: 4 PMDs fully written -> 4 PMD THPs (K and M)."""
    proc = t.proc
    nr_hpages = 4
    size = nr_hpages * PMD
    p = t.setup_area(proc, nr_hpages)
    t.fault(proc, p, 0, size)
    # the VMA is not VM_HUGEPAGE yet: order-N folios under -s N, else order 0
    assert folio_orders(proc, p, size) == {t.anon_order}
    t.collapse(proc, p, nr_hpages, True)
    t.validate_memory(proc, p, 0, size)
    t.cleanup_area(proc, p, size)


def test_collapse_empty(t):
    """#2: a never-touched PMD is not collapsed.  The VMA has no anon_vma: khugepaged
    never registers the mm (it idles), MADV_COLLAPSE returns -EINVAL."""
    proc = t.proc
    p = t.setup_area(proc, 1)
    ret = t.collapse(proc, p, 1, False)
    if t.ctx == "M":
        assert ret == -errno.EINVAL
    else:
        assert not proc.mm.registered
    t.cleanup_area(proc, p, PMD)


def test_collapse_single_pte_entry(t):
    """#3: only page 0 written (an order-N folio under -s N): 511 none <= 511 (K),
    no limit (M) -> collapse."""
    proc = t.proc
    p = t.setup_area(proc, 1)
    t.fault(proc, p, 0, PG)
    assert proc.layout(p, PMD).pmds[0].folios == [[0, t.anon_order, 1 << t.anon_order, 0]]
    t.collapse(proc, p, 1, True)
    t.validate_memory(proc, p, 0, PG)
    t.cleanup_area(proc, p, PMD)


def test_collapse_max_ptes_none(t):
    """#4: max_ptes_none = 256.  A: 512 - 256 - fault_nr_pages pages written
    (255 / 252 / 240), so 257+ none: K no collapse, M collapse.  B (K only): 256
    written, exactly 256 none: K collapse.

    v11, context M: quirk 2 (kernel-model.md §2.A, E15) -- v11's bitmap walk
    applies ``present >= 512 - max_ptes_none`` to MADV_COLLAPSE too, so the PMD
    is never attempted, the walk returns SCAN_FAIL and MADV_COLLAPSE -EINVAL.
    The real 6.18 (legacy) and 7.2 kernels collapse (7.2: limit 512).
    """
    proc, s = t.proc, t.sys.settings
    max_ptes_none = NR // 2
    fault_nr_pages = 1 << t.anon_order
    with s.scoped({"khugepaged/max_ptes_none": str(max_ptes_none)}):
        p = t.setup_area(proc, 1)
        n_a = NR - max_ptes_none - fault_nr_pages
        t.fault(proc, p, 0, n_a * PG)
        expect = not t.enforce_pte_scan_limits
        if t.policy == "v11" and t.ctx == "M":
            expect = False  # quirk 2: MADV_COLLAPSE obeys max_ptes_none
        ret = t.collapse(proc, p, 1, expect)
        if t.policy == "v11" and t.ctx == "M":
            assert ret == -errno.EINVAL
        t.validate_memory(proc, p, 0, n_a * PG)
        kh = t.sys.khugepaged
        if t.enforce_pte_scan_limits and t.anon_order == 0:
            # PMD-only scan: aborts at the 257th none PTE
            assert [r for _, r, _ in kh.scans] == ["SCAN_EXCEED_NONE_PTE"] * 2
        if t.enforce_pte_scan_limits and t.anon_order and t.policy == "linux-7.2":
            # linux-7.2.md §8 #5: o9 needs 256 and is not met; 256 is neither 0 nor
            # 511, so mTHP falls back to 0 with one warning; every populated block
            # (63 resp. 15 per scan) is attempted and rejected, status "failed"
            assert any("max_ptes_none" in w for w in kh.warnings)
            per_scan = (256 - fault_nr_pages) // fault_nr_pages
            assert [(a.order, a.result) for a in kh.attempts] == \
                [(t.anon_order, "SCAN_PTE_MAPPED_HUGEPAGE")] * (2 * per_scan)
            assert [r for _, r, _ in kh.scans] == ["SCAN_FAIL"] * 2
        if t.enforce_pte_scan_limits:
            t.fault(proc, p, 0, (NR - max_ptes_none) * PG)
            t.collapse(proc, p, 1, True)
            t.validate_memory(proc, p, 0, (NR - max_ptes_none) * PG)
        t.cleanup_area(proc, p, PMD)


def test_collapse_swapin_single_pte(t):
    """#5: full PMD, page 0 paged out (smaps Swap: 4 kB): collapse swaps it back in."""
    proc = t.proc
    p = t.setup_area(proc, 1)
    t.fault(proc, p, 0, PMD)
    assert proc.madvise(p, PG, "pageout") == 0
    assert t.check_swap(proc, PG)  # under -s N the order-N folio was split first
    assert proc.layout(p, PMD).pictures()[0][0] == "s"
    t.collapse(proc, p, 1, True)
    assert proc.rss_swap == 0
    t.validate_memory(proc, p, 0, PMD)
    t.cleanup_area(proc, p, PMD)


def test_collapse_max_ptes_swap(t):
    """#6: A: 65 pages out (max_ptes_swap + 1): K no (SCAN_EXCEED_SWAP_PTE, PMD-wide
    whatever -s), M yes.  B (K only): re-fault all, 64 out: K yes (swap-in of 64)."""
    proc, s = t.proc, t.sys.settings
    max_ptes_swap = int(s.read("khugepaged/max_ptes_swap"))
    p = t.setup_area(proc, 1)
    t.fault(proc, p, 0, PMD)
    assert proc.madvise(p, (max_ptes_swap + 1) * PG, "pageout") == 0
    assert t.check_swap(proc, (max_ptes_swap + 1) * PG)
    t.collapse(proc, p, 1, not t.enforce_pte_scan_limits)
    t.validate_memory(proc, p, 0, PMD)
    if t.enforce_pte_scan_limits:
        t.fault(proc, p, 0, PMD)
        assert proc.madvise(p, max_ptes_swap * PG, "pageout") == 0
        assert t.check_swap(proc, max_ptes_swap * PG)
        t.collapse(proc, p, 1, True)
        t.validate_memory(proc, p, 0, PMD)
    t.cleanup_area(proc, p, PMD)


def test_collapse_single_pte_entry_compound(t):
    """#7: alloc_hpage, MADV_NOHUGEPAGE, MADV_DONTNEED of pages 1..511: one PTE maps
    page 0 of a (partially mapped) PMD-order folio -> collapse."""
    proc = t.proc
    p = t.alloc_hpage(proc)
    assert proc.madvise(p, PMD, "nohugepage") == 0
    assert proc.madvise(p + PG, PMD - PG, "dontneed") == 0
    assert t.check_huge(proc, p, 0)
    assert proc.layout(p, PMD).pictures() == ["9" + "." * (NR - 1)]
    t.collapse(proc, p, 1, True)
    t.validate_memory(proc, p, 0, PG)
    t.cleanup_area(proc, p, PMD)


def test_collapse_full_of_compound(t):
    """#8: alloc_hpage, MADV_NOHUGEPAGE on page 0 (the VMA split splits the PMD), then
    on the whole area (merge): 512 PTEs map one order-9 folio -> collapse."""
    proc = t.proc
    p = t.alloc_hpage(proc)
    assert proc.madvise(p, PG, "nohugepage") == 0
    assert proc.madvise(p, PMD, "nohugepage") == 0
    assert t.check_huge(proc, p, 0)
    assert proc.layout(p, PMD).pictures() == ["9" * NR]
    assert len(proc.mm.vmas) == 1
    t.collapse(proc, p, 1, True)
    t.validate_memory(proc, p, 0, PMD)
    t.cleanup_area(proc, p, PMD)


def move_pte(t: Selftest, proc: Process, src: int, dst: int) -> None:
    """Move the PTE at address ``src`` to ``dst`` (same mm) as mremap's move_ptes does.

    The entry moves unchanged; mapcounts, refcounts and RSS stay as they are, and
    the destination VMA has the source's anon_vma (mremap moves the VMA).  The
    model finds a large folio's mappings through its virtual index (``folios.vpn``,
    rmap.own_mappings / huge_memory._mms_mapping), so the index follows the page,
    as mremap's anon folio relocation does.
    """
    sys, pt = t.sys, proc.mm.pt
    s_vpn, d_vpn = src // PG, dst // PG
    svma, dvma = proc.mm.vmas.find(s_vpn), proc.mm.vmas.find(d_vpn)
    if not dvma.anon_vma:
        dvma.anon_vma = svma.anon_vma  # copy_vma: the moved VMA keeps its anon_vma
    srow = pt.row(s_vpn // NR)
    drow = pt.row(d_vpn // NR)
    if drow is None:
        drow = pt.alloc_table(d_vpn // NR)
    si, di = s_vpn % NR, d_vpn % NR
    assert pt.kind[drow, di] == PTE_NONE
    pt.kind[drow, di] = pt.kind[srow, si]
    pt.pfn[drow, di] = pt.pfn[srow, si]
    pt.flags[drow, di] = pt.flags[srow, si]
    pt.kind[srow, si] = PTE_NONE
    pt.pfn[srow, si] = 0
    pt.flags[srow, si] = 0
    pfn = int(pt.pfn[drow, di])
    head = sys.folios.folio_of(pfn)
    if head in sys.folios.vpn:
        sys.folios.vpn[head] = d_vpn - (pfn - head)
    mine = t.mem[proc.pid]
    mine[dst] = mine.pop(src)


def build_compound_extreme(t: Selftest, proc: Process) -> int:
    """The state of #9: 512 PTEs, each mapping the head page of a different PMD THP.

    The selftest builds it with two ``mremap(MREMAP_FIXED)`` per iteration; the
    model has no mremap, and no fault can put pages of 512 different folios into
    one PTE table (a folio is born at its own, naturally aligned address).  So
    each iteration does what the two mremaps do, with the same intermediate
    states: fault a fresh PMD THP in a scratch area (``MADV_HUGEPAGE``, write
    all, check huge, ``MADV_NOHUGEPAGE``), shrink it to its first page (the
    mremap shrink = split the PMD + unmap pages 1..511, which leaves the folio
    partially mapped and deferred-split queued), then move that one PTE into
    slot i of the target table (:func:`move_pte`).  The scratch area is unmapped
    and mapped again so that its page table goes and the next fault is a PMD
    fault again.  At the end: ``MADV_NOHUGEPAGE`` (the flag the moved VMA
    carries), fault the whole target (no new folio: every page is already
    mapped writable) and check it is not huge.
    """
    p = BASE - PMD  # where the selftest's area ends up
    assert proc.mmap(PMD, addr=p) == p
    scratch = BASE + 2 * PMD  # not adjacent: the target VMA keeps its own flags
    heads = set()
    for i in range(NR):
        assert proc.mmap(PMD, addr=scratch) == scratch
        proc.madvise(scratch, PMD, "hugepage")
        t.fault(proc, scratch, 0, PMD)
        assert t.check_huge(proc, scratch, 1), "Failed to allocate huge page"
        heads.add(proc.mm.pt.huge[scratch // PG // NR][0])
        proc.madvise(scratch, PMD, "nohugepage")
        assert proc.madvise(scratch + PG, PMD - PG, "dontneed") == 0
        move_pte(t, proc, scratch, p + i * PG)
        t.cleanup_area(proc, scratch, PMD)
    assert len(heads) == NR
    proc.madvise(p, PMD, "nohugepage")
    t.fault(proc, p, 0, PMD)
    assert not t.check_huge(proc, p, 1)
    return p


def test_collapse_compound_extreme(policy, anon_order, ctx):
    """#9: 512 PTEs map pages of 512 different PMD THPs -> collapse (K and M); the
    512 old folios are freed."""
    t = Selftest(policy, anon_order, ctx, memory="1100M", check=False)
    proc = t.proc
    p = build_compound_extreme(t, proc)
    t.sys.check()
    assert proc.layout(p, PMD).pictures() == ["9" * NR]
    pt = proc.mm.pt
    pfns = pt.pfn[pt.row(p // PG // NR)].astype(np.int64)
    heads = t.sys.folios.heads_of(pfns)
    assert np.unique(heads).size == NR and (heads == pfns).all()
    assert len(t.sys.deferred) == NR  # every one partially mapped
    t.collapse(proc, p, 1, True)
    t.validate_memory(proc, p, 0, PMD)
    assert t.sys.folios.nr_live == 1
    t.cleanup_area(proc, p, PMD)
    t.sys.check()


def test_collapse_fork(t):
    """#10: page 0 written, fork.  The child writes page 1 (COW of the shared order-N
    folio under -s N gives an order-0 copy): 2^N - 1 shared <= 256, 510 none (or
    fewer) -> the child collapses; the parent keeps small pages."""
    proc = t.proc
    p = t.setup_area(proc, 1)
    t.fault(proc, p, 0, PG)
    assert t.check_huge(proc, p, 0)
    child = t.fork(proc)
    assert t.check_huge(child, p, 0)
    t.fault(child, p, PG, 2 * PG)
    t.collapse(child, p, 1, True)
    t.validate_memory(child, p, 0, PG)
    t.cleanup_area(child, p, PMD)
    child.exit()
    assert t.check_huge(proc, p, 0)
    t.validate_memory(proc, p, 0, PG)
    t.cleanup_area(proc, p, PMD)
    t.sys.check()


def test_collapse_fork_compound(t):
    """#11: alloc_hpage, fork; the child splits the shared PMD (NOHUGEPAGE on page 0,
    then on all) and COWs page 0: 511 PTEs map the shared order-9 folio.  With
    max_ptes_shared = 511 the child collapses; the parent is still PMD-mapped."""
    proc, s = t.proc, t.sys.settings
    p = t.alloc_hpage(proc)
    child = t.fork(proc)
    assert t.check_huge(child, p, 1)
    child.madvise(p, PG, "nohugepage")
    child.madvise(p, PMD, "nohugepage")
    assert t.check_huge(child, p, 0)
    t.fault(child, p, 0, PG)
    s.write("khugepaged/max_ptes_shared", str(NR - 1))
    t.collapse(child, p, 1, True)
    s.write("khugepaged/max_ptes_shared", str(NR // 2))
    t.validate_memory(child, p, 0, PMD)
    t.cleanup_area(child, p, PMD)
    child.exit()
    assert t.check_huge(proc, p, 1)
    t.validate_memory(proc, p, 0, PMD)
    t.cleanup_area(proc, p, PMD)
    t.sys.check()


def test_collapse_max_ptes_shared(t):
    """#12: alloc_hpage, fork.  Child A: COW of pages 0..254, 257 still shared: K no
    (SCAN_EXCEED_SHARED_PTE, PMD-wide), M yes.  B (K only): COW 256, exactly 256
    shared: K yes.  The parent stays PMD-mapped."""
    proc, s = t.proc, t.sys.settings
    max_ptes_shared = int(s.read("khugepaged/max_ptes_shared"))
    p = t.alloc_hpage(proc)
    child = t.fork(proc)
    assert t.check_huge(child, p, 1)
    t.fault(child, p, 0, (NR - max_ptes_shared - 1) * PG)
    assert t.check_huge(child, p, 0)
    t.collapse(child, p, 1, not t.enforce_pte_scan_limits)
    if t.enforce_pte_scan_limits:
        t.fault(child, p, 0, (NR - max_ptes_shared) * PG)
        assert t.check_huge(child, p, 0)
        t.collapse(child, p, 1, True)
    t.validate_memory(child, p, 0, PMD)
    t.cleanup_area(child, p, PMD)
    child.exit()
    assert t.check_huge(proc, p, 1)
    t.validate_memory(proc, p, 0, PMD)
    t.cleanup_area(proc, p, PMD)
    t.sys.check()


def test_madvise_collapse_existing_thps(policy, anon_order):
    """#13 (M only): collapse a full PMD, then MADV_COLLAPSE the PMD-mapped range
    again directly: SCAN_PMD_MAPPED counts as success, both calls return 0."""
    t = Selftest(policy, anon_order, "M")
    proc = t.proc
    p = t.setup_area(proc, 1)
    t.fault(proc, p, 0, PMD)
    assert t.collapse(proc, p, 1, True) == 0
    t.validate_memory(proc, p, 0, PMD)
    head = proc.mm.pt.huge[p // PG // NR][0]
    assert madvise_collapse_retry(proc, p, PMD) == 0  # __madvise_collapse
    assert t.check_huge(proc, p, 1)
    assert proc.mm.pt.huge[p // PG // NR][0] == head  # a no-op
    t.validate_memory(proc, p, 0, PMD)
    t.cleanup_area(proc, p, PMD)
