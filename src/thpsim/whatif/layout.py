"""The layout a snapshot has once loaded into the model (one rule set for everyone).

The loader (:mod:`thpsim.whatif.load`), the vectorised decision
(:mod:`thpsim.whatif.decide`) and the metrics all work from this normalised view,
so that they agree on what the model holds:

* VMAs that are not anonymous (a file path or a pseudo file other than ``[heap]``,
  ``[stack]``, ``[anon:...]``) or that contain pages in state ``OTHER`` are not
  loaded (khugepaged's anonymous path never sees them).
* A window of ``PTRS_PER_PMD`` pages wholly inside one VMA whose pages are all
  ``pmd_mapped``, present, of the PMD order and in folio order becomes a PMD
  mapping; a window wholly of ``HUGE_ZERO`` pages becomes a huge-zero PMD.  Any
  other ``pmd_mapped`` page is taken as PTE-mapped and any other ``HUGE_ZERO`` page
  as a PTE-mapped zero page.
* A recorded large folio (order 1 .. PMD order) is kept when its head is naturally
  aligned in virtual space, the whole folio lies inside the VMA, and the present
  pages in its range are exactly the (consecutive) pages claiming that head and
  order; otherwise its pages become order-0 folios.
* A page is *shared* (``folio_maybe_mapped_shared``) when its mapcount is above 1,
  or, in a large folio, when any of the folio's pages has mapcount above 1.  The
  loader maps exactly the pages with mapcount above 1 in a holder process.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thpsim.snapshot.core import HUGE_ZERO, OTHER, PRESENT, Snapshot

__all__ = ["K_HUGE", "K_HZERO", "K_NONE", "K_PRESENT", "K_SWAP", "K_ZERO", "Loaded",
           "folio_heads", "is_anonymous", "normalise"]

#: page kinds of the loaded layout
K_NONE, K_PRESENT, K_ZERO, K_SWAP, K_HUGE, K_HZERO = range(6)

# snapshot state -> kind before the PMD-window and folio rules
_KIND_OF_STATE = np.array([K_NONE, K_PRESENT, K_ZERO, K_ZERO, K_SWAP, K_NONE], dtype=np.uint8)


def is_anonymous(name: str) -> bool:
    """Whether a maps name is an anonymous mapping's (khugepaged's anon path)."""
    return name in ("", "[heap]", "[stack]") or name.startswith("[anon")


@dataclass
class Loaded:
    """The normalised layout of a snapshot (arrays parallel to the snapshot's pages).

    Attributes
    ----------
    loaded : ndarray of bool
        Per VMA: loaded into the model.
    kind : ndarray of uint8
        ``K_*`` per page (``K_NONE`` for pages of VMAs not loaded).
    order : ndarray of int8
        Loaded folio order of present pages (PTE- or PMD-mapped), -1 elsewhere.
    shared : ndarray of bool
        ``folio_maybe_mapped_shared`` of PTE-mapped present pages.
    held : ndarray of bool
        PTE-mapped present pages the holder process maps too (mapcount > 1).
    """

    snap: Snapshot
    loaded: np.ndarray
    kind: np.ndarray
    order: np.ndarray
    shared: np.ndarray
    held: np.ndarray
    pmd_nr: int

    @property
    def offsets(self) -> np.ndarray:
        return self.snap.vma_offsets()

    def windows(self, v: int) -> tuple[int, int]:
        """Page-index range ``[lo, hi)`` of VMA ``v``'s PMD windows wholly inside it
        (``lo == hi`` when it has none); ``hi - lo`` is a multiple of ``pmd_nr``."""
        ps, nr = self.snap.page_size, self.pmd_nr
        vma = self.snap.vmas[v]
        s, e = vma.start // ps, vma.end // ps
        hs, he = -(-s // nr) * nr, e // nr * nr
        off = int(self.offsets[v])
        if he <= hs:
            return off, off
        return off + hs - s, off + he - s


def normalise(snap: Snapshot, pmd_order: int) -> Loaded:
    """Apply the loading rules of the module docstring to ``snap``."""
    nr = 1 << pmd_order
    n = snap.nr_pages
    offs = snap.vma_offsets()
    kind = _KIND_OF_STATE[snap.state]
    order = np.where(snap.state == PRESENT, snap.order, -1).astype(np.int8)
    loaded = np.ones(len(snap.vmas), dtype=bool)
    for v, vma in enumerate(snap.vmas):
        lo, hi = int(offs[v]), int(offs[v + 1])
        if not is_anonymous(vma.name) or (snap.state[lo:hi] == OTHER).any():
            loaded[v] = False
            kind[lo:hi] = K_NONE
            order[lo:hi] = -1
    ld = Loaded(snap, loaded, kind, order, np.zeros(n, dtype=bool), np.zeros(n, dtype=bool), nr)
    for v in np.flatnonzero(loaded).tolist():
        _pmd_windows(ld, v, pmd_order)
    pte = kind == K_PRESENT
    for v in np.flatnonzero(loaded).tolist():
        _large_folios(ld, v, pte, pmd_order)
    held = pte & (snap.mapcount > 1)
    ld.held = held
    ld.shared |= held & (order == 0)
    return ld


def _pmd_windows(ld: Loaded, v: int, pmd_order: int) -> None:
    """PMD mappings and huge zero PMDs of VMA ``v``."""
    snap, nr = ld.snap, ld.pmd_nr
    lo, hi = ld.windows(v)
    if hi == lo:
        return
    kv = ld.kind[lo:hi].reshape(-1, nr)
    st = snap.state[lo:hi].reshape(-1, nr)
    cand = np.flatnonzero(snap.pmd_mapped[lo:hi].reshape(-1, nr).all(axis=1))
    if cand.size:
        ok = ((st[cand] == PRESENT).all(axis=1)
              & (snap.order[lo:hi].reshape(-1, nr)[cand] == pmd_order).all(axis=1)
              & (snap.folio_index[lo:hi].reshape(-1, nr)[cand]
                 == np.arange(nr, dtype=np.int32)).all(axis=1))
        kv[cand[ok]] = K_HUGE
    kv[(st == HUGE_ZERO).all(axis=1)] = K_HZERO


def _large_folios(ld: Loaded, v: int, pte: np.ndarray, pmd_order: int) -> None:
    """Keep VMA ``v``'s PTE-mapped large folios that are aligned, inside the VMA, and
    whose range holds exactly the present pages claiming them; split the others."""
    snap = ld.snap
    offs = ld.offsets
    lo, hi = int(offs[v]), int(offs[v + 1])
    order = ld.order[lo:hi]
    big = np.flatnonzero(pte[lo:hi] & (order > 0))
    if not big.size:
        return
    o = order[big]
    h = big - snap.folio_index[lo:hi][big]
    size = np.left_shift(1, np.minimum(o, 30).astype(np.int32))
    vpn0 = snap.vmas[v].start // snap.page_size
    ok = ((o <= pmd_order) & (((vpn0 + h) & (size - 1)) == 0) & (h >= 0)
          & (h + size <= hi - lo))
    starts = np.flatnonzero(np.concatenate(([True], (h[1:] != h[:-1]) | (o[1:] != o[:-1]))))
    lens = np.diff(np.append(starts, big.size))
    hs, es = h[starts], h[starts] + size[starts]
    good_run = ok[starts]
    # overlapping claimed ranges of candidate folios break both (a candidate lies in
    # one PMD window, so the rules stay local to it); then the ranges are ordered
    # and the present pages in each are counted in one pass
    c = np.flatnonzero(good_run)
    if c.size > 1:
        over = es[c[:-1]] > hs[c[1:]]
        good_run[c[:-1][over]] = False
        good_run[c[1:][over]] = False
    g = np.flatnonzero(good_run)
    if g.size:
        bounds = np.empty(2 * g.size, dtype=np.int64)
        bounds[0::2], bounds[1::2] = hs[g], es[g]
        padded = np.zeros(hi - lo + 1, dtype=np.uint8)
        padded[:-1] = pte[lo:hi]
        inside = np.add.reduceat(padded, bounds, dtype=np.int32)[0::2]
        good_run[g] = inside == lens[g]
    good = np.repeat(good_run, lens)
    order[big[~good]] = 0
    mc = snap.mapcount[lo:hi][big] > 1
    run_shared = np.logical_or.reduceat(mc, starts)
    ld.shared[lo:hi][big] = np.where(good, np.repeat(run_shared, lens), mc)


def folio_heads(ld: Loaded, lo: int, hi: int) -> np.ndarray:
    """Page index (from ``lo``) of the loaded folio head of every page in ``[lo, hi)``
    (the page itself outside large folios)."""
    idx = np.arange(hi - lo, dtype=np.int64)
    big = ld.order[lo:hi] > 0
    idx[big] -= ld.snap.folio_index[lo:hi][big]
    return idx
