"""Pieces shared by the what-if engines: combinations, results, helpers."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from thpsim.mm.settings import Settings
from thpsim.mm.vma import VMA
from thpsim.snapshot.core import Snapshot
from thpsim.whatif.layout import K_HUGE, K_NONE, K_PRESENT, K_SWAP, Loaded
from thpsim.whatif.load import vma_flags
from thpsim.whatif.metrics import layout_metrics

__all__ = ["MAX_SCANS", "Combo", "NeedsModel", "Totals", "WhatIfResult", "anon_of",
           "idle_result", "metrics_of", "model_vma", "pud_tables", "size_names"]

#: fixpoint search gives up after this many full scans
MAX_SCANS = 64


@dataclass(frozen=True)
class Combo:
    """One policy/settings combination."""

    policy: str
    settings: tuple[tuple[str, str], ...] = ()

    @property
    def label(self) -> str:
        """Short name: the policy and the overrides (``khugepaged/`` and
        ``hugepages-`` ``/enabled`` dropped)."""
        parts = []
        for k, v in self.settings:
            k = k.removeprefix("khugepaged/")
            if k.startswith("hugepages-") and k.endswith("/enabled"):
                k = k.removeprefix("hugepages-").removesuffix("/enabled")
            parts.append(f"{k}={v}")
        return " ".join([self.policy, *parts])

    @classmethod
    def of(cls, policy: str, settings: Mapping[str, str] | None = None) -> Combo:
        return cls(policy, tuple((settings or {}).items()))


@dataclass
class WhatIfResult:
    """What one combination does (see docs/whatif.md for every field)."""

    combo: Combo
    engine: str
    registered: bool
    scans_run: int
    scans_to_fixpoint: int
    fixpoint: bool
    time_to_fixpoint_s: float
    passes: int
    collapses: dict[int, int]
    pmds_touched: int
    attempts: int
    attempts_by_result: dict[str, int]
    first_scan_results: dict[str, int]
    pages_scanned: int
    idle_scan_pages: int
    copies: int
    bloat_pages: int
    swapins: int
    before: dict
    after: dict
    settings: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"label": self.combo.label, "policy": self.combo.policy,
                "overrides": dict(self.combo.settings), "engine": self.engine,
                "registered": self.registered, "scans_run": self.scans_run,
                "scans_to_fixpoint": self.scans_to_fixpoint, "fixpoint": self.fixpoint,
                "time_to_fixpoint_s": self.time_to_fixpoint_s, "passes": self.passes,
                "collapses": {str(k): v for k, v in sorted(self.collapses.items())},
                "pmds_touched": self.pmds_touched, "attempts": self.attempts,
                "attempts_by_result": self.attempts_by_result,
                "first_scan_results": self.first_scan_results,
                "pages_scanned": self.pages_scanned, "idle_scan_pages": self.idle_scan_pages,
                "copies": self.copies, "bloat_pages": self.bloat_pages,
                "swapins": self.swapins, "before": self.before, "after": self.after,
                "settings": self.settings, "notes": self.notes}


def size_names(g) -> list[str]:
    return [g.size_name(o) for o in range(g.pmd_order + 1)]


def metrics_of(snap: Snapshot, ld: Loaded, kind, order, g) -> dict:
    offs = snap.vma_offsets()
    ps = snap.page_size
    layouts = ((snap.vmas[v].start // ps, kind[offs[v]:offs[v + 1]], order[offs[v]:offs[v + 1]])
               for v in np.flatnonzero(ld.loaded).tolist())
    return layout_metrics(layouts, g.pmd_order, g.hpage_pmd_nr).as_dict(size_names(g),
                                                                         g.page_size)


def model_vma(snap_vma, ps: int, anon: bool) -> VMA:
    return VMA(snap_vma.start // ps, snap_vma.end // ps, vma_flags(snap_vma), 1 if anon else 0,
               snap_vma.name)


def pud_tables(snap: Snapshot, ld: Loaded, g) -> set[int]:
    """PUD ranges with a PMD table after loading (any non-none page or PMD mapping)."""
    nr = g.hpage_pmd_nr
    offs = snap.vma_offsets()
    puds: set[int] = set()
    for v in np.flatnonzero(ld.loaded).tolist():
        lo, hi = int(offs[v]), int(offs[v + 1])
        vpn0 = snap.vmas[v].start // snap.page_size
        first = (nr - vpn0 % nr) % nr
        bounds = np.concatenate(([0], np.arange(first or nr, hi - lo, nr)))
        bounds = np.unique(bounds[bounds < hi - lo])
        used = np.logical_or.reduceat(ld.kind[lo:hi] != K_NONE, bounds)
        pmds = (vpn0 + bounds[used]) >> g.pmd_order
        puds.update(np.unique(pmds // g.ptrs_per_pte).tolist())
    return puds


def anon_of(ld: Loaded, snap: Snapshot, v: int) -> bool:
    """Whether the loader gives VMA ``v`` an anon_vma (as the snapshot says, or
    because it holds anonymous pages or swap entries)."""
    offs = snap.vma_offsets()
    k = ld.kind[offs[v]:offs[v + 1]]
    has = bool(((k == K_PRESENT) | (k == K_SWAP) | (k == K_HUGE)).any())
    return bool(snap.vmas[v].anon_vma) or has



class NeedsModel(Exception):
    """This combination needs the full model (the message says why)."""


class Totals:
    """Running totals of one combination."""

    def __init__(self) -> None:
        self.collapses: Counter = Counter()
        self.first: Counter = Counter()
        self.touched = self.copies = self.bloat = self.swapins = 0

    def touch(self, st: dict, wins: np.ndarray) -> None:
        self.touched += int(np.count_nonzero(~st["touched"][wins]))
        st["touched"][wins] = True


def idle_result(combo: Combo, before: dict, s: Settings, notes: list[str]) -> WhatIfResult:
    return WhatIfResult(combo, "vectorised", False, 0, 0, True, 0.0, 0, {}, 0, 0, {}, {}, 0, 0,
                        0, 0, 0, before, before, s.as_dict(),
                        [*notes, "khugepaged does not scan this process (nothing eligible)"])


