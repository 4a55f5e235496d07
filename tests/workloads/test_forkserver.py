"""The fork-for-snapshot server: COW gives order-0 copies; sharing blocks collapse."""

from __future__ import annotations

import numpy as np
import pytest

from thpsim.sim import simulate
from thpsim.workloads import WorkloadError
from thpsim.workloads.forkserver import ForkServer

# 8 MiB dataset; first fork at 30 s, child alive 30..70 s, second fork at 90 s
PARAMS = {"dataset": "8M", "writes_per_s": 50, "snapshot_every_s": 60, "snapshot_s": 40}
FAST = {"khugepaged/scan_sleep_millisecs": "1000", "khugepaged/pages_to_scan": "4096"}


def _run(shared: str, duration: float = 80):
    return simulate("forkserver", params=PARAMS, policy="legacy",
                    settings={**FAST, "khugepaged/max_ptes_shared": shared},
                    duration_s=duration, sample_s=1.0, seed=1)


def test_cow_after_fork_makes_order0_copies():
    r = _run("0")
    s, t = r.series, r.series["t_s"]
    before = t < 30
    # the dataset was written in one go: all PMD-mapped, no order-0 page
    assert np.all(s["folio_kb_4"][before & (t > 0)] == 0)
    assert np.all(s["pmd_mapped_kb"][before & (t > 0)] == 8 * 1024)
    during = (t > 32) & (t < 70)
    assert np.all(s["folio_kb_4"][during] > 0)
    # a COW write to a PMD-mapped shared folio splits the parent's PMD first
    assert s["thp_split_pmd"][during].max() > 0
    # at most one copy per parent write: writes_per_s pages per second since the fork
    assert np.all(s["folio_kb_4"][during] <= 4 * 50 * (t[during] - 30) * 1.5 + 4 * 50)


def test_max_ptes_shared_blocks_collapse_while_the_child_lives():
    strict, loose = _run("0"), _run("511")
    for r in (strict, loose):
        t = r.series["t_s"]
        # the sample at 30 s: after the fork at 30 s, before the next khugepaged pass
        r.during = (t >= 30) & (t < 70)
    succ = strict.series["khugepaged_successes"]
    # with 0 no PMD with a shared page may be collapsed while the child maps them
    assert succ[strict.during].max() == succ[strict.during].min()
    assert strict.series["thp_scan_exceed_share_pte"][strict.during].max() > 0
    # with 511 the parent's split PMDs are collapsed again (copies of the shared pages)
    succ = loose.series["khugepaged_successes"]
    assert succ[loose.during].max() > succ[loose.during].min()
    assert loose.series["thp_scan_exceed_share_pte"][-1] == 0


def test_after_child_exit_collapse_resumes_with_max_ptes_shared_0():
    r = _run("0", duration=85)
    t = r.series["t_s"]
    succ = r.series["khugepaged_successes"]
    # the child exits at 70 s; the parent's split PMDs are exclusive again
    assert succ[t >= 80].min() > succ[(t >= 31) & (t < 70)].max()


def test_bad_params():
    with pytest.raises(WorkloadError, match="shorter"):
        ForkServer(snapshot_s=100, snapshot_every_s=50)
    with pytest.raises(WorkloadError, match="positive"):
        ForkServer(dataset=0)
