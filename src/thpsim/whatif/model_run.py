"""The model engine: load the snapshot and let the model's khugepaged run."""

from __future__ import annotations

from collections import Counter

import numpy as np

from thpsim.mm.geometry import geometry_for
from thpsim.mm.pgtable import HUGE_ZERO_PFN, PTE_NONE, PTE_PRESENT, PTE_SWAP, PTE_ZERO
from thpsim.snapshot.core import Snapshot
from thpsim.system import System
from thpsim.whatif.common import MAX_SCANS, Combo, WhatIfResult, idle_result, metrics_of
from thpsim.whatif.layout import K_HUGE, K_HZERO, K_NONE, K_PRESENT, K_SWAP, K_ZERO, Loaded
from thpsim.whatif.load import load_snapshot_into_model, settings_notes

__all__ = ["read_back", "run_model"]


def read_back(sys: System, proc, snap: Snapshot, ld: Loaded, g):
    """The model process's layout as ``kind, order`` arrays parallel to ``snap``."""
    n = snap.nr_pages
    kind = np.zeros(n, dtype=np.uint8)
    order = np.full(n, -1, dtype=np.int8)
    nr = g.hpage_pmd_nr
    pt = proc.mm.pt
    f = sys.folios
    offs = snap.vma_offsets()
    kmap = np.zeros(4, dtype=np.uint8)
    kmap[PTE_NONE], kmap[PTE_PRESENT], kmap[PTE_ZERO], kmap[PTE_SWAP] = (
        K_NONE, K_PRESENT, K_ZERO, K_SWAP)
    for v in np.flatnonzero(ld.loaded).tolist():
        s, e = snap.vmas[v].start // g.page_size, snap.vmas[v].end // g.page_size
        base = int(offs[v])
        for pmd in range(s // nr, (e - 1) // nr + 1):
            ws = pmd * nr
            a, b = max(s, ws), min(e, ws + nr)
            dst = slice(base + a - s, base + b - s)
            huge = pt.huge.get(pmd)
            if huge is not None:
                hz = huge[0] == HUGE_ZERO_PFN
                kind[dst] = K_HZERO if hz else K_HUGE
                order[dst] = -1 if hz else g.pmd_order
                continue
            row = pt.row(pmd)
            if row is None:
                continue
            k = pt.kind[row, a - ws : b - ws]
            kind[dst] = kmap[k]
            pr = k == PTE_PRESENT
            if pr.any():
                pf = pt.pfn[row, a - ws : b - ws][pr].astype(np.int64)
                heads = f.heads_of(pf)
                o = np.full(k.size, -1, dtype=np.int8)
                o[pr] = f.order[heads]
                order[dst] = o
    return kind, order


def run_model(snap: Snapshot, ld: Loaded, combo: Combo, scans: int | None,
              before: dict) -> WhatIfResult:
    """One combination in the full model, pass by pass."""
    g = geometry_for(snap.page_size)
    nr = g.hpage_pmd_nr
    sys, proc = load_snapshot_into_model(snap, combo.policy, dict(combo.settings), layout=ld)
    notes = settings_notes(snap, sys)
    s = sys.settings
    kh = sys.khugepaged
    if not kh.mm_slots or not kh.hugepage_enabled():
        r = idle_result(combo, before, s, notes)
        r.engine = "model"
        return r
    kh.batch = False
    scan0, att0 = len(kh.scans), len(kh.attempts)
    mm = proc.mm
    windows = 0
    for vma in mm.vmas:
        if kh.collapse_possible_orders(mm, vma, True):
            hs, he = -(-vma.start // nr) * nr, vma.end // nr * nr
            windows += max(0, (he - hs) // nr)
    limit = scans if scans is not None else MAX_SCANS
    start = s.full_scans
    # the pass that finishes the last wanted scan must not start another one
    kh.full_scan_limit = start + limit
    wraps: list[float] = []
    swap0 = mm.rss_swap
    rss0 = mm.rss_anon
    changed = 0
    fix = False
    for scan in range(1, limit + 1):
        while s.full_scans < start + scan:  # one pass at a time, sleeping in between
            if kh.passes:
                kh.clock_ms += s.scan_sleep_millisecs
            kh.run(passes=1)
        wraps.append(kh.clock_ms)
        lo, hi = (scan - 1) * windows, scan * windows
        succ = [a for a in kh.attempts[att0:]
                if lo <= a.scan_seq - scan0 < hi and a.result == "SCAN_SUCCEED"]
        if succ:
            changed = scan
        elif scans is None:
            fix = True
            break
    if scans is not None:
        fix = changed < len(wraps)
    counted = changed if scans is None else len(wraps)
    hi = counted * windows
    pages_log = [0, *kh.scan_pages[scan0:]]
    pages = pages_log[hi] if hi < len(pages_log) else kh.pages_scanned
    idle = 0
    if scans is None and fix and windows:
        idle = pages_log[hi + windows] - pages_log[hi]
    atts = [a for a in kh.attempts[att0:] if a.scan_seq - scan0 < hi]
    ok = [a for a in atts if a.result == "SCAN_SUCCEED"]
    collapses = Counter(a.order for a in ok)
    first = Counter(r for _, r, _ in kh.scans[scan0:scan0 + windows])
    kind, order = read_back(sys, proc, snap, ld, g)
    after = metrics_of(snap, ld, kind, order, g)
    swapins = swap0 - mm.rss_swap
    bloat = mm.rss_anon - rss0 - swapins
    copies = sum(1 << a.order for a in ok) - bloat
    kh.full_scan_limit = None
    sys.check()
    t = wraps[counted - 1] / 1000.0 if counted else 0.0
    return WhatIfResult(combo, "model", True, len(wraps), changed, fix, t, kh.passes,
                        dict(sorted(collapses.items())), len({a.pmd_addr for a in ok}),
                        len(atts), dict(Counter(a.result for a in atts)), dict(first), pages,
                        idle, copies, bloat, swapins, before, after, s.as_dict(), notes)


