"""Mapcounts, sharing and freeing of anon folios (twin of mm/rmap.c + folio_put).

A PTE mapping adds one to the page's ``mapcount`` and one reference to the
folio; a PMD mapping adds one to the folio's entire mapcount and one
reference.  A folio whose references drop to zero goes back to the buddy
allocator.  Removing some but not all mappings of a large folio makes it
*partially mapped* and queues it for deferred split (``deferred_split_folio``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from thpsim.mm.folio import PG_DEFERRED, PG_PARTIALLY_MAPPED, PG_SWAPCACHE
from thpsim.mm.pgtable import PTE_PRESENT

if TYPE_CHECKING:
    from thpsim.mm.mm import MM
    from thpsim.system import System

__all__ = [
    "deferred_split_folio",
    "folio_add_new_ptes",
    "folio_add_pmd",
    "folio_add_ptes",
    "folio_maybe_mapped_shared",
    "folio_put_if_unused",
    "folio_remove_pmd",
    "folio_remove_ptes",
    "own_mappings",
    "shared_mask_row",
]


def folio_add_ptes(sys: System, pfns: np.ndarray) -> None:
    """``folio_add_anon_rmap_ptes`` for PTEs mapping ``pfns`` (distinct pages)."""
    f = sys.folios
    pfns = np.asarray(pfns, dtype=np.int64)
    if pfns.size == 0:
        return
    f.mapcount[pfns] += 1
    heads = f.heads_of(pfns)
    uh, cnt = np.unique(heads, return_counts=True)
    f.refcount[uh] += cnt.astype(np.int32)


def folio_add_new_ptes(sys: System, head: int, nr: int) -> None:
    """Map all ``nr`` pages of folio ``head`` once each (a new folio; no lookups)."""
    f = sys.folios
    f.mapcount[head : head + nr] += 1
    f.refcount[head] += nr


def folio_add_pmd(sys: System, head: int) -> None:
    """``folio_add_anon_rmap_pmd``."""
    f = sys.folios
    f.entire[head] = f.entire.get(head, 0) + 1
    f.refcount[head] += 1


def folio_remove_pmd(sys: System, head: int) -> None:
    """``folio_remove_rmap_pmd`` + ``folio_put``."""
    f = sys.folios
    f.entire[head] -= 1
    if f.entire[head] == 0:
        del f.entire[head]
    f.refcount[head] -= 1
    _after_unmap(sys, head)


def folio_remove_ptes(sys: System, pfns: np.ndarray) -> None:
    """``folio_remove_rmap_ptes`` + ``folio_put`` for PTEs that mapped ``pfns``."""
    f = sys.folios
    pfns = np.asarray(pfns, dtype=np.int64)
    if pfns.size == 0:
        return
    f.mapcount[pfns] -= 1
    heads = f.heads_of(pfns)
    uh, cnt = np.unique(heads, return_counts=True)
    f.refcount[uh] -= cnt.astype(np.int32)
    orders = f.order[uh]
    small = uh[orders == 0]
    if small.size:
        dead = small[f.refcount[small] == 0]
        if dead.size:
            sys.free_folios_order0(dead)
    for head in uh[orders > 0].tolist():
        _after_unmap(sys, head)


def _after_unmap(sys: System, head: int) -> None:
    f = sys.folios
    if f.refcount[head] == 0:
        sys.free_folio(head)
        return
    order = int(f.order[head])
    if order < 2 or f.test(head, PG_PARTIALLY_MAPPED):
        return
    n = 1 << order
    if f.entire.get(head, 0) == 0:
        mapped = f.mapcount[head : head + n]
        if (mapped == 0).any() and (mapped > 0).any():
            deferred_split_folio(sys, head, partially_mapped=True)


def deferred_split_folio(sys: System, head: int, partially_mapped: bool) -> None:
    """``deferred_split_folio``: queue a large folio for the split shrinker."""
    f = sys.folios
    order = int(f.order[head])
    if order <= 1 or f.test(head, PG_SWAPCACHE):
        return
    if partially_mapped:
        if not f.test(head, PG_PARTIALLY_MAPPED):
            f.set(head, PG_PARTIALLY_MAPPED)
            sys.counters.count_mthp_stat(order, "split_deferred")
            sys.counters.count_mthp_stat(order, "nr_anon_partially_mapped")
            if order == sys.geometry.pmd_order:
                sys.counters.count_vm_event("thp_deferred_split_page")
    elif not sys.settings.shrink_underused:
        return
    if not f.test(head, PG_DEFERRED):
        f.set(head, PG_DEFERRED)
        sys.deferred[head] = None


def folio_put_if_unused(sys: System, head: int) -> None:
    """Free ``head`` if nothing references it any more."""
    if sys.folios.refcount[head] == 0:
        sys.free_folio(head)


def own_mappings(sys: System, mm: MM, head: int) -> int:
    """How many mappings of folio ``head`` belong to ``mm`` (PMD counts 1).

    Without mremap a folio stays at the virtual address where it was created,
    so this mm's mappings of it all lie in one PMD window.
    """
    f = sys.folios
    vpn = f.vpn.get(head)
    if vpn is None:
        return 1 if f.mapcount[head] > 0 else 0
    pmd = vpn >> sys.geometry.pmd_order
    huge = mm.pt.huge.get(pmd)
    if huge is not None and huge[0] == head:
        return 1
    row = mm.pt.row(pmd)
    if row is None:
        return 0
    n = f.nr_pages(head)
    kinds = mm.pt.kind[row]
    pf = mm.pt.pfn[row]
    return int(np.count_nonzero((kinds == PTE_PRESENT) & (pf >= head) & (pf < head + n)))


def folio_maybe_mapped_shared(sys: System, mm: MM, head: int) -> bool:
    """``folio_maybe_mapped_shared``: order 0: mapcount > 1; large: another mm maps it."""
    f = sys.folios
    if f.order[head] == 0:
        return bool(f.mapcount[head] > 1)
    return f.folio_mapcount(head) > own_mappings(sys, mm, head)


def shared_mask_row(sys: System, kinds: np.ndarray, pfns: np.ndarray) -> np.ndarray:
    """Per-PTE "maybe mapped shared" for one whole PTE table row (vectorised).

    Pass the whole row: a large folio's own mappings are counted in it.
    """
    f = sys.folios
    present = kinds == PTE_PRESENT
    out = np.zeros(kinds.shape, dtype=bool)
    if not present.any():
        return out
    idx = np.flatnonzero(present)
    pf = pfns[idx].astype(np.int64)
    heads = f.heads_of(pf)
    orders = f.order[heads]
    small = orders == 0
    out[idx[small]] = f.mapcount[pf[small]] > 1
    if (~small).any():
        lh = heads[~small]
        uh, inv, own = np.unique(lh, return_inverse=True, return_counts=True)
        total = np.array([f.folio_mapcount(int(h)) for h in uh], dtype=np.int64)
        out[idx[~small]] = (total > own)[inv]
    return out

