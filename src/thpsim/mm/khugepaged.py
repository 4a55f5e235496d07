"""khugepaged and MADV_COLLAPSE (twin of mm/khugepaged.c).

The engine is shared by every policy: registration (``khugepaged_enter_vma``),
the daemon on a simulated clock (``khugepaged_do_scan``,
``collapse_scan_mm_slot``), the per-PMD scan (``collapse_scan_pmd``), and one
collapse attempt (``collapse_huge_page``: allocate, revalidate, swap-in,
isolate, copy, install).  Where kernel versions differ the engine asks its
:class:`~thpsim.mm.policies.base.CollapsePolicy` (``legacy``, ``v11``,
``linux-7.2``).

The PTE scan and isolate are vectorised: instead of a Python loop over PTEs
they compute, with NumPy over the PMD, the first PTE at which each of the
kernel's checks would fail and take the earliest (ties broken in the kernel's
check order), which gives exactly the kernel's abort point and counters.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from thpsim.mm import rmap
from thpsim.mm import scan_result as sr
from thpsim.mm.folio import PG_LAZYFREE, PG_LOCKED, PG_LRU, PG_REFERENCED, PG_SWAPCACHE, PG_YOUNG
from thpsim.mm.huge_memory import (
    TVA_FORCED_COLLAPSE,
    TVA_KHUGEPAGED,
    orders_mask,
    thp_vma_allowable_orders,
)
from thpsim.mm.lru import LruAddBatch
from thpsim.mm.pgtable import (
    F_DIRTY,
    F_UFFD_WP,
    F_WRITE,
    F_YOUNG,
    PTE_NONE,
    PTE_PRESENT,
    PTE_SWAP,
    PTE_ZERO,
)
from thpsim.mm.policies import get_policy
from thpsim.mm.vma import VM_DROPPABLE, VM_WRITE

if TYPE_CHECKING:
    from thpsim.mm.mm import MM
    from thpsim.mm.vma import VMA
    from thpsim.system import System

__all__ = ["Attempt", "CollapseControl", "Khugepaged", "ScanCtx"]


@dataclass
class CollapseControl:
    """``struct collapse_control``."""

    is_khugepaged: bool
    #: budget units charged so far in this pass (``cc->progress``)
    progress: int = 0


@dataclass
class Attempt:
    """One ``collapse_huge_page`` call, for reports and tests."""

    pmd_addr: int
    order: int
    offset: int
    result: str
    khugepaged: bool
    #: index in ``Khugepaged.scans`` of the PMD scan that led to the attempt
    scan_seq: int = -1


@dataclass
class ScanCtx:
    """What one PMD scan found; the walk and every attempt reuse it."""

    mm: MM
    vma: VMA
    pmd: int
    cc: CollapseControl
    enabled: int
    referenced: int = 0
    unmapped: int = 0
    none_or_zero: int = 0
    bitmap_prefix: np.ndarray | None = None
    node: int = 0
    lock_dropped: bool = False
    result: str = sr.SCAN_FAIL
    shared_row: np.ndarray | None = None
    attempts: list = field(default_factory=list)


def _first(mask: np.ndarray) -> int:
    """Index of the first True, or len(mask)."""
    i = int(np.argmax(mask)) if mask.size else 0
    return i if mask.size and mask[i] else mask.size


class Khugepaged:
    """The khugepaged daemon and the collapse engine for one system.

    Attributes
    ----------
    mm_slots : list of MM
        Registered mms in scan order.
    clock_ms : float
        Simulated time.
    trace : list of dict or None
        Recorded tracepoint events when tracing is on (:meth:`enable_trace`).
    attempts : list of Attempt
        Every collapse attempt (khugepaged and MADV_COLLAPSE), in order.
    alloc_fail_orders : set of int
        Failure injection: collapse allocations of these orders fail.
    lru_batch : LruAddBatch
        The per-CPU ``lru_add`` batch (switch with ``lru_batch.enabled``).
    """

    def __init__(self, sys: System) -> None:
        self.sys = sys
        self.mm_slots: list[MM] = []
        self.scan_mm: MM | None = None
        self.scan_address = 0
        self.clock_ms = 0.0
        self.trace: list[dict] | None = None
        self.attempts: list[Attempt] = []
        #: (pmd vpn, result, is_khugepaged) of every PMD scan
        self.scans: list[tuple[int, str, bool]] = []
        #: ``pages_scanned`` just after each entry of ``scans`` (work per scan, for tools)
        self.scan_pages: list[int] = []
        #: tools' hook, not a kernel knob: a pass stops starting scans once
        #: ``full_scans`` reaches this value (whatif's "exactly N full scans")
        self.full_scan_limit: int | None = None
        self.alloc_fail_orders: set[int] = set()
        self.lru_batch = LruAddBatch(sys)
        self.warnings: list[str] = []
        self.passes = 0
        self.alloc_sleeps = 0
        self.pages_scanned = 0  # PTEs examined (work metric)
        #: none/zero slots that collapses turned into zero-filled pages (bloat metric)
        self.pages_filled = 0
        #: decide runs of simple PMDs vectorised (same results; see _scan_batch)
        self.batch = True
        self._batch_len = 16
        self._policy = None

    # --- policy --------------------------------------------------------------------
    @property
    def policy(self):
        if self._policy is None or self._policy.name != self.sys.policy:
            self._policy = get_policy(self.sys.policy)
        return self._policy

    @property
    def full_scans(self) -> int:
        return self.sys.settings.full_scans

    @property
    def pages_collapsed(self) -> int:
        return self.sys.settings.pages_collapsed

    def warn_once(self, text: str) -> None:
        """``pr_warn_once``: remembered in :attr:`warnings` (the model's dmesg)."""
        if text not in self.warnings:
            self.warnings.append(text)

    def enable_trace(self) -> list[dict]:
        """Start recording tracepoint events; returns the (live) list."""
        if self.trace is None:
            self.trace = []
        return self.trace

    def _emit(self, event: str, **fields) -> None:
        if self.trace is not None:
            fields["event"] = event
            fields["ts"] = self.clock_ms / 1000.0
            self.trace.append(fields)

    @staticmethod
    def _mm_ptr(mm: MM) -> str:
        return f"{0xFFFF888000000000 + (mm.pid << 16):016x}"

    # --- eligibility ------------------------------------------------------------
    def collapse_orders(self, vma: VMA | None = None) -> int:
        """Orders khugepaged asks for on an anon VMA (``collapse_allowable_orders``)."""
        g = self.sys.geometry
        if not self.policy.mthp:
            return 1 << g.pmd_order
        return orders_mask(g.anon_orders)

    def collapse_possible_orders(self, mm: MM, vma: VMA, is_khugepaged: bool) -> int:
        """Candidate orders for a scan: all anon orders for khugepaged (mTHP policies),
        the PMD order for MADV_COLLAPSE, filtered by ``thp_vma_allowable_orders``."""
        if is_khugepaged:
            return thp_vma_allowable_orders(self.sys, mm, vma, TVA_KHUGEPAGED,
                                            self.collapse_orders(vma))
        return thp_vma_allowable_orders(self.sys, mm, vma, TVA_FORCED_COLLAPSE,
                                        1 << self.sys.geometry.pmd_order)

    def hugepage_enabled(self) -> bool:
        """``hugepage_pmd_enabled`` (legacy) / ``hugepage_enabled`` (v11, 7.2)."""
        return self.sys.settings.hugepage_enabled(self.sys.policy)

    # --- registration -----------------------------------------------------------
    def enter_vma(self, mm: MM, vma: VMA) -> None:
        """``khugepaged_enter_vma``: register ``mm`` if the VMA could be collapsed."""
        if mm.registered or mm.exiting or not self.hugepage_enabled():
            return
        if thp_vma_allowable_orders(self.sys, mm, vma, TVA_KHUGEPAGED, self.collapse_orders(vma)):
            self.register(mm)

    def register(self, mm: MM) -> None:
        """``__khugepaged_enter``: append to the tail of the scan list."""
        if mm.registered:
            return
        mm.registered = True
        self.mm_slots.append(mm)

    def fork(self, parent: MM, child: MM) -> None:
        """``khugepaged_fork``: the child is registered if the parent was."""
        if parent.registered:
            self.register(child)

    def exit_mm(self, mm: MM) -> None:
        """``khugepaged_exit``: drop the slot now, or lazily if it is being scanned."""
        if not mm.registered:
            return
        mm.exiting = True
        if mm is not self.scan_mm:
            self.mm_slots.remove(mm)
            mm.registered = False

    # --- the daemon ---------------------------------------------------------------
    def run(self, full_scans: int | None = None, seconds: float | None = None,
            passes: int | None = None, max_passes: int = 1_000_000) -> dict:
        """Run the daemon on the simulated clock.

        Stops after ``full_scans`` more full scans, ``seconds`` of simulated
        time, or ``passes`` passes (whichever is given; default one full scan).
        With nothing registered (or THP disabled) the thread idles: the call
        returns at once (``idle`` true) without advancing ``full_scans``.
        """
        if full_scans is None and seconds is None and passes is None:
            full_scans = 1
        start_scans, start_clock, done = self.full_scans, self.clock_ms, 0
        end = None if seconds is None else self.clock_ms + seconds * 1000.0
        idle = False
        while done < max_passes:
            if not self.mm_slots or not self.hugepage_enabled():
                idle = True
                if end is not None:
                    self.clock_ms = max(self.clock_ms, end)
                break
            self.do_scan()
            done += 1
            if full_scans is not None and self.full_scans - start_scans >= full_scans:
                break
            if passes is not None and done >= passes:
                break
            self.clock_ms += self.sys.settings.scan_sleep_millisecs  # khugepaged_wait_work
            if end is not None and self.clock_ms >= end:
                break
        return {"passes": done, "full_scans": self.full_scans - start_scans,
                "elapsed_ms": self.clock_ms - start_clock, "idle": idle}

    def do_scan(self) -> None:
        """``khugepaged_do_scan``: one pass of at most ``pages_to_scan`` budget units."""
        budget = self.sys.settings.pages_to_scan
        self.lru_batch.drain()  # lru_add_drain_all
        cc = CollapseControl(is_khugepaged=True)
        pass_through_head = 0
        wait = True
        self.passes += 1
        while True:
            result = sr.SCAN_SUCCEED
            if self.scan_mm is None:
                pass_through_head += 1
            limited = (self.full_scan_limit is not None
                       and self.sys.settings.full_scans >= self.full_scan_limit)
            if self.mm_slots and self.hugepage_enabled() and pass_through_head < 2 \
                    and not limited:
                result = self.collapse_scan_mm_slot(budget, cc)
            else:
                cc.progress = budget
            if cc.progress >= budget:
                break
            if result == sr.SCAN_ALLOC_HUGE_PAGE_FAIL:
                if not wait:
                    break
                wait = False
                self.alloc_sleeps += 1
                self.clock_ms += self.sys.settings.alloc_sleep_millisecs

    def _next_slot(self, mm: MM) -> None:
        """Move the cursor past ``mm``; wrap counts a full scan; collect exited mms."""
        i = self.mm_slots.index(mm)
        if mm.exiting:
            self.mm_slots.remove(mm)
            mm.registered = False
            nxt = self.mm_slots[i] if i < len(self.mm_slots) else None
        else:
            nxt = self.mm_slots[i + 1] if i + 1 < len(self.mm_slots) else None
        self.scan_mm, self.scan_address = nxt, 0
        if nxt is None:
            self.sys.settings.full_scans += 1

    def collapse_scan_mm_slot(self, budget: int, cc: CollapseControl) -> str:
        """``collapse_scan_mm_slot``: scan the cursor mm from the cursor address."""
        g = self.sys.geometry
        pol = self.policy
        start = cc.progress
        result = sr.SCAN_FAIL
        if self.scan_mm is None:
            self.scan_mm, self.scan_address = self.mm_slots[0], 0
        mm = self.scan_mm
        cc.progress += 1  # mmap_read_trylock succeeded
        finished = mm.exiting or mm.thp_disable == 1
        if not finished:
            vmas = [v for v in mm.vmas if v.end > self.scan_address]
            for vma in vmas:
                if not self.collapse_possible_orders(mm, vma, True):
                    cc.progress += 1
                    continue
                hstart = -(-vma.start // g.hpage_pmd_nr) * g.hpage_pmd_nr
                hend = vma.end // g.hpage_pmd_nr * g.hpage_pmd_nr
                if self.scan_address > hend:
                    cc.progress += 1
                    continue
                self.scan_address = max(self.scan_address, hstart)
                while self.scan_address < hend:
                    if self.batch and self.trace is None:
                        n, res, stop = self._scan_batch(mm, vma, hend, cc, budget)
                        if n:
                            result = res
                            if stop:
                                return result
                            continue
                    ctx_progress = cc.progress
                    result, dropped = self.collapse_single_pmd(mm, vma, self.scan_address, cc)
                    if result == sr.SCAN_SUCCEED:
                        self.sys.settings.pages_collapsed += 1
                    self.scan_address += g.hpage_pmd_nr
                    if not pol.budget_per_pte:
                        cc.progress = ctx_progress + g.hpage_pmd_nr
                    if dropped:
                        self._emit_scan(mm, cc.progress - start, False)
                        return result
                    if cc.progress >= budget:
                        self._emit_scan(mm, cc.progress - start, False)
                        return result
            finished = True
        if finished:
            self._next_slot(mm)
        self._emit_scan(mm, cc.progress - start, self.scan_mm is None)
        return result

    # --- batched scanning of simple PMDs -------------------------------------------------
    def _scan_batch(self, mm: MM, vma: VMA, hend: int, cc: CollapseControl,
                    budget: int) -> tuple[int, str, bool]:
        """Scan a run of *simple* PMDs from the cursor at once.

        A PMD is simple when every present PTE maps an exclusive, unpinned,
        unlocked, clean-LRU order-0 page, with no swap entry and no uffd-wp bit,
        in a VMA that is not uffd-armed.  For such a PMD the kernel's outcome
        depends only on where its none/zero PTEs are and whether any page is
        young: the scan aborts on the none limit, lacks referenced pages, makes
        no attempt, or attempts the PMD order — which then succeeds, because the
        batch is used only while enough order-9 blocks are free.  PMDs whose walk
        would try mTHP orders are left to the per-PMD path.  The run stops at the
        first PMD that is not simple, when the budget is spent, or at the end of
        the VMA; effects, counters and records are the same as PMD by PMD.

        Returns ``(pmds done, last result, call must return)``.
        """
        sys = self.sys
        g = sys.geometry
        pol = self.policy
        nr = g.hpage_pmd_nr
        shift = g.pmd_order
        if (vma.uffd_armed or sys.buddy.nr_nodes > 1 or len(self.lru_batch)
                or sys.memcg.limit_pages is not None):
            return 0, sr.SCAN_FAIL, False
        first = self.scan_address >> shift
        count = min(self._batch_len, (hend >> shift) - first)
        pt = mm.pt
        pmds = np.arange(first, first + count)
        tables, huge = pt.tables, pt.huge
        # PMD level: -1 none (no table), -2 huge, else the PTE table row
        rows = np.array([-2 if k in huge else tables.get(k, -1) for k in pmds.tolist()])
        is_table = rows >= 0
        trows = np.where(is_table, rows, 0)
        kinds = pt.kind[trows]
        flags = pt.flags[trows].astype(np.int64)
        pfns = pt.pfn[trows].astype(np.int64)
        f = sys.folios
        pr = (kinds == PTE_PRESENT) & is_table[:, None]
        nz = ((kinds == PTE_NONE) | (kinds == PTE_ZERO)) & is_table[:, None]
        pp = np.where(pr, pfns, 0)
        fl = f.flags[pp].astype(np.int64)
        bad_page = pr & ((f.order[pp] != 0) | (f.mapcount[pp] != 1) | (f.refcount[pp] != 1)
                         | ((fl & PG_LRU) == 0)
                         | ((fl & (PG_LOCKED | PG_LAZYFREE | PG_SWAPCACHE)) > 0))
        bad = ((kinds == PTE_SWAP) & is_table[:, None]) | bad_page \
            | (((flags & F_UFFD_WP) > 0) & is_table[:, None])
        simple = ~bad.any(axis=1)
        nonsimple = np.flatnonzero(~simple)
        count = int(nonsimple[0]) if nonsimple.size else count
        if count == 0:
            self._batch_len = 16
            return 0, sr.SCAN_FAIL, False
        enabled = self.collapse_possible_orders(mm, vma, True)
        pmd_only = enabled == 1 << shift
        none_limit = pol.scan_none_limit(sys, cc, vma, pmd_only)
        cum = np.cumsum(nz[:count], axis=1)
        if none_limit is None:
            abort = np.full(count, nr)
        else:
            over = nz[:count] & (cum > none_limit)
            abort = np.where(over.any(axis=1), over.argmax(axis=1), nr)
        young = pr[:count] & (((flags[:count] & F_YOUNG) > 0)
                              | ((fl[:count] & (PG_YOUNG | PG_REFERENCED)) > 0))
        has_young = young.any(axis=1)
        present = pr[:count].sum(axis=1)
        n_nz = cum[:, -1]
        pmd_on = bool(enabled & (1 << shift))
        if pmd_on:
            m = sys.settings.max_ptes_none
            attempt9 = present >= nr - m
        else:
            attempt9 = np.zeros(count, dtype=bool)
        if not pol.mthp:
            attempt9 = np.ones(count, dtype=bool)
        mthp_orders = enabled & ((1 << shift) - 1) if pol.mthp else 0
        # decide: 0 abort, 1 lack referenced, 2 no attempt, 3 collapse9, 4 slow,
        # 5 PMD-level result (huge or no table)
        dec = np.full(count, 4)
        scanned_ok = (abort == nr) & has_young
        dec[abort < nr] = 0
        dec[(abort == nr) & ~has_young] = 1
        dec[scanned_ok & attempt9] = 3
        dec[scanned_ok & ~attempt9 & (mthp_orders == 0)] = 2
        # 6: the mTHP walk on a simple PMD whose present pages are all young — then
        # every attempt the walk makes succeeds (isolate rechecks the same none limit,
        # nothing is shared, pinned or swapped, and every non-empty range is young)
        all_young = ~(pr[:count] & ~young).any(axis=1)
        dec[scanned_ok & ~attempt9 & (mthp_orders != 0) & all_young] = 6
        dec[~is_table[:count]] = 5
        slow = np.flatnonzero(dec == 4)
        count = int(slow[0]) if slow.size else count
        if count == 0:
            self._batch_len = 16
            return 0, sr.SCAN_FAIL, False
        # allocations: only while sequential allocation could not fail either
        avail = sys.buddy.buddyinfo().sum(axis=0)
        capacity = sum(int(avail[o]) << (o - shift) for o in range(shift, len(avail)))
        if self.alloc_fail_orders or sys.buddy.fail_orders or sys.memcg.fail_orders:
            capacity = 0  # failure injection: leave every attempt to the exact path
        walks: dict[int, list[tuple[int, int]]] = {}
        if (dec[:count] == 6).any():
            thresholds = self._mthp_thresholds(cc, mthp_orders)
            for j in np.flatnonzero(dec[:count] == 6).tolist():
                walks[j] = self._simple_walk(pr[j], mthp_orders, thresholds)
        # each collapse of any order needs at most one order-9 block's worth here
        need_units = np.where(dec[:count] == 3, 1, 0)
        for j, w in walks.items():
            need_units[j] = sum(-(-(1 << o) // nr) for o, _ in w)
        units = np.cumsum(need_units)
        if units.size and units[-1] > capacity:
            count = int(np.argmax(units > capacity))
            if count == 0:
                return 0, sr.SCAN_FAIL, False
        # walk the budget exactly as the PMD-by-PMD loop would
        done = 0
        stop = False
        result = sr.SCAN_FAIL
        collapsed: list[int] = []
        mthp_done: list[tuple[int, int, int]] = []
        scans = self.scans
        seq = len(scans)  # index of the next scan entry
        c = sys.counters
        results = {0: sr.SCAN_EXCEED_NONE_PTE, 1: sr.SCAN_LACK_REFERENCED_PAGE,
                   2: sr.SCAN_FAIL, 3: sr.SCAN_SUCCEED, 6: sr.SCAN_FAIL}
        per_pte = pol.budget_per_pte
        puds = None
        for j in range(count):
            d = int(dec[j])
            vpn = int(pmds[j]) << shift
            if d == 5:
                if rows[j] == -2:
                    result = sr.SCAN_PMD_MAPPED
                else:
                    if puds is None:
                        puds = self._puds(mm)
                    no_table, none = pol.pmd_missing_results
                    result = none if int(pmds[j]) // nr in puds else no_table
                examined = 1
            else:
                result = results[d]
                examined = int(abort[j]) + 1 if d == 0 else nr
            self.pages_scanned += examined
            cc.progress += examined if per_pte else nr
            self._record_scan((vpn, result, True))
            if d == 0:
                self._count_scan_abort(result)
            done += 1
            self.scan_address = vpn + nr
            if d == 6:
                if not walks[j]:
                    result = sr.SCAN_FAIL  # no range met its threshold: no attempt
                    if cc.progress >= budget:
                        stop = True
                        break
                    continue
                result = sr.SCAN_SUCCEED
                scans[-1] = (vpn, result, True)
                for order, off in walks[j]:
                    self.attempts.append(Attempt(vpn, order, off, sr.SCAN_SUCCEED, True,
                                                 seq + done - 1))
                    mthp_done.append((j, order, off))
                sys.settings.pages_collapsed += 1
                if cc.progress >= budget:
                    stop = True
                    break
                cc.progress += 1
                continue
            if d == 3:
                collapsed.append(j)
                self.attempts.append(Attempt(vpn, shift, 0, sr.SCAN_SUCCEED, True,
                                             seq + done - 1))
                sys.settings.pages_collapsed += 1
                # the attempt dropped the lock: this call returns; do_scan calls again
                if cc.progress >= budget:
                    stop = True
                    break
                cc.progress += 1
            elif cc.progress >= budget:
                stop = True
                break
        if collapsed:
            self._batch_install(mm, vma, pmds[collapsed], rows[collapsed], pr[collapsed],
                                n_nz[collapsed])
            c.count_vm_event("thp_collapse_alloc", len(collapsed))
            if pol.mthp_alloc_stats:
                c.count_mthp_stat(shift, "collapse_alloc", len(collapsed))
        if mthp_done:
            self._batch_install_mthp(mm, vma, pmds, rows, mthp_done)
        self._batch_len = min(self._batch_len * 2, 1024) if done == count else 16
        return done, result, stop

    def _mthp_thresholds(self, cc: CollapseControl, orders: int) -> dict[int, int]:
        """Minimum present PTEs per enabled mTHP order (the walk's threshold)."""
        sys = self.sys
        pol = self.policy
        out = {}
        for order in range(2, sys.geometry.pmd_order):
            if not orders & (1 << order):
                continue
            if pol.name == "linux-7.2":
                max_none = pol.collapse_max_ptes_none(self, cc, None, order)
            else:
                max_none = pol.collapse_max_ptes_none(sys, order)
            out[order] = (1 << order) - max_none
        return out

    def _simple_walk(self, present: np.ndarray, orders: int,
                     thresholds: dict[int, int]) -> list[tuple[int, int]]:
        """The collapses the order walk makes in a simple PMD below the PMD order:
        depth first, left first, an enabled block meeting its threshold collapses and
        is not descended (both policies' walks attempt exactly these, in this order)."""
        g = self.sys.geometry
        prefix = np.concatenate(([0], np.cumsum(present))).tolist()
        out: list[tuple[int, int]] = []
        top = g.pmd_order - 1
        lowest = min(thresholds)
        stack = [(top, off) for off in range((1 << g.pmd_order) - (1 << top), -1, -(1 << top))]
        while stack:
            order, off = stack.pop()
            n = 1 << order
            if order in thresholds and prefix[off + n] - prefix[off] >= thresholds[order]:
                out.append((order, off))
                continue
            if order > lowest:
                stack.append((order - 1, off + n // 2))
                stack.append((order - 1, off))
        return out

    def _batch_install_mthp(self, mm: MM, vma: VMA, pmds: np.ndarray, rows: np.ndarray,
                            done: list[tuple[int, int, int]]) -> None:
        """mTHP collapses in simple PMDs in bulk (the effects of ``_copy_and_install``)."""
        sys = self.sys
        g = sys.geometry
        f = sys.folios
        pt = mm.pt
        c = sys.counters
        pol = self.policy
        writable = F_WRITE if vma.flags & VM_WRITE else 0
        by_order: dict[int, list[tuple[int, int]]] = {}
        for j, order, off in done:
            by_order.setdefault(order, []).append((j, off))
        for order, items in sorted(by_order.items(), reverse=True):
            n = 1 << order
            heads = sys.buddy.alloc_bulk(order, len(items))
            assert heads.size == len(items) and sys.memcg.try_charge(len(items) * n)
            r = rows[[j for j, _ in items]]
            offs = np.array([off for _, off in items])
            cols = offs[:, None] + np.arange(n)[None, :]
            kinds = pt.kind[r[:, None], cols]
            old = pt.pfn[r[:, None], cols].astype(np.int64)
            pr = kinds == PTE_PRESENT
            new = heads[:, None] + np.arange(n)[None, :]
            f.content[new.ravel()] = np.where(pr, f.content[np.where(pr, old, 0)], 0).ravel()
            f.order[heads] = order
            f.flags[heads] = f.flags.dtype.type(1 | 2)  # PG_ANON | PG_LRU
            f.node[heads] = 0
            f.refcount[heads] = n
            f.mapcount[new.ravel()] = 1
            f.nr_live += len(items)
            for (j, off), head in zip(items, heads.tolist(), strict=True):
                f.vpn[head] = (int(pmds[j]) << g.pmd_order) + off
            c.count_mthp_stat(order, "nr_anon", len(items))
            if pol.mthp_alloc_stats:
                c.count_mthp_stat(order, "collapse_alloc", len(items))
            olds = old[pr]
            f.mapcount[olds] = 0
            f.refcount[olds] = 0
            sys.free_folios_order0(olds)
            mm.rss_anon += int((~pr).sum())
            self.pages_filled += int((~pr).sum())
            pt.kind[r[:, None], cols] = PTE_PRESENT
            pt.pfn[r[:, None], cols] = new
            pt.flags[r[:, None], cols] = F_YOUNG | F_DIRTY | writable

    def _batch_install(self, mm: MM, vma: VMA, pmds: np.ndarray, rows: np.ndarray,
                       pr: np.ndarray, n_nz: np.ndarray) -> None:
        """PMD collapses of simple PMDs in bulk (the effects of ``_copy_and_install``)."""
        sys = self.sys
        g = sys.geometry
        nr = g.hpage_pmd_nr
        f = sys.folios
        pt = mm.pt
        k = len(pmds)
        heads = sys.buddy.alloc_bulk(g.pmd_order, k)
        assert heads.size == k and sys.memcg.try_charge(k * nr)
        old = np.where(pr, pt.pfn[rows].astype(np.int64), -1)
        new = heads[:, None] + np.arange(nr)[None, :]
        content = np.where(pr, f.content[np.where(pr, old, 0)], 0)
        f.order[heads] = g.pmd_order
        f.flags[heads] = f.flags.dtype.type(1 | 2)  # PG_ANON | PG_LRU
        f.node[heads] = 0
        f.refcount[heads] = 1
        f.content[new.ravel()] = content.ravel()
        f.nr_live += k
        sys.counters.count_mthp_stat(g.pmd_order, "nr_anon", k)
        olds = old[pr]
        f.mapcount[olds] = 0
        f.refcount[olds] = 0
        sys.free_folios_order0(olds)
        writable = F_WRITE if vma.flags & VM_WRITE else 0
        for pmd, head in zip(pmds.tolist(), heads.tolist(), strict=True):
            pt.free_table(pmd)
            pt.huge[pmd] = [head, F_YOUNG | F_DIRTY | writable]
            f.entire[head] = 1
            f.vpn[head] = pmd << g.pmd_order
            rmap.deferred_split_folio(sys, head, partially_mapped=False)
        mm.rss_anon += int(n_nz.sum())
        self.pages_filled += int(n_nz.sum())

    def _emit_scan(self, mm: MM, progress: int, finished: bool) -> None:
        if self.policy.name == "linux-7.2":
            self._emit("mm_khugepaged_scan", mm=self._mm_ptr(mm), progress=progress,
                       full_scan_finished=int(finished))

    # --- one PMD ---------------------------------------------------------------------
    def collapse_single_pmd(self, mm: MM, vma: VMA, vpn: int,
                            cc: CollapseControl) -> tuple[str, bool]:
        """``collapse_single_pmd`` (anon): scan the PMD at ``vpn``; returns
        ``(result, lock_dropped)``."""
        ctx = self.collapse_scan_pmd(mm, vma, vpn >> self.sys.geometry.pmd_order, cc)
        return ctx.result, ctx.lock_dropped

    def _pmd_missing(self, mm: MM, pmd: int) -> str:
        """PMD lookup of a none PMD: ``SCAN_PMD_NULL`` if no PMD table exists for its
        PUD range (``mm_find_pmd`` fails), else ``SCAN_PMD_NONE`` (7.2: both
        ``SCAN_NO_PTE_TABLE``).  A PMD table appears with the first page table or
        huge mapping in its PUD range and goes only when munmap/exit free the range."""
        no_table, none = self.policy.pmd_missing_results
        return none if pmd // self.sys.geometry.ptrs_per_pte in self._puds(mm) else no_table

    def _puds(self, mm: MM) -> set[int]:
        """PUD-range indices that have a PMD table."""
        return mm.pt.puds

    def collapse_scan_pmd(self, mm: MM, vma: VMA, pmd: int, cc: CollapseControl) -> ScanCtx:
        """``collapse_scan_pmd``: check every PTE in the kernel's order, then walk.

        Returns the scan context with ``result`` and ``lock_dropped`` set.
        """
        sys = self.sys
        g = sys.geometry
        pol = self.policy
        nr = g.hpage_pmd_nr
        pt = mm.pt
        enabled = self.collapse_possible_orders(mm, vma, cc.is_khugepaged)
        ctx = ScanCtx(mm, vma, pmd, cc, enabled)
        scan_pfn = -1
        row = pt.row(pmd)
        if pmd in pt.huge or row is None:
            ctx.result = sr.SCAN_PMD_MAPPED if pmd in pt.huge else self._pmd_missing(mm, pmd)
            cc.progress += 1
            self.pages_scanned += 1
            self._emit("mm_khugepaged_scan_pmd", mm=self._mm_ptr(mm), scan_pfn=-1,
                       referenced=0, none_or_zero=0, status=ctx.result, unmapped=0)
            self._record_scan((pmd << g.pmd_order, ctx.result, cc.is_khugepaged))
            return ctx
        pmd_only = enabled == 1 << g.pmd_order
        kinds = pt.kind[row]
        flags = pt.flags[row]
        pfns = pt.pfn[row].astype(np.int64)
        nz = (kinds == PTE_NONE) | (kinds == PTE_ZERO)
        sw = kinds == PTE_SWAP
        pr = kinds == PTE_PRESENT
        f = sys.folios
        heads = np.zeros(nr, dtype=np.int64)
        if pr.any():
            heads[pr] = f.heads_of(pfns[pr])
        hflags = f.flags[heads]
        young = pr & (((flags & F_YOUNG) > 0) | ((hflags & (PG_YOUNG | PG_REFERENCED)) > 0))
        cum_nz, cum_sw = np.cumsum(nz), np.cumsum(sw)

        # (index, rank, result, vmstat, stat) candidates: the earliest index wins,
        # rank orders checks on the same PTE as the kernel does
        cands: list[tuple[int, int, str]] = []
        none_limit = pol.scan_none_limit(sys, cc, vma, pmd_only)
        if none_limit is not None:
            cands.append((_first(nz & (cum_nz > none_limit)), 0, sr.SCAN_EXCEED_NONE_PTE))
        swap_limit = pol.scan_swap_limit(sys, cc)
        if swap_limit is not None:
            cands.append((_first(sw & (cum_sw > swap_limit)), 0, sr.SCAN_EXCEED_SWAP_PTE))
        cands.append((_first(sw & ((flags & F_UFFD_WP) > 0)), 1, sr.SCAN_PTE_UFFD_WP))
        cands.append((_first(pr & ((flags & F_UFFD_WP) > 0)), 2, sr.SCAN_PTE_UFFD_WP))
        if pol.lazyfree_check and cc.is_khugepaged and not vma.flags & VM_DROPPABLE:
            lazy = pr & ((hflags & PG_LAZYFREE) > 0) & ((flags & F_DIRTY) == 0)
            cands.append((_first(lazy), 3, sr.SCAN_PAGE_LAZYFREE))
        shared = rmap.shared_mask_row(sys, kinds, pfns) & pr
        # valid for the whole walk: a collapse makes an exclusive folio of its own
        # range and touches no other PTE, so other ranges keep their sharing
        ctx.shared_row = shared
        shared_limit = pol.scan_shared_limit(sys, cc)
        if shared_limit is not None:
            cands.append((_first(shared & (np.cumsum(shared) > shared_limit)), 4,
                          sr.SCAN_EXCEED_SHARED_PTE))
        cands.append((_first(pr & ((hflags & PG_LRU) == 0)), 5, sr.SCAN_PAGE_LRU))
        cands.append((_first(pr & ((hflags & PG_LOCKED) > 0)), 6, sr.SCAN_PAGE_LOCK))
        cands.append((_first(pr & ~self._refcount_ok(heads, pr)), 7, sr.SCAN_PAGE_COUNT))
        idx, _, fail = min(cands)
        examined = min(idx + 1, nr)
        cc.progress += examined
        self.pages_scanned += examined
        upto = min(idx, nr - 1)
        ctx.none_or_zero = int(cum_nz[upto])
        ctx.unmapped = int(cum_sw[upto])
        looked = np.flatnonzero(pr[: upto + 1])
        if looked.size:
            scan_pfn = int(heads[looked[-1]])
        if cc.is_khugepaged:
            ctx.referenced = int(young[:idx].sum())
        if idx < nr:
            ctx.result = fail
            self._count_scan_abort(fail)
        elif cc.is_khugepaged and (ctx.referenced == 0 or (
                ctx.unmapped > 0 and ctx.referenced < g.referenced_threshold)):
            ctx.result = sr.SCAN_LACK_REFERENCED_PAGE
        else:
            ctx.result = sr.SCAN_SUCCEED
            ctx.bitmap_prefix = np.concatenate(([0], np.cumsum(pr)))
            nodes = f.node[heads[pr]]
            ctx.node = int(np.bincount(nodes).argmax()) if nodes.size else 0
            ctx.result = pol.walk(self, ctx)
        self._emit("mm_khugepaged_scan_pmd", mm=self._mm_ptr(mm), scan_pfn=scan_pfn,
                   referenced=ctx.referenced, none_or_zero=ctx.none_or_zero,
                   status=ctx.result, unmapped=ctx.unmapped)
        self._record_scan((pmd << g.pmd_order, ctx.result, cc.is_khugepaged))
        return ctx

    def _record_scan(self, entry: tuple[int, str, bool]) -> None:
        self.scans.append(entry)
        self.scan_pages.append(self.pages_scanned)

    def _refcount_ok(self, heads: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``folio_expected_ref_count == refcount`` per PTE (pins make it false)."""
        f = self.sys.folios
        ok = np.ones(mask.shape, dtype=bool)
        idx = np.flatnonzero(mask)
        if not idx.size:
            return ok
        uh, inv = np.unique(heads[idx], return_inverse=True)
        orders = f.order[uh]
        exp = np.empty(uh.size, dtype=np.int64)
        small = orders == 0
        exp[small] = f.mapcount[uh[small]]
        for j in np.flatnonzero(~small).tolist():
            exp[j] = f.folio_mapcount(int(uh[j]))
        sizes = np.left_shift(1, orders.astype(np.int64))
        exp += np.where((f.flags[uh] & PG_SWAPCACHE) > 0, sizes, 0)
        ok[idx] = (f.refcount[uh] == exp)[inv]
        return ok

    def _count_scan_abort(self, result: str) -> None:
        c = self.sys.counters
        name = {sr.SCAN_EXCEED_NONE_PTE: ("thp_scan_exceed_none_pte", "collapse_exceed_none_pte"),
                sr.SCAN_EXCEED_SWAP_PTE: ("thp_scan_exceed_swap_pte", "collapse_exceed_swap_pte"),
                sr.SCAN_EXCEED_SHARED_PTE: ("thp_scan_exceed_share_pte",
                                            "collapse_exceed_shared_pte")}.get(result)
        if name is None:
            return
        c.count_vm_event(name[0])
        if self.policy.scan_counts_mthp_stats:
            c.count_mthp_stat(self.sys.geometry.pmd_order, name[1])

    # --- one attempt -----------------------------------------------------------------
    def collapse_huge_page(self, ctx: ScanCtx, order: int, off: int) -> str:
        """``collapse_huge_page(order, offset)``: one collapse attempt."""
        ctx.lock_dropped = True
        r = self._collapse(ctx, order, off)
        self.attempts.append(Attempt(ctx.pmd << self.sys.geometry.pmd_order, order, off, r,
                                     ctx.cc.is_khugepaged, len(self.scans)))
        ctx.attempts.append((order, off, r))
        fields = {"mm": self._mm_ptr(ctx.mm), "isolated": int(r == sr.SCAN_SUCCEED), "status": r}
        if self.policy.name != "legacy":
            fields["order"] = order
        self._emit("mm_collapse_huge_page", **fields)
        return r

    def _alloc(self, ctx: ScanCtx, order: int, vpn: int) -> tuple[int, str]:
        """``alloc_charge_folio``."""
        sys = self.sys
        c = sys.counters
        pol = self.policy
        pmd_order = sys.geometry.pmd_order
        head = -1
        if order not in self.alloc_fail_orders:
            nodes = [ctx.node] if sys.buddy.nr_nodes > 1 else [None]
            for node in nodes:
                head = sys.buddy.alloc(order, node, fallback=node is None)
                if head >= 0:
                    break
        if head < 0:
            if order == pmd_order:
                c.count_vm_event("thp_collapse_alloc_failed")
            if pol.mthp_alloc_stats:
                c.count_mthp_stat(order, "collapse_alloc_failed")
            return -1, sr.SCAN_ALLOC_HUGE_PAGE_FAIL
        if order == pmd_order:
            c.count_vm_event("thp_collapse_alloc")
        if pol.mthp_alloc_stats:
            c.count_mthp_stat(order, "collapse_alloc")
        if not sys.memcg.try_charge_order(order):
            sys.buddy.free(head, order)
            return -1, sr.SCAN_CGROUP_CHARGE_FAIL
        sys.folios.init_folio(head, order, sys.buddy.node_of(head), vpn)
        if order:
            c.count_mthp_stat(order, "nr_anon")
        return head, sr.SCAN_SUCCEED

    def _revalidate(self, ctx: ScanCtx, order: int) -> str:
        """``hugepage_vma_revalidate``: the mm, the VMA, the whole PMD range, the order."""
        mm = ctx.mm
        g = self.sys.geometry
        if mm.exiting or mm.thp_disable == 1:
            return sr.SCAN_ANY_PROCESS
        start = ctx.pmd << g.pmd_order
        vma = mm.vmas.find_from(start)
        if vma is None:
            return sr.SCAN_VMA_NULL
        if vma.start > start or vma.end < start + g.hpage_pmd_nr:
            return sr.SCAN_ADDRESS_RANGE
        tva = TVA_KHUGEPAGED if ctx.cc.is_khugepaged else TVA_FORCED_COLLAPSE
        if not thp_vma_allowable_orders(self.sys, mm, vma, tva, 1 << order):
            return sr.SCAN_VMA_CHECK
        if not vma.anon_vma:
            return sr.SCAN_PAGE_ANON
        ctx.vma = vma
        return sr.SCAN_SUCCEED

    def _collapse(self, ctx: ScanCtx, order: int, off: int) -> str:
        sys = self.sys
        g = sys.geometry
        mm = ctx.mm
        pt = mm.pt
        pmd_vpn = ctx.pmd << g.pmd_order
        head, r = self._alloc(ctx, order, pmd_vpn + off)
        if r != sr.SCAN_SUCCEED:
            return r

        def fail(result: str) -> str:
            sys.free_folio(head)  # the unused new folio
            return result

        r = self._revalidate(ctx, order)
        if r != sr.SCAN_SUCCEED:
            return fail(r)
        if ctx.pmd in pt.huge:
            return fail(sr.SCAN_PMD_MAPPED)
        if pt.row(ctx.pmd) is None:
            return fail(self._pmd_missing(mm, ctx.pmd))
        if ctx.unmapped > 0:
            r = self._swapin(ctx, order, off)
            if r != sr.SCAN_SUCCEED:
                return fail(r)
        # write lock, revalidate again, PMD unchanged: nothing can change in between here
        r = self._isolate(ctx, order, off)
        if r != sr.SCAN_SUCCEED:
            return fail(r)
        self._copy_and_install(ctx, order, off, head)
        return sr.SCAN_SUCCEED

    def _swapin(self, ctx: ScanCtx, order: int, off: int) -> str:
        """``__collapse_huge_page_swapin``: PMD faults swap entries in; mTHP refuses."""
        from thpsim.mm.memory import OOMError, do_swap_page

        sys = self.sys
        g = sys.geometry
        pt = ctx.mm.pt
        row = pt.row(ctx.pmd)
        n = 1 << order
        kinds = pt.kind[row, off : off + n]
        swaps = np.flatnonzero(kinds == PTE_SWAP)
        swapped_in = 0
        r = sr.SCAN_SUCCEED
        if swaps.size and order != g.pmd_order:
            sys.counters.count_mthp_stat(order, "collapse_exceed_swap_pte")
            r = sr.SCAN_EXCEED_SWAP_PTE
        else:
            try:
                for i in swaps.tolist():
                    do_swap_page(sys, ctx.mm, ctx.vma, row, off + i, False)
                    swapped_in += 1
            except OOMError:
                r = sr.SCAN_FAIL
            if swapped_in:
                self.lru_batch.drain()
        fields = {"mm": self._mm_ptr(ctx.mm), "swapped_in": swapped_in,
                  "referenced": ctx.referenced, "ret": r}
        if self.policy.name != "legacy":
            fields["order"] = order
        self._emit("mm_collapse_huge_page_swapin", **fields)
        return r

    def _isolate(self, ctx: ScanCtx, order: int, off: int) -> str:
        """``__collapse_huge_page_isolate`` over the attempted range."""
        sys = self.sys
        g = sys.geometry
        pol = self.policy
        cc = ctx.cc
        pt = ctx.mm.pt
        row = pt.row(ctx.pmd)
        n = 1 << order
        kinds = pt.kind[row, off : off + n]
        flags = pt.flags[row, off : off + n]
        pfns = pt.pfn[row, off : off + n].astype(np.int64)
        f = sys.folios
        nz = (kinds == PTE_NONE) | (kinds == PTE_ZERO)
        pr = kinds == PTE_PRESENT
        heads = np.zeros(n, dtype=np.int64)
        if pr.any():
            heads[pr] = f.heads_of(pfns[pr])
        hflags = f.flags[heads]
        horder = np.where(pr, f.order[heads], -1)
        cands: list[tuple[int, int, str]] = []
        none_limit = pol.isolate_none_limit(sys, cc, ctx.vma, order)
        if none_limit is not None:
            cands.append((_first(nz & (np.cumsum(nz) > none_limit)), 0, sr.SCAN_EXCEED_NONE_PTE))
        cands.append((_first(~nz & ~pr), 0, sr.SCAN_PTE_NON_PRESENT))
        cands.append((_first(pr & ((flags & F_UFFD_WP) > 0)), 1, sr.SCAN_PTE_UFFD_WP))
        if pol.lazyfree_check and cc.is_khugepaged and not ctx.vma.flags & VM_DROPPABLE:
            lazy = pr & ((hflags & PG_LAZYFREE) > 0) & ((flags & F_DIRTY) == 0)
            cands.append((_first(lazy), 2, sr.SCAN_PAGE_LAZYFREE))
        if ctx.shared_row is not None:
            shared = ctx.shared_row[off : off + n] & pr
        else:  # own mappings are counted over the whole table, not just this range
            shared = rmap.shared_mask_row(sys, pt.kind[row], pt.pfn[row])[off : off + n] & pr
        shared_limit = pol.isolate_shared_limit(sys, cc, order)
        shared_rank, order_rank = (4, 3) if pol.order_check_before_shared else (3, 4)
        if shared_limit is not None:
            cands.append((_first(shared & (np.cumsum(shared) > shared_limit)), shared_rank,
                          sr.SCAN_EXCEED_SHARED_PTE))
        if order != g.pmd_order:
            cands.append((_first(pr & (horder >= order)), order_rank,
                          sr.SCAN_PTE_MAPPED_HUGEPAGE))
        # lock / refcount / LRU isolation happen once per folio, at its first PTE
        firsts = pr.copy()
        if (horder > 0).any():
            _, first_idx = np.unique(np.where(pr, heads, -1), return_index=True)
            firsts[:] = False
            firsts[first_idx] = True
            firsts &= pr
        cands.append((_first(firsts & ((hflags & PG_LOCKED) > 0)), 5, sr.SCAN_PAGE_LOCK))
        cands.append((_first(firsts & ~self._refcount_ok(heads, firsts)), 6, sr.SCAN_PAGE_COUNT))
        cands.append((_first(firsts & ((hflags & PG_LRU) == 0)), 7, sr.SCAN_DEL_PAGE_LRU))
        idx, _, r = min(cands)
        young = pr & (((flags & F_YOUNG) > 0) | ((hflags & (PG_YOUNG | PG_REFERENCED)) > 0))
        referenced = int(young[:idx].sum()) if cc.is_khugepaged else 0
        isolated_upto = idx
        if idx == n:
            r = sr.SCAN_SUCCEED
            if cc.is_khugepaged and referenced == 0:
                r = sr.SCAN_LACK_REFERENCED_PAGE
        else:
            self._count_isolate_fail(r, order)
        upto = min(idx, n - 1)
        looked = np.flatnonzero(pr[: upto + 1])
        self._emit_isolate(ctx, int(heads[looked[-1]]) if looked.size else -1,
                           int(nz[: upto + 1].sum()), referenced, r, order)
        if r != sr.SCAN_SUCCEED:
            self._release_pte_pages(heads, pr, horder, isolated_upto)
        return r

    def _emit_isolate(self, ctx, scan_pfn, none_or_zero, referenced, r, order) -> None:
        fields = {"scan_pfn": scan_pfn, "none_or_zero": none_or_zero,
                  "referenced": referenced, "status": r}
        if self.policy.name != "legacy":
            fields["order"] = order
        self._emit("mm_collapse_huge_page_isolate", **fields)

    def _count_isolate_fail(self, r: str, order: int) -> None:
        c = self.sys.counters
        pmd = order == self.sys.geometry.pmd_order
        mthp = self.policy.mthp_alloc_stats  # per-size collapse_* files exist
        if r == sr.SCAN_EXCEED_NONE_PTE:
            if pmd:
                c.count_vm_event("thp_scan_exceed_none_pte")
            if mthp:
                c.count_mthp_stat(order, "collapse_exceed_none_pte")
        elif r == sr.SCAN_EXCEED_SHARED_PTE:
            if pmd:
                c.count_vm_event("thp_scan_exceed_share_pte")
            if mthp:
                c.count_mthp_stat(order, "collapse_exceed_shared_pte")

    def _release_pte_pages(self, heads, pr, horder, upto: int) -> None:
        """``release_pte_pages``: put isolated folios back through the LRU batch —
        order-0 folios walking the PTEs downwards, then the large ones."""
        small = np.flatnonzero(pr[:upto] & (horder[:upto] == 0))
        for i in small[::-1].tolist():
            self.lru_batch.add(int(heads[i]))
        large = heads[:upto][pr[:upto] & (horder[:upto] > 0)]
        for h in dict.fromkeys(large.tolist()):
            self.lru_batch.add(int(h))

    def _copy_and_install(self, ctx: ScanCtx, order: int, off: int, head: int) -> None:
        """``__collapse_huge_page_copy`` + install (PMD map, or PTE-mapped folio)."""
        sys = self.sys
        g = sys.geometry
        mm = ctx.mm
        pt = mm.pt
        f = sys.folios
        row = pt.row(ctx.pmd)
        n = 1 << order
        sl = slice(off, off + n)
        kinds = pt.kind[row, sl].copy()
        pfns = pt.pfn[row, sl].astype(np.int64)
        pr = kinds == PTE_PRESENT
        content = np.zeros(n, dtype=np.int64)
        content[pr] = f.content[pfns[pr]]
        f.content[head : head + n] = content
        filled = int(n - pr.sum())  # none/zero slots become zero-filled pages
        pt.kind[row, sl] = PTE_NONE
        rmap.folio_remove_ptes(sys, pfns[pr])
        mm.rss_anon += filled
        self.pages_filled += filled
        writable = F_WRITE if ctx.vma.flags & VM_WRITE else 0
        if order == g.pmd_order:
            pt.free_table(ctx.pmd)  # the table is deposited under the huge PMD
            pt.huge[ctx.pmd] = [head, F_YOUNG | F_DIRTY | writable]
            rmap.folio_add_pmd(sys, head)
            rmap.deferred_split_folio(sys, head, partially_mapped=False)
        else:
            new = np.arange(head, head + n, dtype=np.int64)
            pt.kind[row, sl] = PTE_PRESENT
            pt.pfn[row, sl] = new
            pt.flags[row, sl] = F_YOUNG | F_DIRTY | writable
            rmap.folio_add_ptes(sys, new)
        self.lru_batch.add(head)  # a large folio: flushes the batch

    # --- MADV_COLLAPSE ----------------------------------------------------------------
    def madvise_collapse(self, mm: MM, start: int, end: int) -> int:
        """``madvise_collapse`` over ``[start, end)`` (vpn): PMD order only.

        Returns 0 if every PMD range ends up PMD-mapped, else the errno of the
        last failure (per the policy's ``madvise_collapse_errno``); a hole in the
        range gives ``-ENOMEM``.
        """
        vmas = mm.vmas.overlapping(start, end)
        covered = sum(min(v.end, end) - max(v.start, start) for v in vmas)
        for vma in vmas:
            r = self._madvise_collapse_vma(mm, vma, max(start, vma.start), min(end, vma.end))
            if r:
                return r
        return 0 if covered == end - start else -errno.ENOMEM

    def _madvise_collapse_vma(self, mm: MM, vma: VMA, start: int, end: int) -> int:
        sys = self.sys
        g = sys.geometry
        nr = g.hpage_pmd_nr
        if not thp_vma_allowable_orders(sys, mm, vma, TVA_FORCED_COLLAPSE, 1 << g.pmd_order):
            return -errno.EINVAL
        self.lru_batch.drain()  # lru_add_drain_all
        cc = CollapseControl(is_khugepaged=False)
        hstart = -(-start // nr) * nr
        hend = end // nr * nr
        thps = 0
        last_fail = sr.SCAN_FAIL
        pol = self.policy
        dropped = False
        addr = hstart
        total = (hend - hstart) // nr
        while addr < hend:
            if dropped:
                ctx = ScanCtx(mm, vma, addr >> g.pmd_order, cc, 0)
                r = self._revalidate(ctx, g.pmd_order)
                if r != sr.SCAN_SUCCEED:
                    last_fail = r
                    break
                vma = ctx.vma
                hend = min(hend, vma.end // nr * nr)
            result, dropped = self.collapse_single_pmd(mm, vma, addr, cc)
            addr += nr
            if result in (sr.SCAN_SUCCEED, sr.SCAN_PMD_MAPPED):
                thps += 1
                continue
            last_fail = result
            if result not in pol.madvise_continue:
                break
        return 0 if thps == total else pol.madvise_errno(last_fail)
