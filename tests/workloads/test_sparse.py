"""The growing sparse table: PMDs with one page each become 2 MiB under 511."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from thpsim.sim import simulate
from thpsim.workloads import WorkloadError
from thpsim.workloads.base import Touch
from thpsim.workloads.sparse import SparseTable

PARAMS = {"size": "32M", "grow_step": "256K", "grow_s": 0.5, "inserts_per_s": 20}
FAST = {"khugepaged/scan_sleep_millisecs": "1000", "khugepaged/pages_to_scan": "65536"}
DURATION = 120


@functools.cache
def _run(none: str, enabled: str = "always"):
    return simulate("sparse", params=PARAMS, policy="legacy",
                    settings={**FAST, "khugepaged/max_ptes_none": none, "enabled": enabled},
                    duration_s=DURATION, seed=4)


def _touched_pages() -> int:
    """Distinct pages the event stream writes within the run (counted from the events)."""
    seen: set[int] = set()
    for ev in SparseTable(**PARAMS).events(np.random.default_rng(4)):
        if ev.t > DURATION:
            break
        if isinstance(ev, Touch):
            seen.update(ev.pages.tolist())
    return len(seen)


def test_without_thp_rss_is_the_touched_pages():
    r = _run("511", enabled="never")
    assert r.summary["rss_kb"] == 4 * _touched_pages()
    assert r.summary["bloat_kb"] == 0


def test_511_collapses_sparse_pmds_0_does_not():
    full, none0 = _run("511"), _run("0")
    touched_kb = 4 * _touched_pages()
    assert none0.summary["bloat_kb"] == 0
    assert full.summary["bloat_kb"] > 0
    # 0 leaves the sparse order-0 PMDs as they are; 511 fills them
    assert full.summary["rss_kb"] > 2 * none0.summary["rss_kb"]
    assert none0.summary["rss_kb"] >= touched_kb
    # every filled page is resident: RSS = touched pages (order 0 or faulted into
    # THPs) + pages filled, bounded by the table's size
    assert full.summary["rss_kb"] <= 32 * 1024


def test_edge_pmds_fault_order0():
    # the growing edge faults order 0 even with THP always: without khugepaged
    # (max_ptes_none 0 never collapses sparse PMDs) most table memory is order 0
    r = _run("0")
    assert r.summary["folio_kb_4"] > r.summary["folio_kb_2048"]


def test_bad_params():
    with pytest.raises(WorkloadError, match="multiple"):
        SparseTable(size="10M", grow_step="3M")
    with pytest.raises(WorkloadError, match="inserts_per_s"):
        SparseTable(inserts_per_s=-1)
