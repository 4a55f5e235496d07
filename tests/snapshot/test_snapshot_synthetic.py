"""Synthetic snapshots: the requested mix, natural alignment, clustering, the grammar."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thpsim.snapshot.core import HUGE_ZERO, NONE, PRESENT, SWAP, ZERO, Snapshot
from thpsim.snapshot.synthetic import parse_spec, synthetic_snapshot

PAGE = 4096
PMD_NR = 512


def check_folios(snap: Snapshot) -> None:
    """Independent check: every present page lies in a whole, naturally aligned folio
    whose pages all carry the same order, shared-ness and consecutive indexes."""
    vpn = snap.vpns()
    pres = snap.state == PRESENT
    heads = np.flatnonzero(pres & (snap.folio_index == 0))
    covered = np.zeros(snap.nr_pages, bool)
    for o in np.unique(snap.order[heads]).tolist():
        h = heads[snap.order[heads] == o]
        nr = 1 << o
        assert (vpn[h] % nr == 0).all(), f"order-{o} folio not aligned"
        idx = h[:, None] + np.arange(nr)
        assert (idx < snap.nr_pages).all()
        assert (vpn[idx] == vpn[h][:, None] + np.arange(nr)).all()  # inside one VMA
        assert (snap.state[idx] == PRESENT).all()
        assert (snap.order[idx] == o).all()
        assert (snap.folio_index[idx] == np.arange(nr)).all()
        for col in ("mapcount", "exclusive", "pmd_mapped"):
            a = getattr(snap, col)[idx]
            assert (a == a[:, :1]).all(), col
        covered[idx] = True
    assert (covered == pres).all(), "present pages outside any whole folio"
    assert not snap.pmd_mapped[pres & (snap.order != 9)].any()


def test_requested_mix_is_honoured():
    spec = ("heap:4G,present=0.6,zero=0.05,swap=0.02,shared=0.1,"
            "folios=4k:0.5/64k:0.3/2m:0.2,seed=1")
    s = synthetic_snapshot(spec)
    s.validate()
    n = 4 << 30 >> 12
    assert s.nr_pages == n
    assert len(s.vmas) == 1 and s.vmas[0].name == "[heap]"
    frac = np.bincount(s.state, minlength=6) / n
    assert frac[PRESENT] == pytest.approx(0.6, abs=0.01)
    assert frac[ZERO] == pytest.approx(0.05, abs=0.005)
    assert frac[SWAP] == pytest.approx(0.02, abs=0.003)
    assert frac[HUGE_ZERO] == 0
    pres = s.state == PRESENT
    share = {o: (s.order[pres] == o).mean() for o in (0, 4, 9)}
    assert share[0] == pytest.approx(0.5, abs=0.02)
    assert share[4] == pytest.approx(0.3, abs=0.02)
    assert share[9] == pytest.approx(0.2, abs=0.02)
    assert set(np.unique(s.order[pres]).tolist()) == {0, 4, 9}
    # pmd=1 (default): every 2M folio is PMD-mapped
    assert (s.pmd_mapped == (pres & (s.order == 9))).all()
    # shared folios: mapcount 2 and not exclusive; 10% of folios
    heads = pres & (s.folio_index == 0)
    assert ((s.mapcount[pres] == 2) == ~s.exclusive[pres]).all()
    assert set(np.unique(s.mapcount[pres]).tolist()) == {1, 2}
    assert (~s.exclusive[heads]).mean() == pytest.approx(0.1, abs=0.01)
    # non-present pages carry the "nothing" values
    assert (s.order[~pres] == -1).all() and (s.mapcount[~pres] == 0).all()
    assert not s.exclusive[~pres].any()
    check_folios(s)
    assert s.settings["hugepages-64kB/enabled"] == "always"
    assert s.meta["synthetic"] == spec and s.meta["seed"] == "1"


def test_pmd_fraction_huge_zero_and_flags():
    s = synthetic_snapshot("anon:1G,present=0.5,huge_zero=0.1,pmd=0.5,folios=2m:1,"
                           "flags=hg,cluster=5")
    s.validate()
    check_folios(s)
    blocks = s.state.reshape(-1, PMD_NR)
    hz = (blocks == HUGE_ZERO).all(1)
    assert hz.sum() == round(0.1 * 512)  # whole blocks, the requested number
    assert ((blocks == HUGE_ZERO).any(1) == hz).all()
    assert s.pmd_mapped.reshape(-1, PMD_NR)[hz].all()
    folios = (blocks[:, 0] == PRESENT)
    assert folios.sum() == round(0.5 * 512)
    pmd = s.pmd_mapped.reshape(-1, PMD_NR)[folios, 0]
    assert 0.35 < pmd.mean() < 0.65  # binomial(256, 0.5)
    assert s.vmas[0].hg and s.vmas[0].name == ""


def test_clustering_follows_cluster():
    """Small ``cluster`` = per-PMD occupancy spread out (Beta variance m(1-m)/(c+1))."""
    def block_var(c: float) -> float:
        s = synthetic_snapshot(f"heap:2G,present=0.4,cluster={c}")
        return float((s.state.reshape(-1, PMD_NR) == PRESENT).mean(1).var())

    lo, hi = block_var(100.0), block_var(0.2)
    # Beta: 0.24/101 ~ 0.0024 vs 0.24/1.2 = 0.2 (plus binomial noise 0.24/512)
    assert lo < 0.01 < 0.1 < hi


def test_unaligned_vma_and_several_regions():
    s = synthetic_snapshot("anon:10M,at=0x7f0000123000,present=0.7,folios=4k:1/16k:1/64k:1;"
                           "heap:3M,present=0.2;stack:132k,present=0.5,zero=0.5")
    s.validate()
    assert (s.vmas[0].start, s.vmas[0].end) == (0x7F0000123000, 0x7F0000123000 + (10 << 20))
    assert [v.name for v in s.vmas] == ["", "[heap]", "[stack]"]
    assert s.vmas[1].start >= s.vmas[0].end and s.vmas[2].start >= s.vmas[1].end
    check_folios(s)
    off = s.vma_offsets()
    stack = s.state[off[2]:off[3]]
    assert (stack != NONE).all()  # present + zero = 1


def test_seed():
    a = synthetic_snapshot("heap:64M,present=0.5,seed=3")
    b = synthetic_snapshot("heap:64M,present=0.5,seed=3")
    c = synthetic_snapshot("heap:64M,present=0.5,seed=3", seed=4)
    assert np.array_equal(a.state, b.state)
    assert not np.array_equal(a.state, c.state)
    assert c.meta["seed"] == "4"


@settings(max_examples=40, deadline=None)
@given(present=st.floats(0, 1), zero=st.floats(0, 1), swap=st.floats(0, 1),
       weights=st.lists(st.integers(0, 3), min_size=10, max_size=10).filter(any),
       pages=st.integers(1, 3000), at=st.integers(0, 2000), cluster=st.floats(0.05, 50),
       seed=st.integers(0, 1000))
def test_random_specs(present, zero, swap, weights, pages, at, cluster, seed):
    scale = max(1.0, present + zero + swap)
    # rounded down to the 3 decimals of the spec, so that the sum stays <= 1
    present, zero, swap = (np.floor(x / scale * 1000) / 1000 for x in (present, zero, swap))
    sizes = [f"{4 << o}k:{w}" for o, w in enumerate(weights) if w]
    spec = (f"anon:{pages * 4}k,at={(0x7F00000 + at) * PAGE:#x},present={present:.3f},"
            f"zero={zero:.3f},swap={swap:.3f},cluster={cluster:.3f},folios={'/'.join(sizes)}")
    s = synthetic_snapshot(spec, seed=seed)
    s.validate()
    assert s.nr_pages == pages
    check_folios(s)
    frac = np.bincount(s.state, minlength=6) / pages
    # never more than requested (beyond sampling noise), never a huge zero page
    tol = 4 / np.sqrt(pages) + 0.02
    assert frac[ZERO] <= zero + tol and frac[SWAP] <= swap + tol
    assert frac[HUGE_ZERO] == 0


@pytest.mark.parametrize(("spec", "match"), [
    ("", "empty"),
    ("heap", "KIND:SIZE"),
    ("disk:1G", "KIND:SIZE"),
    ("heap:1Q", "not a size"),
    ("heap:6000", "multiple of 4k"),
    ("heap:1G,present=1.5", "not a fraction"),
    ("heap:1G,present=0.7,zero=0.5", "more than 1"),
    ("heap:1G,folios=3k:1", "power of two"),
    ("heap:1G,folios=4m:1", "power of two"),
    ("heap:1G,folios=4k", "SIZE:WEIGHT"),
    ("heap:1G,folios=4k:0", "add up to 0"),
    ("heap:1G,colour=red", "unknown option"),
    ("heap:1G,present", "key=value"),
    ("heap:1G,flags=hugepage", "two-letter"),
    ("heap:1G,at=0x1001", "4k aligned"),
    ("heap:1G,cluster=0", "cluster must be > 0"),
    ("heap:1G,seed=x", "not an integer"),
    ("heap:1G;heap:1G,at=0x1000", "overlaps"),
])
def test_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match) as ei:
        if match == "overlaps":
            synthetic_snapshot(spec)
        else:
            parse_spec(spec)
    assert "\n" not in str(ei.value)
