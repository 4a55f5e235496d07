"""A model machine for the PMD windows whose outcome depends on the LRU batch."""

from __future__ import annotations

from collections import Counter

import numpy as np

from thpsim.mm import scan_result as sr
from thpsim.snapshot.core import Snapshot
from thpsim.whatif.common import Combo, NeedsModel, Totals
from thpsim.whatif.decide import RESULTS
from thpsim.whatif.layout import Loaded, normalise
from thpsim.whatif.load import load_snapshot_into_model
from thpsim.whatif.model_run import read_back

__all__ = ["SubModel"]


class SubModel:
    """The model for the windows whose outcome depends on the per-CPU LRU batch.

    It holds only those PMD windows (each in a VMA of its own, same flags) and scans
    them with ``collapse_scan_pmd`` in the daemon's order, draining the batch
    whenever the real pass would have between two of them: at a pass start or
    after a collapse elsewhere (a new large folio flushes the batch).
    """

    def __init__(self, snap: Snapshot, ld: Loaded, combo: Combo,
                 windows: list[tuple[int, int, int]]) -> None:
        from thpsim.mm.khugepaged import CollapseControl
        from thpsim.snapshot.core import SnapshotVma

        self._cc = CollapseControl
        nr = ld.pmd_nr
        ps = snap.page_size
        offs = snap.vma_offsets()
        vmas, parts = [], []
        self.windows = {}
        for v, w, lo in windows:
            a = lo + w * nr
            sv = snap.vmas[v]
            start = sv.start + (a - int(offs[v])) * ps
            vmas.append(SnapshotVma(start, start + nr * ps, sv.flags, True, sv.name))
            parts.append(a)
            self.windows[(v, w)] = (start // ps, a)
        idx = (np.asarray(parts)[:, None] + np.arange(nr)[None, :]).ravel()
        cols = {c: getattr(snap, c)[idx] for c in Snapshot.COLUMNS}
        self.snap = Snapshot(vmas, **cols, page_size=ps, settings=dict(snap.settings))
        self.sys, self.proc = load_snapshot_into_model(self.snap, combo.policy,
                                                       dict(combo.settings))
        self.kh = self.sys.khugepaged
        self.last_pos = -1
        self.last_pass = -1
        self.prev_succ = np.zeros(0, dtype=np.int64)

    def scan(self, managed, state, pass_of, vidx, succ, scan: int, t: Totals) -> bool:
        """Scan the managed windows of one full scan; returns whether one collapsed.

        ``succ`` holds the positions (in this scan's window order) of the other
        windows that collapsed something in this scan.
        """
        g = self.sys.geometry
        mm = self.proc.mm
        kh = self.kh
        any_success = False
        total = sum(st["result"].size for st in state.values())
        here = scan * total + succ  # global positions: scan-major, then window order
        events = np.concatenate((self.prev_succ, here))
        for v, w in managed:
            st = state[v]
            pos = scan * total + st["base"] + w
            p = int(pass_of[vidx[v]][w])
            between = bool(((events > self.last_pos) & (events < pos)).any())
            if p != self.last_pass or between:
                kh.lru_batch.drain()  # a pass start or a new large folio flushed it
            vpn, _ = self.windows[(v, w)]
            vma = mm.vmas.find(vpn)
            cc = self._cc(is_khugepaged=True)
            rss, swp = mm.rss_anon, mm.rss_swap
            ctx = kh.collapse_scan_pmd(mm, vma, vpn >> g.pmd_order, cc)
            if cc.progress != st["examined"][w] or not ctx.attempts:
                raise NeedsModel("rescanned")  # the batch changed the scan itself
            if ctx.result not in RESULTS or any(r not in RESULTS for *_x, r in ctx.attempts):
                raise NeedsModel("result")
            st["result"][w] = RESULTS.index(ctx.result)
            counts = np.zeros(len(RESULTS), dtype=np.int32)
            ok = []
            for order, _off, r in ctx.attempts:
                counts[RESULTS.index(r)] += 1
                if r == sr.SCAN_SUCCEED:
                    ok.append(order)
            st["att"][w] = counts
            if ok:
                any_success = True
                swapins = swp - mm.rss_swap
                bloat = mm.rss_anon - rss - swapins
                t.swapins += swapins
                t.bloat += bloat
                t.copies += sum(1 << o for o in ok) - bloat
                t.collapses.update(Counter(ok))
                t.touch(st, np.array([w]))
            self.last_pos, self.last_pass = pos, p
        self.prev_succ = here
        return any_success

    def read_back(self, kind: np.ndarray, order: np.ndarray) -> None:
        """Copy the managed windows' final layout into ``kind``/``order``."""
        g = self.sys.geometry
        k, o = read_back(self.sys, self.proc, self.snap, normalise(self.snap, g.pmd_order), g)
        nr = g.hpage_pmd_nr
        for i, (_vpn, a) in enumerate(self.windows.values()):
            kind[a : a + nr] = k[i * nr : (i + 1) * nr]
            order[a : a + nr] = o[i * nr : (i + 1) * nr]


