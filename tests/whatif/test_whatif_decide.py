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
@given(bits=st.lists(st.booleans(), min_size=32, max_size=32))
def test_block_word_tricks(bits):
    m = np.array(bits, dtype=bool).reshape(2, 16)
    blocks = m.reshape(2, 4, 4)
    assert (decide._count4(m) == blocks.sum(axis=2)).all()
    want = np.where(blocks.any(axis=2), blocks.argmax(axis=2), 4)
    assert (decide._first4(m) == want).all()
