"""The invariant checker: recomputes every derived count from the page tables.

What it checks (``AssertionError`` with a message on the first violation):

* every present PTE and huge PMD points into a live folio; nothing is mapped
  outside a VMA;
* per-page mapcounts and PMD mapcounts equal what the page tables say;
* ``refcount == mapcount + nr_pages * swapcache + transient pins`` for every
  live folio, and no live folio has refcount 0 (a leak);
* ``MM_ANONPAGES`` / ``MM_SWAPENTS`` of every mm;
* swap slot counts equal the swap PTEs referring to them; the swap cache and
  ``PG_swapcache`` agree;
* buddy conservation (free + allocated + reserved == total), no page both free
  and in a live folio, the buddy allocator's own invariants, memcg usage;
* the deferred-split queue holds only live large folios flagged as queued.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from thpsim.mm.folio import PG_DEFERRED, PG_SWAPCACHE
from thpsim.mm.pgtable import HUGE_ZERO_PFN, PTE_NONE, PTE_PRESENT, PTE_SWAP

if TYPE_CHECKING:
    from thpsim.system import System

__all__ = ["check_system"]


def _fail(msg: str) -> None:
    raise AssertionError(msg)


def check_system(sys: System) -> None:
    """Check all invariants of ``sys``."""
    g = sys.geometry
    f = sys.folios
    total = f.total_pages
    nr = g.hpage_pmd_nr
    mapcount = np.zeros(total, dtype=np.int64)
    entire: dict[int, int] = {}
    swap_refs = np.zeros(sys.swap.nr_slots if sys.swap else 0, dtype=np.int64)
    live = f.order >= 0
    for proc in sys.processes.values():
        mm = proc.mm
        pt = mm.pt
        if set(pt.tables) & set(pt.huge):
            _fail(f"pid {mm.pid}: a PMD is both a table and huge")
        anon = swap = 0
        for pmd, (head, _flags) in pt.huge.items():
            ws = pmd << g.pmd_order
            vma = mm.vmas.find(ws)
            if vma is None or vma.end < ws + nr:
                _fail(f"pid {mm.pid}: huge PMD {pmd} not inside one VMA")
            if head == HUGE_ZERO_PFN:
                continue
            if not live[head] or f.order[head] != g.pmd_order:
                _fail(f"pid {mm.pid}: huge PMD {pmd} maps pfn {head}, not a live PMD folio")
            entire[head] = entire.get(head, 0) + 1
            anon += nr
        for pmd, row in pt.tables.items():
            ws = pmd << g.pmd_order
            kinds = pt.kind[row]
            inside = np.zeros(nr, dtype=bool)
            vpns = np.arange(ws, ws + nr)
            for v in mm.vmas.overlapping(ws, ws + nr):
                inside |= (vpns >= v.start) & (vpns < v.end)
            if (kinds[~inside] != PTE_NONE).any():
                _fail(f"pid {mm.pid}: PMD {pmd} has entries outside any VMA")
            present = kinds == PTE_PRESENT
            pf = pt.pfn[row, present].astype(np.int64)
            if pf.size:
                if (pf < 0).any() or (pf >= total).any():
                    _fail(f"pid {mm.pid}: PMD {pmd} maps a pfn out of range")
                try:
                    f.heads_of(pf)
                except KeyError as e:
                    _fail(f"pid {mm.pid}: PMD {pmd}: {e}")
                np.add.at(mapcount, pf, 1)
            anon += int(present.sum())
            sw = kinds == PTE_SWAP
            if sw.any():
                if sys.swap is None:
                    _fail(f"pid {mm.pid}: swap entries without a swap device")
                np.add.at(swap_refs, pt.pfn[row, sw].astype(np.int64), 1)
            swap += int(sw.sum())
        if anon != mm.rss_anon:
            _fail(f"pid {mm.pid}: rss_anon {mm.rss_anon} but page tables map {anon}")
        if swap != mm.rss_swap:
            _fail(f"pid {mm.pid}: rss_swap {mm.rss_swap} but page tables hold {swap}")
    if not np.array_equal(mapcount, f.mapcount):
        bad = int(np.flatnonzero(mapcount != f.mapcount)[0])
        _fail(f"pfn {bad}: mapcount {f.mapcount[bad]} but {mapcount[bad]} PTEs map it")
    if entire != f.entire:
        _fail(f"PMD mapcounts {f.entire} but page tables say {entire}")
    heads = np.flatnonzero(live)
    orders = f.order[heads].astype(np.int64)
    sizes = np.left_shift(1, orders)
    cs = np.concatenate(([0], np.cumsum(mapcount)))
    folio_map = cs[heads + sizes] - cs[heads]
    folio_map += np.array([entire.get(int(h), 0) for h in heads], dtype=np.int64) \
        if entire else 0
    swc = (f.flags[heads] & PG_SWAPCACHE) > 0
    pins = np.array([f.pins.get(int(h), 0) for h in heads], dtype=np.int64) \
        if f.pins else 0
    expected = folio_map + np.where(swc, sizes, 0) + pins
    if not np.array_equal(expected, f.refcount[heads]):
        i = int(np.flatnonzero(expected != f.refcount[heads])[0])
        _fail(f"folio {heads[i]}: refcount {f.refcount[heads[i]]}, expected {expected[i]}")
    if (f.refcount[heads] <= 0).any():
        _fail(f"folio {heads[f.refcount[heads] <= 0][0]} is live with refcount 0 (leak)")
    # pages of a live folio: only the head carries an order
    covered = np.zeros(total + 1, dtype=np.int64)
    np.add.at(covered, heads, 1)
    np.add.at(covered, heads + sizes, -1)
    in_folio = np.cumsum(covered)[:total] > 0
    if int(in_folio.sum()) != int(sizes.sum()):
        _fail("live folios overlap")
    if (live & ~in_folio).any() or int(live.sum()) != heads.size:
        _fail("folio table inconsistent")
    # swap
    if sys.swap is not None:
        dev = sys.swap
        if not np.array_equal(swap_refs, dev.count):
            bad = int(np.flatnonzero(swap_refs != dev.count)[0])
            _fail(f"swap slot {bad}: count {dev.count[bad]} but {swap_refs[bad]} entries")
        for slot, head in dev.cache.items():
            if not live[head] or not f.flags[head] & PG_SWAPCACHE or dev.folio_slot[head] != slot:
                _fail(f"swap cache slot {slot} -> {head} inconsistent")
        if int((f.flags[heads] & PG_SWAPCACHE > 0).sum()) != len(dev.cache):
            _fail("PG_swapcache folios and the swap cache disagree")
        if dev.nr_free + int((dev.count > 0).sum()) != dev.nr_slots:
            _fail("swap slots leaked")
    # buddy
    b = sys.buddy
    b.check()
    fo = b._free_order
    fheads = np.flatnonzero(fo >= 0)
    fsizes = np.left_shift(1, fo[fheads].astype(np.int64))
    if int(fsizes.sum()) + int(sizes.sum()) + b.reserved_pages != total:
        _fail(f"buddy conservation: free {int(fsizes.sum())} + folios {int(sizes.sum())}"
              f" + reserved {b.reserved_pages} != {total}")
    free_cov = np.zeros(total + 1, dtype=np.int64)
    np.add.at(free_cov, fheads, 1)
    np.add.at(free_cov, fheads + fsizes, -1)
    if (np.cumsum(free_cov)[:total].astype(bool) & in_folio).any():
        _fail("a page is both free and part of a live folio")
    if sys.memcg.usage != int(sizes.sum()):
        _fail(f"memcg usage {sys.memcg.usage} != {int(sizes.sum())} pages in folios")
    for head in sys.deferred:
        if not live[head] or f.order[head] < 2 or not f.flags[head] & PG_DEFERRED:
            _fail(f"deferred-split queue holds {head}, not a queued large folio")
