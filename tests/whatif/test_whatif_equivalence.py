"""Property tests: the vectorised engine equals the full model on random snapshots."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings

from thpsim.whatif.load import load_snapshot_into_model
from thpsim.whatif.run import Combo, first_scan, whatif

from .whatif_gen import combos, mthp_combos, shared_snapshots, snapshots

SETTINGS = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class _Log(list):
    """Attempts, each with the index of the PMD scan it belongs to (recorded before
    that scan's entry while batching is off)."""

    def __init__(self, kh):
        super().__init__()
        self.kh = kh

    def append(self, a):
        super().append((len(self.kh.scans), a))


def _model_first_scan(snap, policy, overrides):
    """Per PMD window: (result, attempts) of one full model scan, PMD by PMD."""
    sys, _ = load_snapshot_into_model(snap, policy, overrides)
    kh = sys.khugepaged
    kh.batch = False
    kh.attempts = _Log(kh)
    if not kh.mm_slots or not kh.hugepage_enabled():
        return None
    start = kh.full_scans
    kh.run(full_scans=1)
    assert kh.full_scans >= start + 1
    out: dict[int, tuple[str, list]] = {}
    for i, (vpn, result, _) in enumerate(kh.scans):
        if vpn in out:
            break  # the pass went on into the next full scan
        out[vpn] = (result, [(a.order, a.offset, a.result) for j, a in kh.attempts if j == i])
    return out


@SETTINGS
@given(snap=snapshots, combo=combos())
def test_first_scan_decision_equals_model(snap, combo):
    policy, overrides = combo
    model = _model_first_scan(snap, policy, overrides)
    mine = first_scan(snap, Combo.of(policy, overrides))
    if model is None:
        return  # khugepaged idles: nothing was scanned
    assert set(model) == set(mine)
    for vpn, (result, attempts) in model.items():
        r, a, cplx = mine[vpn]
        if cplx:
            continue
        assert (r, a) == (result, attempts), f"window {vpn:#x}"


@SETTINGS
@given(snap=snapshots, combo=combos())
def test_whatif_equals_model_to_fixpoint(snap, combo):
    policy, overrides = combo
    c = Combo.of(policy, overrides)
    fast = whatif(snap, [c])[0].to_dict()
    slow = whatif(snap, [c], engine="model")[0].to_dict()
    assert slow["engine"] == "model"
    fast.pop("engine")
    slow.pop("engine")
    assert fast == slow


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(snap=snapshots, combo=combos())
def test_whatif_fixed_scans_equals_model(snap, combo):
    policy, overrides = combo
    c = Combo.of(policy, overrides)
    fast = whatif(snap, [c], scans=2)[0].to_dict()
    slow = whatif(snap, [c], scans=2, engine="model")[0].to_dict()
    fast.pop("engine")
    slow.pop("engine")
    assert fast == slow


@SETTINGS
@given(snap=shared_snapshots, combo=mthp_combos())
def test_shared_mthp_snapshots_equal_model(snap, combo):
    """Many shared pages and mTHP walks: windows run by the sub-model (LRU batch)."""
    policy, overrides = combo
    c = Combo.of(policy, overrides)
    fast = whatif(snap, [c])[0].to_dict()
    slow = whatif(snap, [c], engine="model")[0].to_dict()
    assert fast.pop("engine") in ("vectorised", "vectorised+model")
    slow.pop("engine")
    assert fast == slow


def test_captured_examples_equal_model():
    """The snapshots captured from real processes (examples/snapshots)."""
    import glob
    import os

    from thpsim.snapshot import io

    here = os.path.dirname(__file__)
    files = sorted(glob.glob(os.path.join(here, "..", "..", "examples", "snapshots",
                                          "*.thpsnap")))
    assert len(files) >= 6, "the shipped example snapshots are missing"
    c = Combo.of("linux-7.2", {"hugepages-64kB/enabled": "always",
                               "khugepaged/max_ptes_none": "0"})
    for f in files:
        snap = io.load_snapshot(f)
        fast = whatif(snap, [c])[0].to_dict()
        slow = whatif(snap, [c], engine="model")[0].to_dict()
        fast.pop("engine")
        slow.pop("engine")
        assert fast == slow, f
