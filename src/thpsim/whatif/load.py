"""Load a :class:`~thpsim.snapshot.core.Snapshot` into the model.

The page layout follows :func:`thpsim.whatif.layout.normalise` (docs/whatif.md,
"Loading").  Everything is built with the model's public pieces: VMAs go into the
mm's VMA list as the snapshot has them (no merging, so a PMD window straddling two
snapshot VMAs stays unscannable, as on the real kernel), folios come from
``System.alloc_folio`` / ``alloc_order0_bulk``, mappings update mapcounts and
refcounts through :mod:`thpsim.mm.rmap`, and swap entries take slots of a swap
device.  Every present page is *young* (a live process's resident memory was used;
the snapshot cannot tell), clean-LRU, unlocked and unpinned.  Pages with mapcount
above 1 are also mapped, read-only, by a *holder* process that khugepaged does not
scan (the other sharers are not in the snapshot).  Finally ``khugepaged_enter_vma``
runs for every VMA, as the first THP-eligible fault on it would have done.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from thpsim.mm import rmap
from thpsim.mm.geometry import geometry_for
from thpsim.mm.pgtable import (
    F_DIRTY,
    F_WRITE,
    F_YOUNG,
    HUGE_ZERO_PFN,
    PTE_PRESENT,
    PTE_SWAP,
    PTE_ZERO,
)
from thpsim.mm.vma import (
    VM_DROPPABLE,
    VM_HUGEPAGE,
    VM_LOCKED,
    VM_NOHUGEPAGE,
    VM_READ,
    VM_SPECIAL,
    VM_UFFD_MINOR,
    VM_UFFD_MISSING,
    VM_UFFD_WP,
    VM_WRITE,
    VMA,
    new_anon_vma_id,
)
from thpsim.snapshot.core import Snapshot, SnapshotVma
from thpsim.system import System
from thpsim.whatif.layout import (
    K_HUGE,
    K_HZERO,
    K_PRESENT,
    K_SWAP,
    K_ZERO,
    Loaded,
    folio_heads,
    normalise,
)

if TYPE_CHECKING:
    from thpsim.process import Process

__all__ = ["load_snapshot_into_model", "model_settings", "settings_notes", "vma_flags"]

_FLAG_BITS = {"rd": VM_READ, "wr": VM_WRITE, "hg": VM_HUGEPAGE, "nh": VM_NOHUGEPAGE,
              "lo": VM_LOCKED, "um": VM_UFFD_MISSING, "uw": VM_UFFD_WP, "ui": VM_UFFD_MINOR,
              "io": VM_SPECIAL, "pf": VM_SPECIAL, "dd": VM_SPECIAL, "mm": VM_SPECIAL,
              "dp": VM_DROPPABLE}


def vma_flags(vma: SnapshotVma) -> int:
    """Model ``VM_*`` flags of a snapshot VMA (from its smaps ``VmFlags``)."""
    out = 0
    for f in vma.flag_set:
        out |= _FLAG_BITS.get(f, 0)
    return out


def _split_settings(snap: Snapshot, sys: System) -> tuple[dict[str, str], list[str]]:
    """The snapshot's settings the model has (relative paths), and a note on the rest."""
    writable = set(sys.settings.writable_paths())
    skipped = []
    base = {}
    for k, v in snap.settings.items():
        rel = k.removeprefix("/sys/kernel/mm/transparent_hugepage/")
        if rel in writable:
            base[rel] = v
        else:
            skipped.append(rel)
    notes = [f"{len(skipped)} snapshot setting(s) the model does not have were ignored "
             f"({', '.join(sorted(skipped)[:3])}{', ...' if len(skipped) > 3 else ''})"
             ] if skipped else []
    return base, notes


def settings_notes(snap: Snapshot, sys: System) -> list[str]:
    """What :func:`model_settings` skips of ``snap``'s settings on ``sys``, as notes."""
    return _split_settings(snap, sys)[1]


def model_settings(snap: Snapshot, overrides: Mapping[str, str] | None,
                   sys: System) -> list[str]:
    """Apply the snapshot's THP settings, then ``overrides``, to ``sys``.

    Snapshot keys the model does not have are skipped (returned as notes); a bad
    override raises ``ValueError`` naming the key.
    """
    s = sys.settings
    base, notes = _split_settings(snap, sys)
    try:
        s.apply(base)
    except OSError as e:
        raise ValueError(f"snapshot setting {e.filename}: {e.strerror}") from None
    for k, v in (overrides or {}).items():
        try:
            s.write(k, str(v))
        except OSError as e:
            raise ValueError(f"setting {k}={v}: {e.strerror}") from None
    return notes


def _memory_pages(ld: Loaded, nr: int, max_order: int) -> int:
    """Physical pages: every folio, room for one new folio per PMD window, slack."""
    kind = ld.kind
    folio_pages = int(np.count_nonzero(kind == K_PRESENT)) + int(np.count_nonzero(kind == K_HUGE))
    big = (ld.order > 0) & (kind == K_PRESENT)
    # a kept folio is counted whole (its unmapped pages too): bound by its order
    # at every page
    folio_pages += int(np.left_shift(1, ld.order[big].astype(np.int64)).sum())
    windows = sum((ld.windows(v)[1] - ld.windows(v)[0])
                  for v in np.flatnonzero(ld.loaded).tolist())
    total = folio_pages + 2 * windows + 64 * nr
    block = 1 << max_order
    return -(-total // block) * block


def load_snapshot_into_model(snap: Snapshot, policy: str,
                             settings: Mapping[str, str] | None = None,
                             layout: Loaded | None = None) -> tuple[System, Process]:
    """Build a model machine holding ``snap``'s process.

    Parameters
    ----------
    snap : Snapshot
    policy : {"v11", "linux-7.2", "legacy"}
    settings : mapping of str to str, optional
        sysfs overrides (relative paths) applied over the snapshot's settings.
    layout : Loaded, optional
        The snapshot's normalised layout, if already computed.

    Returns
    -------
    (System, Process)
        The machine (``System.check()`` passes) and the snapshot's process
        (:func:`settings_notes` tells which snapshot settings the model skipped).

    Raises
    ------
    ValueError
        A bad setting (one line naming the key) or a malformed snapshot.
    """
    snap.validate()
    g = geometry_for(snap.page_size)
    ld = layout if layout is not None else normalise(snap, g.pmd_order)
    nr = g.hpage_pmd_nr
    n_swap = int(np.count_nonzero(ld.kind == K_SWAP))
    mem = _memory_pages(ld, nr, g.max_page_order)
    sys = System(memory=mem * g.page_size, page_size=g.page_size, policy=policy,
                 swap=(n_swap + 16) * g.page_size if n_swap else None)
    model_settings(snap, settings, sys)
    proc = sys.spawn(snap.comm or "main")
    mm = proc.mm
    offs = snap.vma_offsets()
    holder = None
    for v in np.flatnonzero(ld.loaded).tolist():
        sv = snap.vmas[v]
        lo, hi = int(offs[v]), int(offs[v + 1])
        kind = ld.kind[lo:hi]
        # an anon_vma as the snapshot says, or because anonymous pages need one
        anon = bool(sv.anon_vma) or bool(
            ((kind == K_PRESENT) | (kind == K_SWAP) | (kind == K_HUGE)).any())
        vma = VMA(sv.start // g.page_size, sv.end // g.page_size, vma_flags(sv),
                  new_anon_vma_id() if anon else 0, sv.name)
        mm.vmas.insert(vma)
        _load_vma(sys, mm, vma, ld, lo, hi)
        if ld.held[lo:hi].any():
            if holder is None:
                holder = sys.spawn("holder")
            _hold(sys, mm, holder.mm, vma, ld, lo, hi)
    for vma in mm.vmas:
        sys.khugepaged.enter_vma(mm, vma)
    return sys, proc


def _set_ptes(sys: System, mm, vpns: np.ndarray, kind: int, pfn: np.ndarray,
              flags: np.ndarray | int) -> None:
    g = sys.geometry
    if vpns.size == 0:
        return
    pmds, inv = np.unique(vpns >> g.pmd_order, return_inverse=True)
    rows = []
    for pmd in pmds.tolist():
        row = mm.pt.row(pmd)
        rows.append(row if row is not None else mm.pt.alloc_table(pmd))
    r = np.asarray(rows, dtype=np.int64)[inv]
    col = vpns & (g.hpage_pmd_nr - 1)
    mm.pt.kind[r, col] = kind
    mm.pt.pfn[r, col] = pfn
    mm.pt.flags[r, col] = flags


def _load_vma(sys: System, mm, vma: VMA, ld: Loaded, lo: int, hi: int) -> None:
    g = sys.geometry
    nr = g.hpage_pmd_nr
    f = sys.folios
    kind = ld.kind[lo:hi]
    base = vma.start
    writable = F_WRITE if vma.flags & VM_WRITE else 0
    # PMD mappings
    for i in np.flatnonzero(kind[::1] == K_HUGE)[::nr].tolist():
        vpn = base + i
        head, status = sys.alloc_folio(g.pmd_order, vpn)
        assert status == sys.ALLOC_OK, "model memory sized too small"
        f.content[head : head + nr] = sys.next_tokens(nr)
        mm.pt.huge[vpn >> g.pmd_order] = [head, F_YOUNG | F_DIRTY | writable]
        rmap.folio_add_pmd(sys, head)
        mm.rss_anon += nr
        rmap.deferred_split_folio(sys, head, partially_mapped=False)
    for i in np.flatnonzero(kind == K_HZERO)[::nr].tolist():
        mm.pt.huge[(base + i) >> g.pmd_order] = [HUGE_ZERO_PFN, 0]
    # zero pages and swap entries
    z = np.flatnonzero(kind == K_ZERO)
    _set_ptes(sys, mm, base + z, PTE_ZERO, np.zeros(z.size, dtype=np.int64), 0)
    s = np.flatnonzero(kind == K_SWAP)
    if s.size:
        dev = sys.swap
        slots = dev.alloc_slots(s.size)
        dev.count[slots] = 1
        dev.content[slots] = sys.next_tokens(s.size)
        _set_ptes(sys, mm, base + s, PTE_SWAP, slots, 0)
        mm.rss_swap += int(s.size)
    # PTE-mapped folios
    pr = np.flatnonzero(kind == K_PRESENT)
    if not pr.size:
        return
    order = ld.order[lo:hi][pr]
    head = folio_heads(ld, lo, hi)[pr]
    pfn = np.empty(pr.size, dtype=np.int64)
    small = order == 0
    if small.any():
        got = sys.alloc_order0_bulk(int(small.sum()))
        assert got is not None, "model memory sized too small"
        pfn[small] = got
    big = np.flatnonzero(~small)
    if big.size:
        starts = np.flatnonzero(np.concatenate(([True], head[big][1:] != head[big][:-1])))
        for j, k in enumerate(starts.tolist()):
            end = starts[j + 1] if j + 1 < starts.size else big.size
            o = int(order[big[k]])
            h, status = sys.alloc_folio(o, base + int(head[big[k]]))
            assert status == sys.ALLOC_OK, "model memory sized too small"
            sel = big[k:end]
            pfn[sel] = h + (pr[sel] - head[sel])
    f.content[pfn] = sys.next_tokens(pfn.size)
    held = ld.held[lo:hi][pr]
    flags = np.where(held, F_YOUNG | F_DIRTY, F_YOUNG | F_DIRTY | writable).astype(np.uint8)
    _set_ptes(sys, mm, base + pr, PTE_PRESENT, pfn, flags)
    rmap.folio_add_ptes(sys, pfn)
    mm.rss_anon += int(pr.size)
    if big.size:
        heads = np.unique(f.heads_of(pfn[big]))
        for h in heads.tolist():
            n = f.nr_pages(h)
            m = f.mapcount[h : h + n]
            if f.order[h] >= 2 and (m == 0).any():
                rmap.deferred_split_folio(sys, h, partially_mapped=True)


def _hold(sys: System, mm, hmm, vma: VMA, ld: Loaded, lo: int, hi: int) -> None:
    """Map the pages with mapcount > 1 in the holder too (read-only, not scanned)."""
    g = sys.geometry
    hv = vma.copy(anon_vma=new_anon_vma_id())
    hmm.vmas.insert(hv)
    idx = np.flatnonzero(ld.held[lo:hi])
    vpns = vma.start + idx
    pmds = vpns >> g.pmd_order
    col = vpns & (g.hpage_pmd_nr - 1)
    u, inv = np.unique(pmds, return_inverse=True)
    rows = np.array([mm.pt.row(p) for p in u.tolist()], dtype=np.int64)[inv]
    pfn = mm.pt.pfn[rows, col].astype(np.int64)  # the owner's PTEs give the pfns
    _set_ptes(sys, hmm, vpns, PTE_PRESENT, pfn, F_YOUNG)
    rmap.folio_add_ptes(sys, pfn)
    hmm.rss_anon += int(idx.size)
