"""The allocator workload: released memory comes back under max_ptes_none=511."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from thpsim.sim import simulate
from thpsim.workloads import WorkloadError
from thpsim.workloads.allocator import Allocator

PARAMS = {"classes": "4,16", "arena_size": "16M", "churn": 0.05}
# a fast khugepaged: one pass per second covers both arenas (16 PMDs = 8192 PTEs)
FAST = {"khugepaged/scan_sleep_millisecs": "1000", "khugepaged/pages_to_scan": "16384"}
TOTAL_KB = 2 * 16 * 1024


@functools.cache
def _run(policy: str, none: str, release: str = "dontneed"):
    return simulate("allocator", params={**PARAMS, "release": release}, policy=policy,
                    settings={**FAST, "khugepaged/max_ptes_none": none}, duration_s=120,
                    seed=3)


@pytest.mark.parametrize("policy", ["legacy", "linux-7.2"])
def test_rss_returns_after_dontneed_only_with_511(policy):
    full, none0 = _run(policy, "511"), _run(policy, "0")
    half = full.series["t_s"] >= 60
    # 511: every PMD the releases split is collapsed again within a second
    assert full.series["rss_kb"][half].mean() > 0.85 * TOTAL_KB
    assert full.summary["bloat_kb"] > 0
    # 0: RSS converges to the live set (40%) plus spans freed since the last release
    # (at most 10 ticks x 5% of the live 40% = 20% more of the live set)
    assert none0.series["rss_kb"][half].mean() < 0.6 * TOTAL_KB
    assert none0.summary["bloat_kb"] == 0


def test_release_none_keeps_memory():
    r = _run("legacy", "0", release="none")
    # nothing is ever returned: RSS never drops below what the first touches mapped
    rss = r.series["rss_kb"][1:]
    assert np.all(rss >= rss[0])


def test_madv_free_keeps_rss_without_reclaim():
    # lazily freed pages stay mapped until reclaim, and the model has no background reclaim
    r = _run("legacy", "0", release="free")
    d = _run("legacy", "0")
    assert r.series["rss_kb"][-1] > d.series["rss_kb"][-1]


def test_bad_params():
    with pytest.raises(WorkloadError, match="classes"):
        Allocator(classes="3,x")
    with pytest.raises(WorkloadError, match="dividing arena_size"):
        Allocator(classes="3", arena_size="16M")
    with pytest.raises(WorkloadError, match="live_fraction"):
        Allocator(live_fraction=1.5)
    with pytest.raises(WorkloadError, match="one of"):
        Allocator(release="munmap")
