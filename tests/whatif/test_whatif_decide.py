"""The vectorised decision's own pieces: chunking and the word tricks."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import thpsim.whatif.decide as decide
from thpsim.whatif.run import Combo, first_scan

from .whatif_gen import shared_heavy


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_chunked_decision_is_the_same(seed):
    snap = shared_heavy(seed, 3, 0.2)
    combo = Combo.of("linux-7.2", {"hugepages-16kB/enabled": "always",
                                   "hugepages-64kB/enabled": "always"})
    whole = first_scan(snap, combo)
    old = decide.CHUNK
    decide.CHUNK = 1
    try:
        chunked = first_scan(snap, combo)
    finally:
        decide.CHUNK = old
    assert chunked == whole


@settings(max_examples=200, deadline=None)
@given(bits=st.lists(st.booleans(), min_size=2 * 512, max_size=2 * 512),
       density=st.sampled_from([0.0, 0.05, 0.5, 1.0]), k=st.integers(2, 9))
def test_block_bit_tricks(bits, density, k):
    """Counts and first set pages of every 2**k block from the packed bits equal the
    byte rows' (``density`` thins the drawn bits so that empty words occur)."""
    raw = np.array(bits, dtype=bool).reshape(2, 512)
    if density == 0:
        m = np.zeros_like(raw)
    elif density < 1:
        m = raw & (np.arange(512) % round(1 / density) == 0)
    else:
        m = raw
    n = 1 << k
    blocks = m.reshape(2, -1, n)
    packed = decide._pack(m)
    assert (decide._block_count(packed, k) == blocks.sum(axis=2)).all()
    want = np.where(blocks.any(axis=2), blocks.argmax(axis=2), n)
    assert (decide._block_first(packed, k) == want).all()
