"""Metric sampling from the model's state (page tables and folio table), vectorised.

:class:`Sampler` reads every live process's page tables once per sample and returns a
row of named values (the columns are listed in docs/workloads.md, "Metrics").
:func:`layout_window` extracts the per-page folio-order picture used for the
"before"/"after" layouts of a run.

khugepaged CPU time is an estimate (:data:`CPU_MODEL`), calibrated from the
MADV_COLLAPSE timings measured on the project's host (real-kernel.md §2):
0.34–0.43 ms for a full PMD (midpoint 0.385 ms), ~60 µs for a PMD with one present
page, ~3 µs for a call that fails at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from thpsim.metrics.tlb import TLB_MODELS, tlb_entries
from thpsim.mm import scan_result as sr
from thpsim.mm.counters import MTHP_STATS, VMSTAT_EVENTS
from thpsim.mm.pgtable import HUGE_ZERO_PFN, PTE_NONE, PTE_PRESENT, PTE_SWAP, PTE_ZERO
from thpsim.sim.result import LAYOUT_NONE, LAYOUT_SWAP, LAYOUT_ZERO

if TYPE_CHECKING:
    from thpsim.mm.mm import MM
    from thpsim.system import System

__all__ = ["CPU_MODEL", "Sampler", "collapse_cpu_us", "layout_window", "mapped_pages"]

#: khugepaged CPU cost model, microseconds (see docs/workloads.md, "CPU time model")
CPU_MODEL: dict[str, float] = {
    # one PTE examined by a scan: the ~3 µs of a call that fails at once, per PMD of PTEs
    "scan_pte_us": 3.0 / 512,
    # each page of a successful collapse (allocate, zero-fill, install): the one-page
    # collapse (~60 µs) spread over the PMD's 512 pages
    "collapse_page_us": 60.0 / 512,
    # each present page copied (isolate, copy, unmap, free): the full-PMD collapse
    # (0.385 ms) minus the one-page case, over the 511 extra pages copied
    "copy_page_us": (385.0 - 60.0) / 511,
    # an attempt that fails after the scan (allocation, locking, revalidation)
    "failed_attempt_us": 3.0,
}


def collapse_cpu_us(pages_scanned: int, collapsed_pages: int, copies: int,
                    failed_attempts: int) -> float:
    """Estimated khugepaged CPU time in µs under :data:`CPU_MODEL`."""
    m = CPU_MODEL
    return (pages_scanned * m["scan_pte_us"] + collapsed_pages * m["collapse_page_us"]
            + copies * m["copy_page_us"] + failed_attempts * m["failed_attempt_us"])


def mapped_pages(sys: System, mm: MM) -> dict[str, np.ndarray]:
    """Every mapped anon page of ``mm``: ``vpn``, ``pfn`` (-1 for zero pages), ``kind``
    (PTE_* value; huge zero counts as PTE_ZERO), ``pmd_mapped`` (bool) and ``head``
    (folio head pfn of present pages; -1 elsewhere)."""
    g = sys.geometry
    nr, shift = g.hpage_pmd_nr, g.pmd_order
    pt = mm.pt
    parts_v, parts_p, parts_k, parts_h, parts_f = [], [], [], [], []
    if pt.tables:
        pmds = np.fromiter(pt.tables.keys(), dtype=np.int64, count=len(pt.tables))
        rows = np.fromiter(pt.tables.values(), dtype=np.int64, count=len(pt.tables))
        kinds = pt.kind[rows]
        r, c = np.nonzero(kinds != PTE_NONE)
        k = kinds[r, c]
        parts_v.append((pmds[r] << shift) + c)
        pf = np.where(k == PTE_PRESENT, pt.pfn[rows[r], c].astype(np.int64), -1)
        parts_p.append(pf)
        parts_k.append(k)
        parts_h.append(np.zeros(k.size, dtype=bool))
        head = np.full(pf.size, -1, dtype=np.int64)
        pres = pf >= 0
        if pres.any():
            head[pres] = sys.folios.heads_of(pf[pres])
        parts_f.append(head)
    if pt.huge:
        hp = np.fromiter(pt.huge.keys(), dtype=np.int64, count=len(pt.huge))
        heads = np.fromiter((e[0] for e in pt.huge.values()), dtype=np.int64, count=len(hp))
        col = np.arange(nr, dtype=np.int64)
        parts_v.append(((hp << shift)[:, None] + col).ravel())
        zero = heads == HUGE_ZERO_PFN
        pf = np.where(zero[:, None], -1, heads[:, None] + col).ravel()
        parts_p.append(pf)
        parts_k.append(np.repeat(np.where(zero, PTE_ZERO, PTE_PRESENT).astype(np.uint8), nr))
        parts_h.append(np.ones(pf.size, dtype=bool))
        parts_f.append(np.repeat(np.where(zero, -1, heads), nr))
    if not parts_v:
        z = np.zeros(0, dtype=np.int64)
        return {"vpn": z, "pfn": z, "kind": z.astype(np.uint8), "pmd_mapped": z.astype(bool),
                "head": z}
    return {"vpn": np.concatenate(parts_v), "pfn": np.concatenate(parts_p),
            "kind": np.concatenate(parts_k), "pmd_mapped": np.concatenate(parts_h),
            "head": np.concatenate(parts_f)}


def layout_window(sys: System, mm: MM, max_pmds: int = 128) -> dict[str, np.ndarray]:
    """Folio order per page over the PMD windows of ``mm``'s VMAs (first ``max_pmds``).

    Returns ``{"vpn0": int64[n], "order": int8[n, PTRS_PER_PMD], "pmd_mapped": bool[n]}``
    with order -1 for none (or outside a VMA), -2 zero page, -3 swap entry.
    """
    g = sys.geometry
    nr, shift = g.hpage_pmd_nr, g.pmd_order
    wins: list[int] = []
    for vma in mm.vmas:
        for pmd in range(vma.start >> shift, ((vma.end - 1) >> shift) + 1):
            if not wins or wins[-1] != pmd:
                wins.append(pmd)
            if len(wins) >= max_pmds:
                break
        if len(wins) >= max_pmds:
            break
    pmds = np.array(wins, dtype=np.int64)
    order = np.full((pmds.size, nr), LAYOUT_NONE, dtype=np.int8)
    pmd_mapped = np.zeros(pmds.size, dtype=bool)
    pt, f = mm.pt, sys.folios
    for j, pmd in enumerate(wins):
        huge = pt.huge.get(pmd)
        if huge is not None:
            pmd_mapped[j] = True
            order[j] = LAYOUT_ZERO if huge[0] == HUGE_ZERO_PFN else f.order[huge[0]]
            continue
        row = pt.tables.get(pmd)
        if row is None:
            continue
        kinds = pt.kind[row]
        pr = kinds == PTE_PRESENT
        if pr.any():
            heads = f.heads_of(pt.pfn[row, pr].astype(np.int64))
            order[j, pr] = f.order[heads]
        order[j, kinds == PTE_ZERO] = LAYOUT_ZERO
        order[j, kinds == PTE_SWAP] = LAYOUT_SWAP
    return {"vpn0": pmds << shift, "order": order, "pmd_mapped": pmd_mapped}


class Sampler:
    """Samples the metrics of a :class:`~thpsim.system.System`; cumulative counters are
    deltas from the moment the sampler was created.

    Parameters
    ----------
    sys : System
    """

    def __init__(self, sys: System) -> None:
        self.sys = sys
        g = sys.geometry
        self.page_kb = g.page_size // 1024
        self.orders = (0, *g.anon_orders)
        self.base_vm = dict(sys.counters.vmstat)
        self.base_mthp = {o: dict(sys.counters.mthp[o]) for o in g.anon_orders
                          if o in sys.counters.mthp}
        kh = sys.khugepaged
        self.base_scanned = kh.pages_scanned
        self.base_filled = kh.pages_filled
        self.base_full = kh.full_scans
        self._seen_attempts = len(kh.attempts)
        self.attempts = self.successes = self.failed = self.collapsed_pages = 0

    def columns(self) -> list[str]:
        """Column names in the order :meth:`sample` returns them (after ``t_s``)."""
        return list(self.sample().keys())

    def _attempts(self) -> None:
        kh = self.sys.khugepaged
        new = kh.attempts[self._seen_attempts:]
        self._seen_attempts = len(kh.attempts)
        for a in new:
            if not a.khugepaged:
                continue
            self.attempts += 1
            if a.result == sr.SCAN_SUCCEED:
                self.successes += 1
                self.collapsed_pages += 1 << a.order
            else:
                self.failed += 1

    def sample(self) -> dict[str, float]:
        """One row of metrics (without ``t_s``)."""
        sys = self.sys
        kb = self.page_kb
        f = sys.folios
        g = sys.geometry
        out: dict[str, float] = {}
        rss = sum(p.mm.rss_anon for p in sys.processes.values())
        out["rss_kb"] = float(rss * kb)
        out["swap_kb"] = float(sum(p.mm.rss_swap for p in sys.processes.values()) * kb)
        out["mem_kb"] = float(sys.memcg.usage * kb)
        kh = sys.khugepaged
        filled = kh.pages_filled - self.base_filled
        out["bloat_kb"] = float(filled * kb)
        tlb = dict.fromkeys(TLB_MODELS, 0)
        pmd_kb = 0
        order_of = np.full(f.total_pages, -1, dtype=np.int8)  # folio order per mapped pfn
        for p in sys.processes.values():
            m = mapped_pages(sys, p.mm)
            pres = m["kind"] == PTE_PRESENT
            pmd_kb += int((pres & m["pmd_mapped"]).sum()) * kb
            pfn = m["pfn"]
            folio = m["head"].copy()
            # zero pages: one identity per page so that they never share an entry
            zero = ~pres & (m["kind"] == PTE_ZERO)
            folio[zero] = -1 - m["vpn"][zero]
            # Pages of different folios never share an entry in any model, so PTE-mapped
            # order-0 and zero pages are one entry each and only large folios (and one
            # page per PMD mapping) need tlb_entries' grouping — the same count, faster.
            pmd = m["pmd_mapped"]
            large = pres & ~pmd
            if large.any():
                large[large] = f.order[folio[large]] > 0
            single = int(((pres | zero) & ~pmd & ~large).sum())
            sel = large | (pmd & (pres | zero) & (m["vpn"] % g.hpage_pmd_nr == 0))
            for model in TLB_MODELS:
                tlb[model] += single + tlb_entries(m["vpn"][sel], pfn[sel], folio[sel],
                                                   pmd[sel], model, g.hpage_pmd_nr)
            order_of[pfn[pres]] = f.order[folio[pres]]
        # distinct physical pages (a page mapped by several processes counts once): a
        # map over the pfn space is much faster than np.unique
        pfns = np.flatnonzero(order_of >= 0)
        out["anon_kb"] = float(pfns.size * kb)
        out["pmd_mapped_kb"] = float(pmd_kb)
        for model, n in tlb.items():
            out[f"tlb_{model}"] = float(n)
        orders = order_of[pfns]
        hist = np.bincount(orders.astype(np.int64), minlength=g.max_page_order + 1)
        for o in self.orders:
            out[f"folio_kb_{g.size_kb(o)}"] = float(hist[o] * kb)
        out["zero_filled_kb"] = float(int((f.content[pfns] == 0).sum()) * kb)
        self._attempts()
        copies = max(self.collapsed_pages - filled, 0)
        out["khugepaged_pages_scanned"] = float(kh.pages_scanned - self.base_scanned)
        out["khugepaged_attempts"] = float(self.attempts)
        out["khugepaged_successes"] = float(self.successes)
        out["khugepaged_copies"] = float(copies)
        out["khugepaged_cpu_ms"] = collapse_cpu_us(
            kh.pages_scanned - self.base_scanned, self.collapsed_pages, copies,
            self.failed) / 1000.0
        out["full_scans"] = float(kh.full_scans - self.base_full)
        vm = sys.counters.vmstat
        for name in VMSTAT_EVENTS:
            out[name] = float(vm.get(name, 0) - self.base_vm.get(name, 0))
        for o in g.anon_orders:
            cur = sys.counters.mthp.get(o, {})
            base = self.base_mthp.get(o, {})
            for name in MTHP_STATS:
                out[f"stats_{g.size_kb(o)}kB_{name}"] = float(cur.get(name, 0)
                                                             - base.get(name, 0))
        return out
