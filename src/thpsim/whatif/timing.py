"""khugepaged's pass and budget accounting for precomputed scan decisions.

Mirrors :meth:`Khugepaged.do_scan` and :meth:`Khugepaged.collapse_scan_mm_slot`
for one registered mm: a pass spends ``pages_to_scan`` budget units; taking the
mm's lock costs 1, a VMA khugepaged may not collapse (or that the cursor is past)
costs 1, a PMD costs the PTEs it examined (linux-7.2) or ``HPAGE_PMD_NR``
(the others); a collapse attempt drops the lock, so the pass goes on with a new
call (+1); a pass that finishes the mm's last VMA counts a full scan and may start
the next one in the same pass (``pass_through_head``).  Between passes the thread
sleeps ``scan_sleep_millisecs``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PassClock", "ScanVma"]


@dataclass
class ScanVma:
    """One VMA in one full scan: its bounds (vpn), eligibility and per-window events."""

    start: int
    end: int
    allowed: bool
    cost: np.ndarray  # budget units per window
    dropped: np.ndarray  # bool: an attempt was made (lock dropped)

    def hbounds(self, nr: int) -> tuple[int, int]:
        return -(-self.start // nr) * nr, self.end // nr * nr


class PassClock:
    """The daemon's passes over consecutive full scans of one mm, one scan at a time.

    Attributes
    ----------
    clock_ms : float
        Simulated time (the start of the current pass).
    passes : int
        Passes started so far.
    """

    def __init__(self, budget: int, sleep_ms: float, nr: int) -> None:
        self.budget, self.sleep_ms, self.nr = budget, sleep_ms, nr
        self.clock_ms = 0.0
        self.passes = 0
        self._in_pass = False
        self._progress = 0
        self._through_head = 0

    def full_scan(self, vmas: list[ScanVma]) -> tuple[float, list[np.ndarray]]:
        """Account one full scan; returns the clock of the pass that finished it and,
        per VMA, the pass number in which each of its windows was scanned."""
        nr = self.nr
        pass_of = [np.zeros(v.cost.size, dtype=np.int64) for v in vmas]
        entries = [(i, v, *v.hbounds(nr), v.cost.tolist(), v.dropped.tolist())
                   for i, v in enumerate(vmas)]
        at_head, addr = True, 0
        while True:
            if not self._in_pass:
                if self.passes:
                    self.clock_ms += self.sleep_ms
                self.passes += 1
                self._in_pass, self._progress, self._through_head = True, 0, 0
            if at_head:
                self._through_head += 1
            finished = False
            if self._through_head < 2:
                at_head = False
                self._progress += 1
                returned = False
                for i, v, hs, he, cost, dropped in [e for e in entries if e[1].end > addr]:
                    if not v.allowed or addr > he:
                        self._progress += 1
                        continue
                    addr = max(addr, hs)
                    w = (addr - hs) // nr
                    while addr < he:
                        self._progress += cost[w]
                        pass_of[i][w] = self.passes
                        addr += nr
                        if dropped[w] or self._progress >= self.budget:
                            returned = True
                            break
                        w += 1
                    if returned:
                        break
                finished = not returned
            else:
                self._progress = self.budget
            if self._progress >= self.budget:
                self._in_pass = False
            if finished:
                return self.clock_ms, pass_of
