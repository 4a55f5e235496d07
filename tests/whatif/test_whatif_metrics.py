"""The fast TLB/histogram metrics against :func:`thpsim.metrics.tlb.tlb_entries`."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from thpsim.metrics.tlb import tlb_entries
from thpsim.whatif.layout import K_HUGE, K_NONE, K_PRESENT, K_ZERO
from thpsim.whatif.metrics import layout_metrics


def _layout(seed: int):
    """One VMA of 2 PMDs: random folios of orders 0-5 (aligned), holes, zero pages,
    and sometimes a PMD mapping."""
    rng = np.random.default_rng(seed)
    n = 1024
    kind = np.zeros(n, np.uint8)
    order = np.full(n, -1, np.int8)
    fkey = np.full(n, -1, np.int64)
    i = 0
    while i < n:
        o = int(rng.choice([0, 0, 1, 2, 3, 4, 5]))
        size = 1 << o
        if i % size:
            o, size = 0, 1
        r = rng.random()
        if r < 0.2:
            i += size
            continue
        if r < 0.3:
            kind[i] = K_ZERO
            i += 1
            continue
        mapped = rng.random(size) < (0.7 if rng.random() < 0.5 else 1.0)
        kind[i : i + size][mapped] = K_PRESENT
        order[i : i + size][mapped] = o
        fkey[i : i + size][mapped] = 10_000 + i
        i += size
    if rng.random() < 0.5:
        kind[512:] = K_HUGE
        order[512:] = 9
        fkey[512:] = 99
    return kind, order, fkey


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), vpn0=st.sampled_from([512, 1024 * 7]))
def test_tlb_counts_match_reference(seed, vpn0):
    kind, order, fkey = _layout(seed)
    lm = layout_metrics([(vpn0, kind, order)], 9, 512)
    mapped = kind != K_NONE
    vpn = vpn0 + np.flatnonzero(mapped)
    k = kind[mapped]
    # reference inputs: a folio's pages physically contiguous from an aligned head
    # (pfn = vpn), every zero-page mapping its own "folio"
    folio = np.where(k == K_ZERO, -vpn, fkey[mapped])
    for model in ("x86-64", "amd", "arm64"):
        want = tlb_entries(vpn, vpn, folio, k == K_HUGE, model)
        assert lm.tlb[model] == want, model


def test_histogram_by_hand():
    kind = np.zeros(512, np.uint8)
    order = np.full(512, -1, np.int8)
    fkey = np.full(512, -1, np.int64)
    kind[:16] = K_PRESENT
    order[:16] = 4
    fkey[:16] = 0
    kind[16:18] = K_PRESENT
    order[16:18] = 0
    fkey[16:18] = [16, 17]
    kind[18] = K_ZERO
    lm = layout_metrics([(0, kind, order)], 9, 512)
    assert lm.rss_anon == 18 and lm.zero == 1
    assert lm.folios[4] == 1 and lm.pages[4] == 16 and lm.folios[0] == 2
    # x86: 19 PTEs; AMD: 4 blocks of the 64K folio + 2 + 1; arm64: one contpte + 3
    assert lm.tlb == {"x86-64": 19, "amd": 7, "arm64": 4}
