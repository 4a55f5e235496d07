"""Properties of the collapse policies over random PMD patterns (kernel-model.md §4).

* v11's depth-first walk and 7.2's linear walk attempt the same ranges, in the
  same order, whenever their thresholds and result classes coincide
  (max_ptes_none 0, no swap entry when the PMD order is enabled, no shared mTHP).
* No collapse ever loses or changes content.
* Repeated scans reach a fixpoint.
* The creep the v11 cap prevents (E14) appears when the cap is removed.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thpsim.explain import build_pmd, explain
from thpsim.mm.policies import v11 as v11_mod

SIZES = {2: "16K", 3: "32K", 4: "64K", 5: "128K", 6: "256K", 7: "512K", 8: "1M", 9: "2M"}


@st.composite
def patterns(draw, allow_swap: bool):
    """A 512-PTE pattern made of 16-PTE blocks: sparse/dense order-0, zero, shared,
    swap, or one existing 64K/16K folio."""
    kinds = ["empty", "dense", "sparse", "zero", "shared", "mthp4", "mthp2"]
    if allow_swap:
        kinds.append("swap")
    out = []
    for _ in range(32):
        k = draw(st.sampled_from(kinds))
        if k == "empty":
            out.append("." * 16)
        elif k == "dense":
            out.append("0" * 16)
        elif k == "sparse":
            bits = draw(st.lists(st.booleans(), min_size=16, max_size=16))
            out.append("".join("0" if b else "." for b in bits))
        elif k == "zero":
            out.append("z" * 8 + "0" * 8)
        elif k == "shared":
            i = draw(st.integers(0, 15))
            out.append("0" * i + "S" + "0" * (15 - i))
        elif k == "mthp4":
            out.append("4" * 16)
        elif k == "mthp2":
            out.append("2" * 4 + "0" * 12)
        else:
            i = draw(st.integers(0, 15))
            out.append("0" * i + "s" + "0" * (15 - i))
    return "".join(out)


@st.composite
def pattern_and_orders(draw):
    orders = draw(st.sets(st.integers(2, 9), min_size=1))
    return draw(patterns(allow_swap=9 not in orders)), sorted(orders)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pattern_and_orders(), st.booleans())
def test_v11_and_72_walks_attempt_the_same_ranges(case, lru_batch):
    pattern, orders = case
    enabled = ",".join(SIZES[o] for o in orders)
    knobs = {"khugepaged/max_ptes_none": "0"}
    runs = {pol: explain(pattern, policy=pol, enabled=enabled, knobs=knobs, scans=2,
                         lru_batch=lru_batch)
            for pol in ("v11", "linux-7.2")}
    for a, b in zip(runs["v11"]["scans"], runs["linux-7.2"]["scans"], strict=True):
        assert [(x["order"], x["offset"], x["result"]) for x in a["attempts"]] == \
               [(x["order"], x["offset"], x["result"]) for x in b["attempts"]]
        assert a["picture"] == b["picture"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(patterns(allow_swap=True), st.sampled_from(["legacy", "v11", "linux-7.2"]),
       st.sampled_from(["0", "255", "511"]), st.booleans())
def test_collapse_never_loses_content_and_reaches_a_fixpoint(pattern, policy, mpn, pmd_on):
    enabled = [2, 3, 4, 5, 6, 7, 8] + ([9] if pmd_on else [])
    setup = build_pmd(pattern, policy, enabled, {"khugepaged/max_ptes_none": mpn})
    sys, p, a = setup.sys, setup.proc, setup.addr
    before = p.peek(a, 2 << 20)
    pictures = []
    for _ in range(6):
        sys.khugepaged.run(full_scans=1)
        sys.check()
        assert np.array_equal(p.peek(a, 2 << 20), before)
        pictures.append(p.layout(a).pmds[0].picture)
    # a fixpoint: the last three scans change nothing
    assert pictures[-1] == pictures[-2] == pictures[-3]


class _UncappedV11(v11_mod.V11Policy):
    """v11 without the patch-6 cap: raw scaling ``max_ptes_none >> (9 - order)``."""

    name = "v11"

    def collapse_max_ptes_none(self, sys, order):
        return sys.settings.max_ptes_none >> (sys.geometry.pmd_order - order)


def _e14_orders(policy_obj=None) -> list[str]:
    setup = build_pmd("0*33 .*479", "v11", [2, 3, 4, 5, 6, 7, 8, 9],
                      {"khugepaged/max_ptes_none": "384"}, lru_batch=False)
    kh = setup.sys.khugepaged
    if policy_obj is not None:
        kh._policy = policy_obj
    out = []
    for _ in range(3):
        kh.run(full_scans=1)
        out.append(setup.proc.layout(setup.addr).pmds[0].summary())
    return out


def test_creep_cap_keeps_e14_stable():
    """E14, v11: scan 1 makes a 256K folio at 0; later scans do not promote it."""
    assert _e14_orders() == ["0-63:o6"] * 3


def test_creep_without_the_cap():
    """E14, raw scaling: scan 1 collapses o7@0 (128 present), scan 2 the whole PMD."""
    assert _e14_orders(_UncappedV11()) == ["0-127:o7", "0-511:o9", "0-511:o9"]
