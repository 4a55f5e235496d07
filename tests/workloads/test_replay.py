"""Replaying a snapshot series reproduces each state's mapped, zero, none and swap pages."""

from __future__ import annotations

import numpy as np
import pytest

from thpsim.sim import simulate
from thpsim.snapshot.core import NONE, PRESENT, SWAP, ZERO, Snapshot, SnapshotVma
from thpsim.workloads import WorkloadError
from thpsim.workloads.replay import SnapshotReplay, diff_events

BASE = 0x7F0000000000  # PMD aligned
NPAGES = 1024  # 4 MiB: two PMDs


def _snap(state: np.ndarray, t: float, flags: str = "rd wr mr mw me ac") -> Snapshot:
    n = state.size
    present = state == PRESENT
    return Snapshot(
        vmas=[SnapshotVma(BASE, BASE + n * 4096, flags)], state=state.astype(np.uint8),
        order=np.where(present, 0, -1).astype(np.int8), folio_index=np.zeros(n, np.int32),
        pmd_mapped=np.zeros(n, bool), mapcount=present.astype(np.uint16),
        exclusive=present, time=t)


def _series() -> list[Snapshot]:
    s0 = np.full(NPAGES, NONE)
    s0[:100] = PRESENT
    s0[600:610] = ZERO
    s1 = s0.copy()
    s1[50:100] = NONE  # freed
    s1[700:800] = PRESENT  # new
    s2 = s1.copy()
    s2[700:720] = SWAP  # reclaimed
    return [_snap(s0, 1000.0), _snap(s1, 1030.0), _snap(s2, 1060.0)]


def _mapped(order_row: np.ndarray) -> np.ndarray:
    """Snapshot state per page read back from a layout window (order array)."""
    out = np.full(order_row.size, NONE)
    out[order_row >= 0] = PRESENT
    out[order_row == -2] = ZERO
    out[order_row == -3] = SWAP
    return out


def test_replay_reaches_each_state_without_thp():
    snaps = _series()
    r = simulate(SnapshotReplay(snapshots=snaps), policy="linux-7.2",
                 settings={"enabled": "never"}, duration_s=90)
    after = r.layouts["after"]
    assert after["vpn0"][0] == BASE // 4096
    assert np.array_equal(_mapped(after["order"].ravel()), snaps[-1].state)
    # the first state was in place at t=0 ("before" after the events at t=0)
    assert np.array_equal(_mapped(r.layouts["before"]["order"].ravel()), snaps[0].state)
    # RSS: the last state's present pages (swapped ones are out)
    assert r.summary["rss_kb"] == 4 * int((snaps[-1].state == PRESENT).sum())
    assert r.summary["swap_kb"] == 4 * 20


def test_times_come_from_the_snapshots():
    evs = list(SnapshotReplay(snapshots=_series()).events(np.random.default_rng(0)))
    assert sorted({e.t for e in evs}) == [0.0, 30.0, 60.0]
    evs = list(SnapshotReplay(snapshots=_series(), interval_s=5).events(
        np.random.default_rng(0)))
    assert sorted({e.t for e in evs}) == [0.0, 5.0, 10.0]


def test_hg_flag_becomes_madv_hugepage():
    s = _snap(np.full(NPAGES, NONE), 0.0, flags="rd wr mr mw me ac hg")
    (mm,) = diff_events(None, s, 0.0)
    assert mm.advice == "hugepage" and mm.addr == BASE


def test_replay_under_thp_collapses():
    # the same series with THP and a fast khugepaged: the present pages of the first
    # PMD (50 of 512 after the free) are collapsed with max_ptes_none 511
    r = simulate(SnapshotReplay(snapshots=_series()), policy="legacy",
                 settings={"khugepaged/scan_sleep_millisecs": "1000"}, duration_s=90)
    assert r.summary["pmd_mapped_kb"] >= 2048


def test_bad_input(tmp_path):
    with pytest.raises(WorkloadError, match="needs snapshots"):
        SnapshotReplay()
    with pytest.raises(WorkloadError, match="no such snapshot file"):
        SnapshotReplay(snapshots=str(tmp_path / "missing.parquet")).snapshots()
    bad = _series()[0]
    bad.state = bad.state[:10]
    with pytest.raises(WorkloadError, match="shape"):
        SnapshotReplay(snapshots=[bad]).snapshots()


def test_replay_from_files(tmp_path):
    from thpsim.snapshot.io import save_snapshot

    paths = []
    for i, s in enumerate(_series()):
        p = tmp_path / f"s{i}.thpsnap"
        save_snapshot(s, p)
        paths.append(str(p))
    r = simulate("replay", params={"snapshots": ",".join(paths)}, policy="v11",
                 settings={"enabled": "never"}, duration_s=None)
    # default duration: the last snapshot's time plus one interval
    assert r.duration_s == 60 + 60
    assert np.array_equal(_mapped(r.layouts["after"]["order"].ravel()), _series()[-1].state)


def test_damaged_file(tmp_path):
    p = tmp_path / "bad.thpsnap"
    p.write_bytes(b"not a snapshot")
    with pytest.raises(ValueError, match=r"bad\.thpsnap"):
        SnapshotReplay(snapshots=str(p)).snapshots()
