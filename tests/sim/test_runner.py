"""The simulation runner: one clock for events and khugepaged, sampling, determinism."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import pytest

from thpsim.sim import simulate
from thpsim.workloads.base import Event, Madvise, Mmap, Param, Touch, Workload, WorkloadError


class _Late(Workload):
    """4 MiB written as order-0 pages (NOHUGEPAGE), made eligible at ``t_huge``."""

    name = "late"
    summary = models = source = "test"
    PARAMS: ClassVar[dict[str, Param]] = {}

    def __init__(self, t_huge: float = 50.0) -> None:
        super().__init__()
        self.t_huge = t_huge

    def events(self, rng: np.random.Generator) -> Iterator[Event]:
        yield Mmap(t=0.0, region="r", length=4 << 20, advice="nohugepage")
        yield Touch(t=0.0, region="r")
        yield Madvise(t=self.t_huge, region="r", advice="hugepage")


def test_khugepaged_runs_on_the_event_clock():
    r = simulate(_Late(50.0), policy="legacy", duration_s=100, sample_s=5)
    t, pmd = r.series["t_s"], r.series["pmd_mapped_kb"]
    # nothing is eligible before 50 s; the first pass after the madvise (khugepaged
    # wakes on registration) collapses both PMDs before the sample at 55 s
    assert np.all(pmd[t <= 50] == 0)
    assert np.all(pmd[t >= 55] == 4096)
    assert r.summary["khugepaged_successes"] == 2
    # then it scans every 10 s (scan_sleep_millisecs default): about 5 full scans
    assert 4 <= r.summary["full_scans"] <= 6


def test_clock_and_sampling():
    r = simulate("dense", params={"size": "4M"}, duration_s=100, sample_s=7)
    t = r.series["t_s"]
    assert np.all(np.diff(t) > 0)
    assert t[0] == 0 and t[-1] == 100
    # every multiple of 7 s, and the end
    assert t.tolist() == [7.0 * i for i in range(15)] + [100.0]
    lengths = {len(v) for v in r.series.values()}
    assert lengths == {t.size}
    for col in ("khugepaged_pages_scanned", "khugepaged_cpu_ms", "full_scans",
                "thp_collapse_alloc"):
        assert np.all(np.diff(r.series[col]) >= 0), col
    assert r.summary["rss_kb"] == r.series["rss_kb"][-1]


def test_default_sampling_is_duration_over_120():
    r = simulate("dense", params={"size": "4M"}, duration_s=60)
    assert r.series["t_s"].size == 121


def test_columns_of_the_contract():
    r = simulate("dense", params={"size": "4M"}, duration_s=20)
    need = ["t_s", "rss_kb", "bloat_kb", "pmd_mapped_kb", "anon_kb", "tlb_x86-64", "tlb_amd",
            "tlb_arm64", "folio_kb_4", "folio_kb_16", "folio_kb_2048",
            "khugepaged_pages_scanned", "khugepaged_attempts", "khugepaged_successes",
            "khugepaged_copies", "khugepaged_cpu_ms", "full_scans", "thp_fault_alloc",
            "stats_2048kB_nr_anon", "stats_64kB_anon_fault_alloc"]
    for c in need:
        assert c in r.series, c
    for k in ("events", "touches", "wall_s", "events_per_s"):
        assert k in r.summary
    assert set(r.layouts) >= {"before", "after"}
    lay = r.layouts["after"]
    assert lay["order"].shape == (lay["vpn0"].size, 512) and lay["order"].dtype == np.int8
    assert lay["pmd_mapped"].dtype == bool


@pytest.mark.parametrize("name", ["allocator", "sparse"])
def test_determinism_by_seed(name):
    small = {"allocator": {"classes": "4", "arena_size": "8M"}, "sparse": {"size": "16M"}}
    kw = {"duration_s": 60, "policy": "linux-7.2", "sample_s": 5, "params": small[name]}
    a, b = simulate(name, seed=7, **kw), simulate(name, seed=7, **kw)
    c = simulate(name, seed=8, **kw)
    for col in a.series:
        assert np.array_equal(a.series[col], b.series[col]), col
    assert not all(np.array_equal(a.series[col], c.series[col]) for col in a.series)


def test_settings_and_errors():
    r = simulate("dense", params={"size": "4M"}, settings={"enabled": "never"}, duration_s=10)
    assert r.settings == {"enabled": "never"}
    assert r.summary["pmd_mapped_kb"] == 0
    with pytest.raises(OSError):
        simulate("dense", settings={"khugepaged/max_ptes_none": "512"}, duration_s=10)
    with pytest.raises(WorkloadError, match="unknown workload"):
        simulate("nope")
    with pytest.raises(WorkloadError, match="duration"):
        simulate("dense", duration_s=0)


def test_progress_reaches_one():
    seen: list[float] = []
    simulate("dense", params={"size": "4M"}, duration_s=30, progress=seen.append)
    assert seen and seen[-1] == 1.0 and seen == sorted(seen)


class _Backwards(Workload):
    name = "backwards"
    summary = models = source = "test"
    PARAMS: ClassVar[dict[str, Param]] = {}

    def events(self, rng: np.random.Generator) -> Iterator[Event]:
        yield Mmap(t=5.0, region="r", length=4096)
        yield Touch(t=1.0, region="r")


def test_events_out_of_order_are_an_error():
    with pytest.raises(WorkloadError, match=r"Touch at t=1\.0 comes after t=5\.0"):
        simulate(_Backwards(), duration_s=10)


def test_unknown_region_is_an_error():
    class Bad(_Backwards):
        def events(self, rng):
            yield Touch(t=0.0, region="nowhere")

    with pytest.raises(WorkloadError, match="unknown region 'nowhere'"):
        simulate(Bad(), duration_s=10)
