"""The dense heap: khugepaged collapses it without bloat; TLB entries drop."""

from __future__ import annotations

import functools

import pytest

from thpsim.sim import simulate
from thpsim.workloads import WorkloadError
from thpsim.workloads.dense import DenseHeap

SIZE_MB = 16
PARAMS = {"size": f"{SIZE_MB}M", "grow_s": 10}


@functools.cache
def _run(none: str, advice: str = "none", policy: str = "linux-7.2"):
    return simulate("dense", params={**PARAMS, "advice": advice}, policy=policy,
                    settings={"khugepaged/max_ptes_none": none}, duration_s=200, seed=5)


@pytest.mark.parametrize("policy", ["legacy", "v11", "linux-7.2"])
@pytest.mark.parametrize("none", ["511", "0"])
def test_dense_heap_is_collapsed_without_bloat(policy, none):
    r = _run(none, policy=policy)
    s = r.summary
    # every page is written: nothing to fill, whatever max_ptes_none says
    assert s["bloat_kb"] == 0
    assert s["rss_kb"] == SIZE_MB * 1024
    # the heap grew by brk: no fault could map a PMD folio ...
    assert s["thp_fault_alloc"] == 0
    # ... and khugepaged mapped all 8 PMDs huge: one TLB entry per 2 MiB
    assert s["pmd_mapped_kb"] == SIZE_MB * 1024
    assert s["folio_kb_2048"] == SIZE_MB * 1024
    assert s["tlb_x86-64"] == SIZE_MB // 2
    assert s["khugepaged_copies"] == SIZE_MB * 256


def test_nohugepage_heap_stays_order0():
    r = _run("511", advice="nohugepage")
    assert r.summary["tlb_x86-64"] == SIZE_MB * 256
    assert r.summary["khugepaged_successes"] == 0


def test_bad_params():
    with pytest.raises(WorkloadError, match="write_fraction"):
        DenseHeap(write_fraction=2)
    with pytest.raises(WorkloadError, match="multiple"):
        DenseHeap(size="1M", brk_step="300K")
