"""The vectorised engine: first-scan decisions for all PMD windows, later scans for
the windows that changed, the pass accounting, and the sub-model where needed."""

from __future__ import annotations

from collections import Counter

import numpy as np

from thpsim.mm import scan_result as sr
from thpsim.mm.geometry import geometry_for
from thpsim.snapshot.core import Snapshot
from thpsim.system import System
from thpsim.whatif.common import (
    MAX_SCANS,
    Combo,
    NeedsModel,
    Totals,
    WhatIfResult,
    anon_of,
    idle_result,
    metrics_of,
    model_vma,
    pud_tables,
)
from thpsim.whatif.decide import R_SUCCEED, RESULTS, DecideParams, decide_windows
from thpsim.whatif.layout import K_HUGE, K_PRESENT, Loaded
from thpsim.whatif.load import model_settings
from thpsim.whatif.submodel import SubModel
from thpsim.whatif.timing import PassClock, ScanVma

__all__ = ["run_vectorised"]


def run_vectorised(snap: Snapshot, ld: Loaded, combo: Combo, scans: int | None,
                   before: dict) -> WhatIfResult:
    """One combination with the vectorised engine (``NeedsModel`` if it cannot)."""
    g = geometry_for(snap.page_size)
    nr = g.hpage_pmd_nr
    sys0 = System(memory=64 * nr * g.page_size, page_size=g.page_size, policy=combo.policy)
    notes = model_settings(snap, dict(combo.settings), sys0)
    kh = sys0.khugepaged
    mm0 = sys0.spawn().mm
    s = sys0.settings
    offs = snap.vma_offsets()
    ps = snap.page_size
    per_pte = kh.policy.budget_per_pte
    vmas = []  # (index, model vma, enabled, lo, hi)
    for v in np.flatnonzero(ld.loaded).tolist():
        mv = model_vma(snap.vmas[v], ps, anon_of(ld, snap, v))
        en = kh.collapse_possible_orders(mm0, mv, True)
        lo, hi = ld.windows(v)
        if en and hi > lo and mv.uffd_armed:
            raise NeedsModel("uffd")
        vmas.append((v, mv, en, lo, hi))
    registered = kh.hugepage_enabled() and any(e for _, _, e, _, _ in vmas)
    kind, order, shared = ld.kind.copy(), ld.order.copy(), ld.shared.copy()
    if not registered:
        return idle_result(combo, before, s, notes)
    puds = pud_tables(snap, ld, g)
    params = {}
    state = {}  # v -> dict of per-window arrays
    for v, _mv, en, lo, hi in vmas:
        if not en or hi <= lo:
            continue
        params[v] = DecideParams(combo.policy, g.pmd_order, en, s.max_ptes_none, s.max_ptes_swap,
                                 s.max_ptes_shared, kh.policy.pmd_missing_results)
        nw = (hi - lo) // nr
        vpn_w = (snap.vmas[v].start // ps) + (lo - int(offs[v])) + np.arange(nw) * nr
        state[v] = {"pud": np.isin((vpn_w >> g.pmd_order) // g.ptrs_per_pte, list(puds)),
                    "todo": np.arange(nw), "result": np.zeros(nw, np.int8),
                    "examined": np.zeros(nw, np.int32), "touched": np.zeros(nw, bool),
                    "att": np.zeros((nw, len(RESULTS)), np.int32),
                    "managed": np.zeros(nw, bool), "base": 0}
    limit = scans if scans is not None else MAX_SCANS
    clock = PassClock(s.pages_to_scan, s.scan_sleep_millisecs, nr)
    sub: SubModel | None = None
    t = Totals()
    wraps: list[float] = []
    per_scan: list[tuple[int, np.ndarray]] = []  # (pages scanned, attempts by result code)
    changed_scans = 0
    any_success = False
    for scan in range(1, limit + 1):
        events = []
        any_success = False
        succ_pos: list[np.ndarray] = []  # global positions of windows with a success
        managed: list[tuple[int, int]] = []  # (v, window) run by the sub-model
        base = 0
        for v, mv, en, lo, _hi in vmas:
            if v not in state:
                events.append(ScanVma(mv.start, mv.end, bool(en), np.zeros(0, np.int64),
                                      np.zeros(0, bool)))
                continue
            st = state[v]
            todo = st["todo"]
            huge = st.pop("next_huge", None)
            if huge is not None and huge.size:
                st["result"][huge] = RESULTS.index(sr.SCAN_PMD_MAPPED)
                st["examined"][huge] = 1
                st["att"][huge] = 0
            if todo.size:
                d = decide_windows(*_rows(kind, order, shared, lo, nr, todo), st["pud"][todo],
                                   params[v])
                if d.complex.any():
                    if scan > 1:
                        raise NeedsModel("complex after a collapse")  # rare
                    st["managed"][todo[d.complex]] = True
                keep = ~d.complex[d.att_win]
                st["result"][todo] = d.result
                st["examined"][todo] = d.examined
                counts = np.zeros((todo.size, len(RESULTS)), dtype=np.int32)
                np.add.at(counts, (d.att_win[keep], d.att_result[keep].astype(np.int64)), 1)
                st["att"][todo] = counts
                ok = (d.att_result == R_SUCCEED) & keep
                win = todo[d.att_win]
                st["todo"], now_huge = _apply(kind, order, shared, lo, nr, g.pmd_order,
                                              win[ok], d.att_order[ok], d.att_off[ok])
                # a window collapsed to a PMD mapping scans as SCAN_PMD_MAPPED from now on
                st["next_huge"] = now_huge
                if ok.any():
                    any_success = True
                    n_rng = np.left_shift(1, d.att_order[ok].astype(np.int64))
                    t.copies += int((d.att_present[ok] + d.att_swap[ok]).sum())
                    t.bloat += int((n_rng - d.att_present[ok] - d.att_swap[ok]).sum())
                    t.swapins += int(d.att_swap[ok].sum())
                    t.collapses.update(Counter(d.att_order[ok].tolist()))
                    t.touch(st, np.unique(win[ok]))
                    succ_pos.append(base + np.unique(win[ok]))
            mng = np.flatnonzero(st["managed"])
            managed += [(v, int(w)) for w in mng.tolist()]
            natt = st["att"].sum(axis=1)
            natt[mng] = 1  # a complex window always attempts (checked below)
            cost = st["examined"].astype(np.int64) if per_pte else np.full(natt.size, nr)
            events.append(ScanVma(mv.start, mv.end, True, cost, natt > 0))
            st["base"] = base
            base += natt.size
        wrap, pass_of = clock.full_scan(events)
        wraps.append(wrap)
        if managed:
            if sub is None:
                sub = SubModel(snap, ld, combo, [(v, w, lo) for v, w in managed
                                                  for vv, _, _, lo, _ in vmas if vv == v])
            succ = np.sort(np.concatenate(succ_pos)) if succ_pos else np.zeros(0, np.int64)
            vidx = {v: i for i, (v, *_rest) in enumerate(vmas)}
            any_success |= sub.scan(managed, state, pass_of, vidx, succ, scan, t)
        for st in state.values():
            if scan == 1:
                t.first.update(Counter(RESULTS[c] for c in st["result"].tolist()))
        per_scan.append((sum(int(st["examined"].sum()) for st in state.values()),
                         sum((st["att"].sum(axis=0) for st in state.values()),
                             np.zeros(len(RESULTS), dtype=np.int64))))
        if any_success:
            changed_scans = scan
        elif scans is None:
            break
    if sub is not None:
        sub.read_back(kind, order)
    fix = not any_success
    counted = changed_scans if scans is None else len(wraps)
    pages = sum(p for p, _ in per_scan[:counted])
    att = sum((a for _, a in per_scan[:counted]), np.zeros(len(RESULTS), dtype=np.int64))
    idle = per_scan[counted][0] if counted < len(per_scan) else 0
    after = metrics_of(snap, ld, kind, order, g)
    when = wraps[counted - 1] / 1000.0 if counted else 0.0
    by_result = {RESULTS[i]: int(c) for i, c in enumerate(att.tolist()) if c}
    engine = "vectorised" if sub is None else "vectorised+model"
    return WhatIfResult(combo, engine, True, len(wraps), changed_scans, fix, when,
                        clock.passes, dict(sorted(t.collapses.items())), t.touched,
                        int(att.sum()), by_result, dict(t.first), pages, idle, t.copies,
                        t.bloat, t.swapins, before, after, s.as_dict(), notes)


def _rows(kind, order, shared, lo, nr, rows):
    """The ``(n, nr)`` arrays of windows ``rows`` (indices from ``lo``) of one VMA."""
    if rows.size and rows[-1] - rows[0] + 1 == rows.size:
        a, b = lo + int(rows[0]) * nr, lo + (int(rows[-1]) + 1) * nr
        return tuple(x[a:b].reshape(-1, nr) for x in (kind, order, shared))
    idx = lo + rows[:, None] * nr + np.arange(nr)[None, :]
    return kind[idx], order[idx], shared[idx]


def _apply(kind, order, shared, lo, nr, pmd_order, win, att_order,
           att_off) -> tuple[np.ndarray, np.ndarray]:
    """Install the successful collapses in the layout; returns the windows to decide
    again (mTHP collapses) and the windows now PMD-mapped."""
    if not win.size:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    pmd = att_order == pmd_order
    if pmd.any():
        rows = win[pmd]
        top = (int(rows.max()) + 1) * nr
        kind[lo : lo + top].reshape(-1, nr)[rows] = K_HUGE
        order[lo : lo + top].reshape(-1, nr)[rows] = pmd_order
        shared[lo : lo + top].reshape(-1, nr)[rows] = False
    for w, o, off in zip(win[~pmd].tolist(), att_order[~pmd].tolist(), att_off[~pmd].tolist(),
                         strict=True):
        a = lo + w * nr + off
        n = 1 << o
        kind[a : a + n] = K_PRESENT
        order[a : a + n] = o
        shared[a : a + n] = False
    return np.setdiff1d(win[~pmd], win[pmd]), np.unique(win[pmd])


