"""The khugepaged daemon: registration, budget, full scans, back-off, tracepoints."""

from __future__ import annotations

import pytest

from tests.conftest import PMD
from thpsim.mm.trace import format_event, format_line
from thpsim.system import System


def _setup(policy: str, memory: str = "256M", **kw) -> System:
    sys = System(memory=memory, swap="64M", policy=policy, **kw)
    sys.settings.write("enabled", "madvise")
    return sys


def _populated_pmds(sys: System, n: int, pages=None, hugepage=True):
    p = sys.spawn("main")
    a = p.mmap(n * PMD)
    p.madvise(a, n * PMD, "nohugepage")
    for k in range(n):
        p.touch(a + k * PMD, pages=range(512) if pages is None else pages)
    if hugepage:
        p.madvise(a, n * PMD, "hugepage")
    return p, a


def _vmas_around(sys: System, p, before: int, after: int):
    """Small ineligible (NOHUGEPAGE) VMAs below and above one 2 MiB VMA."""
    addrs = []
    for i in range(before):
        a = p.mmap(4096, name=f"b{i}")
        p.madvise(a, 4096, "nohugepage")
        addrs.append(a)
    big = p.mmap(PMD)
    for i in range(after):
        a = p.mmap(4096, addr=big + PMD + 2 * i * 4096, name=f"a{i}")
        p.madvise(a, 4096, "nohugepage")
    return big


def _scan_events(sys):
    return [e for e in sys.khugepaged.trace if e["event"] == "mm_khugepaged_scan"]


@pytest.mark.parametrize("pattern,expected", [
    ("full", [(520, 0), (5, 1)]),  # PMD scanned, attempt drops the lock; next call 1 + 4
    ("pmd_mapped", [(13, 1)]),  # 1 + 7 + 1 + 4
    ("first256", [(269, 1)]),  # PMD-only scan aborts at PTE 256: 1 + 7 + 257 + 4
])
def test_72_budget_charges(pattern, expected):
    """linux-7.2.md §1.2: observed charges with 7 VMAs before and 4 after."""
    sys = _setup("linux-7.2")
    sys.settings.write("khugepaged/max_ptes_none", "0")
    p = sys.spawn("main")
    big = _vmas_around(sys, p, 7, 4)
    if pattern == "pmd_mapped":
        sys.settings.write("enabled", "always")
        p.touch(big, pages=[0])
        sys.settings.write("enabled", "madvise")
    else:
        p.madvise(big, PMD, "nohugepage")
        p.touch(big, pages=range(512 if pattern == "full" else 256))
    p.madvise(big, PMD, "hugepage")
    sys.khugepaged.enable_trace()
    sys.khugepaged.run(full_scans=1)
    got = [(e["progress"], e["full_scan_finished"]) for e in _scan_events(sys)]
    assert got == expected


def test_legacy_budget_is_512_per_pmd():
    """Baseline: every PMD costs HPAGE_PMD_NR; pages_to_scan 4096 covers 8 PMDs."""
    sys = _setup("legacy")
    sys.settings.write("khugepaged/max_ptes_none", "0")
    _populated_pmds(sys, 12, pages=range(300))  # 212 none > 0: every scan aborts
    sys.khugepaged.run(passes=1)
    assert len(sys.khugepaged.scans) == 8
    # pass 2: PMDs 9-12 (1 + 4 * 512 units), the wrap counts a full scan, and the
    # same pass goes on from the list head (pass_through_head < 2): PMDs 1-4 again
    sys.khugepaged.run(passes=1)
    assert len(sys.khugepaged.scans) == 16
    assert sys.khugepaged.full_scans == 1


def test_72_budget_is_per_pte():
    """7.2 charges PTEs examined: aborts at PTE 1 cost 2 each, so one pass sees all."""
    sys = _setup("linux-7.2")
    sys.settings.write("khugepaged/max_ptes_none", "0")
    _populated_pmds(sys, 12, pages=range(1, 512))  # PTE 0 none: abort at index 0
    sys.khugepaged.run(passes=1)
    assert len(sys.khugepaged.scans) == 12
    assert sys.khugepaged.full_scans == 1


def test_pages_collapsed_counts_pmds_not_folios():
    sys = _setup("v11")
    sys.settings.write("hugepages-64kB/enabled", "madvise")
    sys.settings.write("hugepages-2048kB/enabled", "never")
    p, a = _populated_pmds(sys, 2)
    sys.khugepaged.run(full_scans=1)
    assert sys.khugepaged.pages_collapsed == 2
    assert sys.settings.read("khugepaged/pages_collapsed") == "2\n"
    assert p.layout(a, 2 * PMD).pmds[1].summary() == "0-511:o4x32"


def test_full_scans_wrap_over_all_mms():
    sys = _setup("legacy")
    _populated_pmds(sys, 1)
    _populated_pmds(sys, 1)
    assert len(sys.khugepaged.mm_slots) == 2
    sys.khugepaged.run(full_scans=1)
    assert sys.settings.read("khugepaged/full_scans") == "1\n"
    assert all(p.layout().pmds[0].picture == "H" * 512 for p in sys.processes.values())


def test_e21_no_registration_without_madvise_hugepage():
    """linux-7.2.md E21: top-level never, 64K always: the mm is never registered
    (no mTHP-fault registration); after MADV_HUGEPAGE it collapses to 32 x 64K."""
    sys = System(memory="256M", policy="linux-7.2")
    sys.settings.write("enabled", "never")
    for kb in (16, 32, 64, 128, 256, 512, 1024, 2048):
        sys.settings.write(f"hugepages-{kb}kB/enabled", "never")
    p = sys.spawn()
    a = p.mmap(PMD)
    p.touch(a, pages=range(0, 512, 16))
    sys.settings.write("hugepages-64kB/enabled", "always")
    res = sys.khugepaged.run(seconds=1.5)
    assert res["idle"] and sys.khugepaged.attempts == []
    assert p.madvise(a, PMD, "hugepage") == 0
    assert p.mm.registered
    sys.khugepaged.run(full_scans=1)
    assert p.layout(a).pmds[0].summary() == "0-511:o4x32"


@pytest.mark.parametrize("policy,registered", [("legacy", False), ("v11", True),
                                               ("linux-7.2", True)])
def test_registration_with_only_mthp_enabled(policy, registered):
    """hugepage_pmd_enabled (legacy) vs hugepage_enabled (v11 patch 14, 7.2)."""
    sys = System(memory="256M", policy=policy)
    sys.settings.write("enabled", "never")
    sys.settings.write("hugepages-2048kB/enabled", "never")
    sys.settings.write("hugepages-64kB/enabled", "madvise")
    p = sys.spawn()
    a = p.mmap(PMD)
    p.touch(a, pages=[0])
    p.madvise(a, PMD, "hugepage")
    assert p.mm.registered is registered


def test_72_top_level_alone_keeps_khugepaged_running():
    """linux-7.2.md §9.1 item 8: top-level madvise with every size never still
    counts as enabled for 7.2, but not for v11 (patch 14) or legacy."""
    for policy, expect in (("linux-7.2", True), ("v11", False), ("legacy", False)):
        sys = System(memory="64M", policy=policy)
        sys.settings.write("enabled", "madvise")
        sys.settings.write("hugepages-2048kB/enabled", "never")
        assert sys.khugepaged.hugepage_enabled() is expect


def test_registration_needs_anon_vma():
    sys = _setup("v11")
    p = sys.spawn()
    a = p.mmap(PMD)
    p.madvise(a, PMD, "hugepage")  # never written: no anon_vma
    assert not p.mm.registered
    p.touch(a, pages=[0], write=False)  # a huge zero page PMD fault registers
    assert p.mm.registered


def test_fork_registers_child_and_exit_removes():
    sys = _setup("v11")
    p, _ = _populated_pmds(sys, 1)
    child = p.fork()
    assert [m.pid for m in sys.khugepaged.mm_slots] == [p.pid, child.pid]
    child.exit()
    assert [m.pid for m in sys.khugepaged.mm_slots] == [p.pid]


@pytest.mark.parametrize("policy,sleeps", [("legacy", 1), ("v11", 0), ("linux-7.2", 1)])
def test_alloc_failure_back_off(policy, sleeps):
    """An allocation failure makes khugepaged sleep alloc_sleep_millisecs once per
    pass (a second failure ends the pass); v11 lost this for anon (quirk 3)."""
    sys = _setup(policy)
    _populated_pmds(sys, 3)
    sys.khugepaged.alloc_fail_orders = {9}
    sys.khugepaged.run(passes=1)
    assert sys.khugepaged.alloc_sleeps == sleeps
    if sleeps:
        assert sys.khugepaged.clock_ms == 60000
        # failure on PMD 1, sleep, failure on PMD 2 ends the pass
        assert len(sys.khugepaged.scans) == 2


def test_run_seconds_advances_clock_by_scan_sleep():
    sys = _setup("legacy")
    _populated_pmds(sys, 1)
    sys.settings.write("khugepaged/scan_sleep_millisecs", "100")
    res = sys.khugepaged.run(seconds=1.0)
    assert res["passes"] == 10
    assert sys.khugepaged.clock_ms == pytest.approx(1000.0)


def test_disabling_thp_stops_the_thread():
    sys = _setup("v11")
    p, a = _populated_pmds(sys, 1)
    sys.settings.write("enabled", "never")
    sys.settings.write("hugepages-2048kB/enabled", "never")
    assert sys.khugepaged.run(full_scans=1)["idle"]
    assert p.layout(a).pmds[0].picture == "0" * 512


# --- tracepoints ------------------------------------------------------------------------
def _trace_for(policy: str, pattern_pages, swap_page=None, sizes=(), mpn="0"):
    sys = _setup(policy)
    sys.settings.write("khugepaged/max_ptes_none", mpn)
    if sizes:
        sys.settings.write("hugepages-2048kB/enabled", "never")
    for kb in sizes:
        sys.settings.write(f"hugepages-{kb}kB/enabled", "madvise")
    p, a = _populated_pmds(sys, 1, pages=pattern_pages, hugepage=False)
    if swap_page is not None:
        p.madvise(a + swap_page * 4096, 4096, "pageout")
    p.madvise(a, PMD, "hugepage")
    sys.khugepaged.enable_trace()
    sys.khugepaged.run(full_scans=1)
    return sys, [(e["event"], format_event(e, policy)) for e in sys.khugepaged.trace]


def test_trace_formats_per_policy():
    """Exact format strings: legacy has no order, v11 lacks the comma, 7.2 has it."""
    _, legacy = _trace_for("legacy", range(512))
    _, v11 = _trace_for("v11", range(512))
    _, l72 = _trace_for("linux-7.2", range(512))
    pick = dict
    assert pick(legacy)["mm_collapse_huge_page"].endswith("isolated=1, status=succeeded")
    assert pick(v11)["mm_collapse_huge_page"].endswith("isolated=1, status=succeeded order=9")
    assert pick(l72)["mm_collapse_huge_page"].endswith("isolated=1, status=succeeded, order=9")
    assert pick(v11)["mm_collapse_huge_page_isolate"].endswith(
        "none_or_zero=0, referenced=512, status=succeeded order=9")
    assert "mm_khugepaged_scan" in pick(l72) and "mm_khugepaged_scan" not in pick(v11)
    scan = pick(l72)["mm_khugepaged_scan_pmd"]
    assert "referenced=512, none_or_zero=0, status=succeeded, unmapped=0" in scan


def test_trace_swapin_ret_is_the_enum_number():
    """E11 (7.2): mTHP swap bail-out prints ret=5 (SCAN_EXCEED_SWAP_PTE in 7.2) and a
    PMD swap-in ret=1; v11 numbers SCAN_EXCEED_SWAP_PTE as 6."""
    mthp = (16, 32, 64, 128, 256, 512, 1024)
    _, l72 = _trace_for("linux-7.2", range(512), swap_page=300, sizes=mthp, mpn="511")
    swapins = [t for ev, t in l72 if ev == "mm_collapse_huge_page_swapin"]
    # E11b: o8@0 passes the swap-in step (no swap entry in 0-255), o8@256 bails out
    assert swapins[0].endswith("swapped_in=0, referenced=511, ret=1, order=8")
    assert swapins[1].endswith("swapped_in=0, referenced=511, ret=5, order=8")
    _, v11 = _trace_for("v11", range(512), swap_page=300, sizes=mthp, mpn="511")
    sw = [t for ev, t in v11 if ev == "mm_collapse_huge_page_swapin"]
    assert any("ret=6, order=" in t for t in sw)


def test_trace_scan_pfn_minus_one_for_pmd_mapped():
    sys = _setup("linux-7.2")
    sys.settings.write("enabled", "always")
    p = sys.spawn()
    a = p.mmap(PMD)
    p.touch(a, pages=[0])
    sys.khugepaged.enable_trace()
    sys.khugepaged.run(full_scans=1)
    ev = next(e for e in sys.khugepaged.trace if e["event"] == "mm_khugepaged_scan_pmd")
    line = format_line(ev, "linux-7.2")
    assert "scan_pfn=0xffffffffffffffff" in line and "status=page_pmd_mapped" in line
    assert ": mm_khugepaged_scan_pmd: mm=" in line


@pytest.mark.parametrize("limit", [True, False])
@pytest.mark.parametrize("batch", [True, False])
def test_tool_hooks_scan_seq_scan_pages_and_full_scan_limit(batch, limit):
    """Attempts name their PMD scan; scan_pages records the work after each scan; a
    pass that wraps around stops at full_scan_limit instead of starting the next scan
    (pass 1 scans 3 of 4 PMDs, pass 2 finishes the full scan and would go on)."""
    sys = _setup("legacy")
    sys.settings.write("khugepaged/max_ptes_none", "511")
    sys.settings.write("khugepaged/pages_to_scan", "1536")
    kh = sys.khugepaged
    kh.batch = batch
    _populated_pmds(sys, 4, pages=range(0, 512, 2))
    if limit:
        kh.full_scan_limit = sys.settings.full_scans + 1
    kh.run(passes=2)
    assert sys.settings.full_scans == 1
    assert len(kh.scans) == 4 if limit else len(kh.scans) > 4
    assert len(kh.scan_pages) == len(kh.scans)
    assert kh.scan_pages == sorted(kh.scan_pages) and kh.scan_pages[-1] == kh.pages_scanned
    assert [kh.scans[at.scan_seq][0] for at in kh.attempts] == [at.pmd_addr for at in kh.attempts]
    assert [at.scan_seq for at in kh.attempts] == [0, 1, 2, 3]
