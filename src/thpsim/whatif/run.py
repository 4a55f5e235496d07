"""``whatif``: what khugepaged would do to a snapshot, per policy/settings combination.

For each combination the first full scan is decided vectorised across all PMD
windows (:mod:`thpsim.whatif.decide`); later scans re-decide only the windows the
previous scan changed (a window's decision depends only on its own state, so an
unchanged window repeats its previous outcome), until a scan collapses nothing
(the fixpoint) or ``scans`` scans were run.  The pass/budget accounting
(:mod:`thpsim.whatif.timing`) gives the simulated time.  Windows whose outcome
depends on the per-CPU LRU batch (``Decision.complex``) run in a small model
holding only them (:mod:`thpsim.whatif.submodel`), drained where the real pass
drains; in the rare cases that cannot be reproduced that way, and for uffd-armed
VMAs, the whole combination runs in the model (``engine="model"``), which is also
what the tests compare against.
"""

from __future__ import annotations

import numpy as np

from thpsim.mm.geometry import geometry_for
from thpsim.snapshot.core import Snapshot
from thpsim.system import System
from thpsim.whatif.common import (
    MAX_SCANS,
    Combo,
    NeedsModel,
    WhatIfResult,
    anon_of,
    metrics_of,
    model_vma,
    pud_tables,
)
from thpsim.whatif.decide import RESULTS, DecideParams, decide_windows
from thpsim.whatif.layout import normalise
from thpsim.whatif.load import model_settings
from thpsim.whatif.model_run import run_model
from thpsim.whatif.vectorised import run_vectorised

__all__ = ["MAX_SCANS", "Combo", "WhatIfResult", "first_scan", "whatif"]


def whatif(snap: Snapshot, combos: list[Combo], scans: int | None = None,
           engine: str = "auto") -> list[WhatIfResult]:
    """Predict what khugepaged does to ``snap`` under each combination.

    Parameters
    ----------
    snap : Snapshot
    combos : list of Combo
    scans : int, optional
        Run exactly this many full scans; default: until a scan collapses nothing
        (at most :data:`MAX_SCANS`).
    engine : {"auto", "vectorised", "model"}
        ``auto`` uses the vectorised engine and falls back to the model when a
        window needs it; ``model`` always loads the snapshot into the model.

    Returns
    -------
    list of WhatIfResult
    """
    if engine not in ("auto", "vectorised", "model"):
        raise ValueError(f"unknown engine {engine!r}")
    if scans is not None and scans < 1:
        raise ValueError(f"scans must be at least 1, not {scans}")
    snap.validate()
    g = geometry_for(snap.page_size)
    ld = normalise(snap, g.pmd_order)
    before = metrics_of(snap, ld, ld.kind, ld.order, g)  # the same for every combination
    out = []
    for combo in combos:
        if engine == "model":
            out.append(run_model(snap, ld, combo, scans, before))
            continue
        try:
            out.append(run_vectorised(snap, ld, combo, scans, before))
        except NeedsModel:
            if engine == "vectorised":
                raise ValueError("the snapshot needs the full model (complex PMDs)") from None
            out.append(run_model(snap, ld, combo, scans, before))
    return out


def first_scan(snap: Snapshot, combo: Combo) -> dict[int, tuple[str, list, bool]]:
    """The vectorised first-scan decision per PMD window, keyed by the window's vpn:
    ``(result, [(order, offset, result), ...], complex)`` (for tests and reports)."""
    g = geometry_for(snap.page_size)
    nr = g.hpage_pmd_nr
    ld = normalise(snap, g.pmd_order)
    sys0 = System(memory=64 * nr * g.page_size, page_size=g.page_size, policy=combo.policy)
    model_settings(snap, dict(combo.settings), sys0)
    kh = sys0.khugepaged
    mm0 = sys0.spawn().mm
    s = sys0.settings
    puds = pud_tables(snap, ld, g)
    offs = snap.vma_offsets()
    out = {}
    for v in np.flatnonzero(ld.loaded).tolist():
        mv = model_vma(snap.vmas[v], snap.page_size, anon_of(ld, snap, v))
        en = kh.collapse_possible_orders(mm0, mv, True)
        lo, hi = ld.windows(v)
        if not en or hi <= lo:
            continue
        p = DecideParams(combo.policy, g.pmd_order, en, s.max_ptes_none, s.max_ptes_swap,
                         s.max_ptes_shared, kh.policy.pmd_missing_results)
        nw = (hi - lo) // nr
        vpn_w = mv.start + (lo - int(offs[v])) + np.arange(nw) * nr
        pud = np.isin((vpn_w >> g.pmd_order) // g.ptrs_per_pte, list(puds))
        d = decide_windows(*(x[lo:hi].reshape(-1, nr) for x in (ld.kind, ld.order, ld.shared)),
                           pud, p)
        for w in range(nw):
            out[int(vpn_w[w])] = (RESULTS[int(d.result[w])], d.attempts_of(w),
                                  bool(d.complex[w]) or mv.uffd_armed)
    return out

