"""TLB-entry models: hand-worked cases and a page-by-page reference (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thpsim.metrics import tlb_entries


def _pages(vpns, pfn0=4096, folio=None, pmd=False):
    v = np.asarray(vpns, dtype=np.int64)
    p = v - v.min() + pfn0 if v.size else v
    f = np.full(v.size, pfn0 if folio is None else folio, dtype=np.int64)
    return v, p, f, np.full(v.size, pmd, dtype=bool)


def test_empty():
    z = np.zeros(0, np.int64)
    for m in ("x86-64", "amd", "arm64"):
        assert tlb_entries(z, z, z, np.zeros(0, bool), m) == 0


def test_one_aligned_64k_folio():
    args = _pages(range(16))
    assert tlb_entries(*args, "x86-64") == 16
    assert tlb_entries(*args, "amd") == 4
    assert tlb_entries(*args, "arm64") == 1


def test_arm64_needs_the_whole_block():
    # 15 of 16 pages: no contpte, one entry per PTE; AMD still coalesces per 4-block
    args = _pages(range(15))
    assert tlb_entries(*args, "arm64") == 15
    assert tlb_entries(*args, "amd") == 4


def test_misaligned_physical_block_does_not_coalesce():
    v = np.arange(16, dtype=np.int64)
    p = v + 4097  # physical block not aligned like the virtual one
    f = np.full(16, 4096, np.int64)
    m = np.zeros(16, bool)
    assert tlb_entries(v, p, f, m, "amd") == 16
    assert tlb_entries(v, p, f, m, "arm64") == 16


def test_different_folios_do_not_share():
    v = np.arange(4, dtype=np.int64)
    p = v + 4096
    f = np.array([1, 1, 2, 2], np.int64)
    assert tlb_entries(v, p, f, np.zeros(4, bool), "amd") == 2


def test_pmd_mapping_is_one_entry_per_pmd():
    v = np.arange(1024, dtype=np.int64)
    args = (v, v + 8192, v // 512, np.ones(1024, bool))
    for m in ("x86-64", "amd", "arm64"):
        assert tlb_entries(*args, m) == 2


def test_unknown_model():
    z = np.zeros(0, np.int64)
    with pytest.raises(ValueError, match="unknown TLB model"):
        tlb_entries(z, z, z, np.zeros(0, bool), "sparc")


def _reference(vpn, pfn, folio, pmd, block, whole, pmd_nr=512):
    """Page by page: group PTE pages by (virtual block, folio, pfn - vpn), aligned only."""
    entries = len({v // pmd_nr for v, m in zip(vpn, pmd, strict=True) if m})
    groups: dict[tuple, int] = {}
    for v, p, f, m in zip(vpn, pfn, folio, pmd, strict=True):
        if m:
            continue
        if block == 1 or (p - v) % block:
            entries += 1
            continue
        key = (v // block, f, p - v)
        groups[key] = groups.get(key, 0) + 1
    for n in groups.values():
        entries += (1 if n == block else n) if whole else 1
    return entries


@st.composite
def layouts(draw):
    """A few folios (aligned or not, whole or partly mapped) in a 1024-page window."""
    vpn, pfn, folio, pmd = [], [], [], []
    used = set()
    for k in range(draw(st.integers(0, 12))):
        order = draw(st.sampled_from([0, 2, 4, 9]))
        n = 1 << order
        v0 = draw(st.integers(0, 1024 - n))
        if draw(st.booleans()):
            v0 = v0 // n * n
        p0 = (k + 1) * 4096 + draw(st.sampled_from([0, 0, 1, 3]))
        as_pmd = order == 9 and v0 % 512 == 0 and p0 % 512 == 0 and draw(st.booleans())
        keep = draw(st.lists(st.booleans(), min_size=n, max_size=n)) if not as_pmd else [True] * n
        for i in range(n):
            if keep[i] and v0 + i not in used:
                used.add(v0 + i)
                vpn.append(v0 + i)
                pfn.append(p0 + i)
                folio.append(k)
                pmd.append(as_pmd)
    return (np.array(vpn, np.int64), np.array(pfn, np.int64), np.array(folio, np.int64),
            np.array(pmd, bool))


@settings(max_examples=200, deadline=None)
@given(layouts())
def test_matches_reference(lay):
    for model, block, whole in (("x86-64", 1, False), ("amd", 4, False), ("arm64", 16, True)):
        assert tlb_entries(*lay, model) == _reference(*(a.tolist() for a in lay), block, whole)
