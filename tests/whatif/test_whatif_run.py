"""whatif on hand-built snapshots, expectations derived by hand from the spec."""

from __future__ import annotations

import numpy as np
import pytest

from thpsim.snapshot.core import PRESENT, Snapshot, SnapshotVma
from thpsim.whatif.run import Combo, first_scan, whatif

NR = 512
BASE = 1 << 30


def _snap(present_idx, flags="rd wr mr mw me ac"):
    n = NR
    cols = {c: np.zeros(n, Snapshot.DTYPES[c]) for c in Snapshot.COLUMNS}
    cols["order"][:] = -1
    idx = np.asarray(present_idx)
    cols["state"][idx] = PRESENT
    cols["order"][idx] = 0
    cols["mapcount"][idx] = 1
    cols["exclusive"][idx] = True
    return Snapshot([SnapshotVma(BASE, BASE + n * 4096, flags)], **cols)


@pytest.mark.parametrize("engine", ["auto", "model"])
def test_legacy_collapses_a_sparse_pmd_with_bloat(engine):
    r = whatif(_snap(range(400)), [Combo.of("legacy")], engine=engine)[0]
    assert r.collapses == {9: 1} and r.pmds_touched == 1
    assert r.copies == 400 and r.bloat_pages == 112
    assert r.before["rss_anon_pages"] == 400 and r.after["rss_anon_pages"] == 512
    assert r.before["tlb_entries"]["x86-64"] == 400 and r.after["tlb_entries"]["x86-64"] == 1
    assert r.scans_to_fixpoint == 1 and r.time_to_fixpoint_s == 0.0
    assert r.pages_scanned == 512 and r.idle_scan_pages == 1  # then only the huge PMD


def test_none_limit_aborts_at_the_first_excess_pte():
    d = first_scan(_snap(range(400)), Combo.of("legacy", {"khugepaged/max_ptes_none": "0"}))
    assert d == {BASE // 4096: ("SCAN_EXCEED_NONE_PTE", [], False)}
    r = whatif(_snap(range(400)), [Combo.of("legacy", {"khugepaged/max_ptes_none": "0"})])[0]
    assert r.collapses == {} and r.idle_scan_pages == 401  # PTEs 0..400 examined


def test_v11_mthp_walk_collapses_two_64k_blocks():
    combo = Combo.of("v11", {"hugepages-2048kB/enabled": "never",
                             "hugepages-64kB/enabled": "always",
                             "khugepaged/max_ptes_none": "0"})
    d = first_scan(_snap(range(32)), combo)
    assert d[BASE // 4096] == ("SCAN_SUCCEED", [(4, 0, "SCAN_SUCCEED"), (4, 16, "SCAN_SUCCEED")],
                               False)


def test_v11_creep_needs_two_scans():
    # max_ptes_none 255 is capped for mTHP: order 4 needs 9 of 16, order 5 17 of 32;
    # scan 1 fills [0,16) (10 present), scan 2 then sees 17 in [0,32)
    combo = Combo.of("v11", {"hugepages-2048kB/enabled": "never",
                             "hugepages-64kB/enabled": "always",
                             "hugepages-128kB/enabled": "always",
                             "khugepaged/max_ptes_none": "255"})
    for engine in ("auto", "model"):
        r = whatif(_snap([*range(10), 16]), [combo], engine=engine)[0]
        assert r.collapses == {4: 1, 5: 1}
        assert r.scans_to_fixpoint == 2 and r.fixpoint
        assert r.time_to_fixpoint_s == 10.0  # second pass, after one scan_sleep
        assert r.bloat_pages == 6 + 15


def test_linux72_any_page_triggers_mthp_with_511():
    combo = Combo.of("linux-7.2", {"hugepages-2048kB/enabled": "never",
                                   "hugepages-64kB/enabled": "always"})
    d = first_scan(_snap([100]), combo)
    assert d[BASE // 4096] == ("SCAN_SUCCEED", [(4, 96, "SCAN_SUCCEED")], False)


def test_thp_never_means_khugepaged_idles():
    r = whatif(_snap(range(500)), [Combo.of("v11", {"enabled": "never"})])[0]
    assert not r.registered and r.collapses == {} and r.after == r.before


def test_fixed_scans_and_bad_arguments():
    r = whatif(_snap(range(500)), [Combo.of("legacy")], scans=3)[0]
    assert r.scans_run == 3 and r.collapses == {9: 1}
    with pytest.raises(ValueError, match="scans"):
        whatif(_snap(range(5)), [Combo.of("legacy")], scans=0)
    with pytest.raises(ValueError, match="max_ptes_none"):
        whatif(_snap(range(5)), [Combo.of("legacy", {"khugepaged/max_ptes_none": "999"})])


def test_lru_batch_windows_run_in_the_model():
    # v11, 16K only, max_ptes_none 0: block [0,4) is attempted and fails at its
    # shared page 2 after isolating pages 0 and 1, which stay in the LRU batch
    n = 2 * NR
    cols = {c: np.zeros(n, Snapshot.DTYPES[c]) for c in Snapshot.COLUMNS}
    cols["order"][:] = -1
    idx = np.r_[0:4, NR : NR + 4]
    cols["state"][idx] = PRESENT
    cols["order"][idx] = 0
    cols["mapcount"][idx] = 1
    cols["mapcount"][2] = 2
    snap = Snapshot([SnapshotVma(BASE, BASE + n * 4096)], **cols)
    combo = Combo.of("v11", {"hugepages-2048kB/enabled": "never",
                             "hugepages-16kB/enabled": "always",
                             "khugepaged/max_ptes_none": "0"})
    d = first_scan(snap, combo)
    assert d[BASE // 4096] == ("SCAN_FAIL", [(2, 0, "SCAN_EXCEED_SHARED_PTE")], True)
    assert d[BASE // 4096 + NR] == ("SCAN_SUCCEED", [(2, 0, "SCAN_SUCCEED")], False)
    fast = whatif(snap, [combo])[0]
    slow = whatif(snap, [combo], engine="model")[0]
    assert fast.engine == "vectorised+model"
    assert fast.collapses == {2: 1}
    a, b = fast.to_dict(), slow.to_dict()
    a.pop("engine")
    b.pop("engine")
    assert a == b


@pytest.mark.parametrize("policy", ["legacy", "v11", "linux-7.2"])
def test_16k_pages_engines_agree(policy):
    ps, nr = 16384, 2048
    rng = np.random.default_rng(3)
    n = 2 * nr
    cols = {c: np.zeros(n, Snapshot.DTYPES[c]) for c in Snapshot.COLUMNS}
    cols["order"][:] = -1
    st = rng.choice([0, 1, 2, 4], size=n, p=[.3, .6, .08, .02]).astype(np.uint8)
    cols["state"][:] = st
    pr = st == PRESENT
    cols["order"][pr] = 0
    cols["mapcount"][pr] = 1
    cols["mapcount"][pr & (rng.random(n) < 0.05)] = 2
    snap = Snapshot([SnapshotVma(nr * ps * 4, nr * ps * 6, "rd wr mr mw me ac hg")], **cols,
                    page_size=ps)
    for s in ({}, {"hugepages-64kB/enabled": "always", "khugepaged/max_ptes_none": "0"}):
        c = Combo.of(policy, s)
        a = whatif(snap, [c])[0].to_dict()
        b = whatif(snap, [c], engine="model")[0].to_dict()
        a.pop("engine")
        b.pop("engine")
        assert a == b
