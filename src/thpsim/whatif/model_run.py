"""The model engine: load the snapshot and let the model's khugepaged run."""

from __future__ import annotations

from collections import Counter

import numpy as np

from thpsim.mm.geometry import geometry_for
from thpsim.mm.pgtable import HUGE_ZERO_PFN, PTE_NONE, PTE_PRESENT, PTE_SWAP, PTE_ZERO
from thpsim.mm.settings import Settings
from thpsim.snapshot.core import Snapshot
from thpsim.system import System
from thpsim.whatif.common import MAX_SCANS, Combo, WhatIfResult, idle_result, metrics_of
from thpsim.whatif.layout import K_HUGE, K_HZERO, K_NONE, K_PRESENT, K_SWAP, K_ZERO, Loaded
from thpsim.whatif.load import load_snapshot_into_model

__all__ = ["read_back", "run_model"]


class _ScanLog(list):
    """``Khugepaged.scans`` that also remembers ``pages_scanned`` at every PMD scan."""

    def __init__(self, kh) -> None:
        super().__init__()
        self.kh = kh
        self.pages: list[int] = []

    def append(self, item) -> None:
        self.pages.append(self.kh.pages_scanned)
        super().append(item)


class _AttemptLog(list):
    """``Khugepaged.attempts`` that remembers which PMD scan each attempt belongs to
    (with batching off an attempt is recorded before its scan's entry)."""

    def __init__(self, kh) -> None:
        super().__init__()
        self.kh = kh
        self.scan_index: list[int] = []

    def append(self, item) -> None:
        self.scan_index.append(len(self.kh.scans))
        super().append(item)


class _StoppableSettings(Settings):
    """Settings whose ``hugepage_enabled`` turns false once ``full_scans`` reaches a
    target, so that the pass finishing the last wanted scan does not start another."""

    @property
    def full_scans(self) -> int:
        return self.__dict__["full_scans"]

    @full_scans.setter
    def full_scans(self, value: int) -> None:
        self.__dict__["full_scans"] = value

    def hugepage_enabled(self, policy: str = "v11") -> bool:
        target = self.__dict__.get("whatif_target")
        if target is not None and self.__dict__["full_scans"] >= target:
            return False
        return super().hugepage_enabled(policy)


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
    notes = list(getattr(sys, "whatif_notes", []))
    s = sys.settings
    kh = sys.khugepaged
    if not kh.mm_slots or not kh.hugepage_enabled():
        r = idle_result(combo, before, s, notes)
        r.engine = "model"
        return r
    kh.batch = False
    kh.scans = _ScanLog(kh)
    kh.attempts = _AttemptLog(kh)
    mm = proc.mm
    windows = 0
    for vma in mm.vmas:
        if kh.collapse_possible_orders(mm, vma, True):
            hs, he = -(-vma.start // nr) * nr, vma.end // nr * nr
            windows += max(0, (he - hs) // nr)
    limit = scans if scans is not None else MAX_SCANS
    s.__class__ = _StoppableSettings
    start = s.full_scans
    s.__dict__["whatif_target"] = start + limit
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
        succ = [a for a, i in zip(kh.attempts, kh.attempts.scan_index, strict=True)
                if lo <= i < hi and a.result == "SCAN_SUCCEED"]
        if succ:
            changed = scan
        elif scans is None:
            fix = True
            break
    if scans is not None:
        fix = changed < len(wraps)
    counted = changed if scans is None else len(wraps)
    hi = counted * windows
    pages_log = [0, *kh.scans.pages]
    pages = pages_log[hi] if hi < len(pages_log) else kh.pages_scanned
    idle = 0
    if scans is None and fix and windows:
        idle = pages_log[hi + windows] - pages_log[hi]
    atts = [a for a, i in zip(kh.attempts, kh.attempts.scan_index, strict=True) if i < hi]
    ok = [a for a in atts if a.result == "SCAN_SUCCEED"]
    collapses = Counter(a.order for a in ok)
    first = Counter(r for _, r, _ in list(kh.scans)[:windows])
    kind, order = read_back(sys, proc, snap, ld, g)
    after = metrics_of(snap, ld, kind, order, g)
    swapins = swap0 - mm.rss_swap
    bloat = mm.rss_anon - rss0 - swapins
    copies = sum(1 << a.order for a in ok) - bloat
    s.__dict__["whatif_target"] = None
    sys.check()
    t = wraps[counted - 1] / 1000.0 if counted else 0.0
    return WhatIfResult(combo, "model", True, len(wraps), changed, fix, t, kh.passes,
                        dict(sorted(collapses.items())), len({a.pmd_addr for a in ok}),
                        len(atts), dict(Counter(a.result for a in atts)), dict(first), pages,
                        idle, copies, bloat, swapins, before, after, s.as_dict(), notes)


