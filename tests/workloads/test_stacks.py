"""Thread stacks: mostly empty PMDs become bloat with max_ptes_none=511, not with 0."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from thpsim.mm.memory import SegvError
from thpsim.sim import simulate
from thpsim.system import System
from thpsim.workloads import WorkloadError
from thpsim.workloads.base import EventApplier
from thpsim.workloads.stacks import ThreadStacks

THREADS, USED_KB = 16, 64
PARAMS = {"threads": THREADS, "used": f"{USED_KB}K", "churn": 0.25, "churn_s": 10}
FAST = {"khugepaged/scan_sleep_millisecs": "1000", "khugepaged/pages_to_scan": "65536"}


@functools.cache
def _run(none: str, advice: str = "none", policy: str = "legacy"):
    return simulate("stacks", params={**PARAMS, "advice": advice}, policy=policy,
                    settings={**FAST, "khugepaged/max_ptes_none": none}, duration_s=60,
                    sample_s=1.0, seed=2)


@pytest.mark.parametrize("policy", ["legacy", "linux-7.2"])
def test_first_touch_maps_a_pmd_folio_per_stack(policy):
    r = _run("0", policy=policy)
    # before the first thread exit (10 s): each stack's top PMD lies inside the VMA,
    # so its first fault maps a whole 2 MiB folio for 64 KiB used
    assert r.series["rss_kb"][1] == THREADS * 2048
    assert r.series["pmd_mapped_kb"][1] == THREADS * 2048


@pytest.mark.parametrize("policy", ["legacy", "linux-7.2"])
def test_khugepaged_bloat_with_511_not_with_0(policy):
    full, none0 = _run("511", policy=policy), _run("0", policy=policy)
    # 0: the stacks DONTNEED'ed at thread exit keep only their used top
    assert none0.summary["bloat_kb"] == 0
    assert none0.summary["rss_kb"] < THREADS * 2048
    assert none0.summary["rss_kb"] >= THREADS * USED_KB
    # 511: each such stack PMD (16 present of 512) is collapsed again: 496 pages filled
    assert full.summary["bloat_kb"] > 0
    assert full.summary["bloat_kb"] % ((512 - USED_KB // 4) * 4) == 0
    # one second after each churn every stack is a full PMD again (before the churn at 60 s)
    assert full.series["rss_kb"][full.series["t_s"] == 59][0] == THREADS * 2048


def test_nohugepage_stacks_stay_small():
    r = _run("511", advice="nohugepage")
    assert np.all(r.series["rss_kb"][1:] == THREADS * USED_KB)
    assert r.summary["bloat_kb"] == 0
    # each stack: 16 order-0 pages, one TLB entry each
    assert r.summary["tlb_x86-64"] == THREADS * USED_KB // 4


def test_guard_page_is_protected():
    sys = System(memory="1G")
    ap = EventApplier(sys)
    wl = ThreadStacks(threads=2)
    for ev in wl.events(np.random.default_rng(0)):
        if ev.t > 0:
            break
        ap.apply(ev)
    main = ap.procs["main"]
    for i in range(2):
        base = ap.regions["main"][f"stack{i}"].addr
        with pytest.raises(SegvError):
            main.touch(base, 4096)
        main.touch(base + 4096, 4096)  # just above the guard: ordinary stack memory


def test_bad_params():
    with pytest.raises(WorkloadError, match="fit"):
        ThreadStacks(stack_size="64K", used="64K")
    with pytest.raises(WorkloadError, match="multiples"):
        ThreadStacks(guard=100)
