"""Metric sampling against independent counts on small hand-built states."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thpsim.metrics.tlb import tlb_entries
from thpsim.mm.pgtable import PTE_PRESENT
from thpsim.sim.metrics import CPU_MODEL, Sampler, collapse_cpu_us, layout_window, mapped_pages
from thpsim.system import System

PMD = 2 << 20


def _tlb_direct(sys: System, model: str) -> int:
    """TLB entries of every mapped page of every process, by tlb_entries on all pages."""
    total = 0
    for p in sys.processes.values():
        m = mapped_pages(sys, p.mm)
        keep = m["kind"] != 3  # swap entries are not mapped
        pres = m["kind"] == PTE_PRESENT
        folio = np.where(pres, 0, -1 - m["vpn"])
        folio[pres] = sys.folios.heads_of(m["pfn"][pres])
        total += tlb_entries(m["vpn"][keep], m["pfn"][keep], folio[keep],
                             m["pmd_mapped"][keep], model)
    return total


@settings(max_examples=25, deadline=None)
@given(writes=st.lists(st.integers(0, 1023), max_size=60),
       reads=st.lists(st.integers(0, 1023), max_size=20),
       mthp=st.sampled_from(["never", "always"]), fork=st.booleans())
def test_tlb_columns_equal_tlb_entries_on_all_pages(writes, reads, mthp, fork):
    sys = System(memory="256M", policy="linux-7.2")
    sys.settings.write("hugepages-64kB/enabled", mthp)
    p = sys.spawn()
    a = p.mmap(2 * PMD + 4 * PMD)
    p.touch(a, pages=np.array(reads, dtype=np.int64), write=False) if reads else None
    p.touch(a, pages=np.array(writes, dtype=np.int64)) if writes else None
    p.touch(a + 4 * PMD, 2 * PMD)  # two whole PMDs: PMD-mapped
    if fork:
        c = p.fork()
        c.touch(a, pages=np.array(writes[:5], dtype=np.int64)) if writes else None
    row = Sampler(sys).sample()
    for model in ("x86-64", "amd", "arm64"):
        assert row[f"tlb_{model}"] == _tlb_direct(sys, model), model


def test_folio_histogram_and_bloat_by_hand():
    sys = System(memory="256M", policy="legacy")
    p = sys.spawn()
    a = p.mmap(PMD, )
    p.madvise(a, PMD, "nohugepage")
    p.touch(a, pages=np.arange(100))
    s0 = Sampler(sys)
    row = s0.sample()
    assert row["folio_kb_4"] == 400 and row["folio_kb_2048"] == 0
    assert row["anon_kb"] == 400 and row["rss_kb"] == 400
    assert row["tlb_x86-64"] == 100
    p.madvise(a, PMD, "hugepage")
    sys.khugepaged.run(full_scans=2)
    row = s0.sample()
    # the collapse filled the 412 none PTEs and copied the 100 present pages
    assert row["bloat_kb"] == 412 * 4
    assert row["khugepaged_copies"] == 100
    assert row["khugepaged_successes"] == 1 and row["khugepaged_attempts"] == 1
    assert row["folio_kb_2048"] == 2048 and row["folio_kb_4"] == 0
    assert row["pmd_mapped_kb"] == 2048 and row["tlb_x86-64"] == 1
    assert row["zero_filled_kb"] == 412 * 4
    assert row["thp_collapse_alloc"] == 1
    assert row["stats_2048kB_nr_anon"] == 1
    scanned = row["khugepaged_pages_scanned"]
    expect_us = (scanned * 3 / 512 + 512 * 60 / 512 + 100 * (385 - 60) / 511)
    assert row["khugepaged_cpu_ms"] == pytest.approx(expect_us / 1000)


def test_cpu_model_calibration_points():
    # a full PMD collapse (512 copied) ~0.385 ms; one present page ~60 µs (real-kernel.md)
    full = collapse_cpu_us(0, 512, 512, 0)
    one = collapse_cpu_us(0, 512, 1, 0)
    assert 340 <= full <= 430
    assert one == pytest.approx(60.0, abs=1.0)
    assert CPU_MODEL["scan_pte_us"] * 512 == pytest.approx(3.0)


def test_layout_window_codes():
    sys = System(memory="256M", swap="16M", policy="legacy")
    p = sys.spawn()
    a = p.mmap(2 * PMD)
    p.madvise(a, 2 * PMD, "nohugepage")
    p.touch(a, pages=np.array([0, 1]))
    p.touch(a, pages=np.array([5]), write=False)
    p.madvise(a + 4096, 4096, "pageout")
    lay = layout_window(sys, p.mm)
    assert lay["vpn0"].tolist() == [a // 4096, a // 4096 + 512]
    assert lay["order"][0, :6].tolist() == [0, -3, -1, -1, -1, -2]
    assert not lay["pmd_mapped"].any()


@pytest.mark.parametrize("policy, mthp", [("legacy", "never"), ("linux-7.2", "always"),
                                          ("v11", "always")])
def test_pages_filled_same_on_batched_and_per_pmd_paths(policy, mthp):
    """khugepaged.pages_filled counts the same on the vectorised batch install and on
    the per-PMD ``_copy_and_install`` path, and equals the none/zero slots collapsed."""
    filled = []
    for batch in (True, False):
        sys = System(memory="512M", policy=policy)
        sys.settings.write("hugepages-64kB/enabled", mthp)
        if mthp == "always":  # mTHP collapse only (64K blocks with >= 1 present page)
            sys.settings.write("hugepages-2048kB/enabled", "never")
        sys.khugepaged.batch = batch
        p = sys.spawn()
        a = p.mmap(16 * PMD)
        p.madvise(a, 16 * PMD, "nohugepage")
        rng = np.random.default_rng(1)
        p.touch(a, pages=rng.choice(16 * 512, 2000, replace=False))
        before = p.rss_anon
        p.madvise(a, 16 * PMD, "hugepage")
        sys.khugepaged.run(full_scans=3)
        # every filled slot is a new resident page
        assert sys.khugepaged.pages_filled == p.rss_anon - before
        filled.append(sys.khugepaged.pages_filled)
    assert filled[0] == filled[1] > 0
