"""thpmaps-compatible THP counters, computed from per-page arrays.

The kernel ships ``tools/mm/thpmaps``, which reports for every VMA how its
present pages are mapped by THPs (large folios).  This module reproduces its
counters (same labels, same kB values) from the arrays that
:func:`thpsim.host.pagemap.read_range` returns, without loops over pages.
It is an independent implementation of thpmaps' documented definitions:

* Only present pages whose ``/proc/kpageflags`` has ``KPF_THP`` take part
  (anonymous and file large folios, including the huge zero page, which has no
  ``KPF_ANON`` and so counts as *file*).
* They are cut into *runs*: maximal stretches where both the virtual and the
  physical page number go up by one.
* In a run, pages before the first folio head are *partial* (the run starts
  inside a folio).  If the last folio of the run continues physically beyond
  the run's end, its pages are *partial* as well.  Every other folio is fully
  and contiguously mapped: its pages count under its order (the floor of log2
  of the pages from its head to the next head or the end) as *aligned* when its
  first virtual page is a multiple of its size, else *unaligned*.
* PMD-mapped memory is not taken from pagemap but from smaps
  (``AnonHugePages``; ``ShmemPmdMapped + FilePmdMapped`` for files) and is
  subtracted (clamped at zero) from the aligned PMD-order count.
* ``--cont`` blocks: naturally aligned blocks of ``2**order`` pages inside one
  run with no folio head after their first page (so one folio, whole or not),
  minus the PMD-mapped pages.
* One quirk is kept for compatibility: the anon/file type of a partially
  mapped last folio is taken from the page just before its head in the
  compacted THP array (the last element when the head is the first one).

Values are in kB (pages × page size / 1024).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "SMAPS_ADDITIVE",
    "cont_order",
    "counter_kind",
    "counter_labels",
    "percent",
    "thp_counters",
]

KPF_ANON = 1 << 12
KPF_COMPOUND_HEAD = 1 << 15
KPF_THP = 1 << 22

#: The numeric, additive smaps fields thpmaps adds with ``--inc-smaps``.
SMAPS_ADDITIVE = (
    "Size", "Rss", "Pss", "Pss_Dirty", "Shared_Clean", "Shared_Dirty", "Private_Clean",
    "Private_Dirty", "Referenced", "Anonymous", "KSM", "LazyFree", "AnonHugePages",
    "ShmemPmdMapped", "FilePmdMapped", "Shared_Hugetlb", "Private_Hugetlb", "Swap", "SwapPss",
    "Locked",
)


def _kb(pages: int, page_size: int) -> int:
    return pages * page_size >> 10


def counter_labels(cont_orders: tuple[int, ...] = (), *, page_size: int = 4096,
                   pmd_order: int = 9) -> list[str]:
    """Every counter label, in thpmaps' order (PMD first, then PTE sizes, partial, cont)."""
    def size(order: int) -> int:
        return _kb(1 << order, page_size)

    out = [f"anon-thp-pmd-aligned-{size(pmd_order)}kB", f"file-thp-pmd-aligned-{size(pmd_order)}kB"]
    for kind in ("anon", "file"):
        for align in ("aligned", "unaligned"):
            out += [f"{kind}-thp-pte-{align}-{size(o)}kB" for o in range(2, pmd_order + 1)]
        out.append(f"{kind}-thp-pte-partial")
    for c in cont_orders:
        out += [f"anon-cont-pmd-aligned-{size(c)}kB", f"file-cont-pmd-aligned-{size(c)}kB",
                f"anon-cont-pte-aligned-{size(c)}kB", f"file-cont-pte-aligned-{size(c)}kB"]
    return out


def counter_kind(label: str) -> str | None:
    """``"anon"`` or ``"file"`` for a THP counter, None for an smaps field."""
    kind = label.partition("-")[0]
    return kind if kind in ("anon", "file") and "-" in label else None


def percent(value: int, total: int) -> str:
    """thpmaps' percentage suffix: ``" ( 50%)"``, or ``""`` when ``total`` is 0."""
    return f" ({value / total:3.0%})" if total > 0 else ""


def cont_order(text: str, *, page_size: int = 4096, pmd_order: int = 9) -> int:
    """The order of a ``--cont`` size (``"64K"``, ``"2M"``, ``"131072"``).

    Raises
    ------
    ValueError
        Not an integer with an optional K/M/G unit, fewer than 2 pages, not a
        power-of-2 number of pages, or above the PMD order.
    """
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip()
    unit = units.get(t[-1:].lower(), 1)
    if unit != 1:
        t = t[:-1]
    if not t.isdigit():
        raise ValueError(f"--cont {text!r}: expected an integer size with an optional K/M/G unit")
    size = int(t) * unit
    pages = size // page_size
    if pages < 2:
        raise ValueError(f"--cont {text!r}: the size must be at least 2 pages")
    if pages * page_size != size or pages & (pages - 1):
        raise ValueError(f"--cont {text!r}: the size must be a power-of-2 number of pages")
    order = int(math.log2(pages))
    if order > pmd_order:
        raise ValueError(f"--cont {text!r}: the size must not exceed the PMD size")
    return order


def thp_counters(vpn: np.ndarray, pfn: np.ndarray, kflags: np.ndarray, order: np.ndarray, *,
                 anon_pmd_kb: int = 0, file_pmd_kb: int = 0, cont_orders: tuple[int, ...] = (),
                 page_size: int = 4096, pmd_order: int = 9) -> dict[str, int]:
    """thpmaps' counters of one VMA, in kB.

    Parameters
    ----------
    vpn, pfn, kflags, order : ndarray
        Virtual page number, PFN, ``/proc/kpageflags`` and folio order of the
        VMA's *present* pages, in address order.  ``order`` (-1 when unknown)
        is only read at folio heads, to tell whether the run's last folio
        continues beyond the run (thpmaps reads the next PFN's flags instead).
    anon_pmd_kb, file_pmd_kb : int
        smaps ``AnonHugePages`` and ``ShmemPmdMapped + FilePmdMapped`` (kB).
    cont_orders : tuple of int
        ``--cont`` block orders.
    page_size, pmd_order : int
        Geometry.

    Returns
    -------
    dict of str to int
        Every label of :func:`counter_labels`, in that order.
    """
    out = dict.fromkeys(counter_labels(cont_orders, page_size=page_size, pmd_order=pmd_order), 0)
    kf = np.asarray(kflags, dtype=np.uint64)
    thp = (kf & np.uint64(KPF_THP)) != 0
    v = np.asarray(vpn, dtype=np.int64)[thp]
    p = np.asarray(pfn, dtype=np.int64)[thp]
    od = np.asarray(order, dtype=np.int64)[thp]
    anon = (kf[thp] & np.uint64(KPF_ANON)) != 0
    is_head = (kf[thp] & np.uint64(KPF_COMPOUND_HEAD)) != 0
    n = v.size
    # pages per (anon, order) and per (anon, aligned, order); partial per anon
    nbins = pmd_order + 1
    full = np.zeros((2, 2, nbins), dtype=np.int64)  # [anon][aligned][order]
    partial = np.zeros(2, dtype=np.int64)
    cont = {c: np.zeros(2, dtype=np.int64) for c in cont_orders}
    if n:
        brk = np.ones(n, dtype=bool)
        brk[1:] = (np.diff(v) != 1) | (np.diff(p) != 1)
        run = np.cumsum(brk) - 1
        run_start = np.flatnonzero(brk)
        run_end = np.append(run_start[1:], n)  # exclusive
        heads = np.flatnonzero(is_head)
        hrun = run[heads]
        has_head = np.zeros(run_start.size, dtype=bool)
        has_head[hrun] = True
        first_head = np.full(run_start.size, -1, dtype=np.int64)
        last_head = np.full(run_start.size, -1, dtype=np.int64)
        u, i_first = np.unique(hrun, return_index=True)
        first_head[u] = heads[i_first]
        u, i_last = np.unique(hrun[::-1], return_index=True)
        last_head[u] = heads[::-1][i_last]

        # pages before the run's first head belong to a folio entered in its middle
        front = np.where(has_head, first_head, run_end) - run_start
        np.add.at(partial, anon[run_start].astype(np.int64), front)

        # the run's last folio continues physically past the run: partial too
        r = np.flatnonzero(has_head)
        lh = last_head[r]
        nr_lh = np.where(od[lh] >= 0, np.left_shift(1, np.maximum(od[lh], 0)), 0)
        beyond = p[lh] + nr_lh > p[run_end[r] - 1] + 1
        back_runs = r[beyond]
        blh = last_head[back_runs]
        np.add.at(partial, anon[(blh - 1) % n].astype(np.int64), run_end[back_runs] - blh)
        eff_end = run_end.copy()
        eff_end[back_runs] = blh

        # whole folios: from a head to the next head of the run or the run's end
        same = np.zeros(heads.size, dtype=bool)
        same[:-1] = hrun[1:] == hrun[:-1]
        nxt = np.append(heads[1:], n)
        bound = np.where(same, nxt, eff_end[hrun])
        keep = bound > heads  # drops a partial last folio (its bound is its head)
        h = heads[keep]
        nr = bound[keep] - h
        o = np.floor(np.log2(nr)).astype(np.int64)
        cnt = np.left_shift(1, o)
        aligned = (v[h] % cnt) == 0
        ok = o < nbins
        np.add.at(full, (anon[h][ok].astype(np.int64), aligned[ok].astype(np.int64), o[ok]),
                  cnt[ok])

        # --cont: aligned blocks inside a run holding no head after their first page
        head_cum = np.cumsum(is_head)
        for c in cont_orders:
            nrc = 1 << c
            i = np.flatnonzero((v % nrc == 0) & (p % nrc == 0))
            i = i[i + nrc <= run_end[run[i]]]
            inner_heads = head_cum[i + nrc - 1] - head_cum[i]
            i = i[inner_heads == 0]
            np.add.at(cont[c], anon[i].astype(np.int64), nrc)

    pmd_kb = {1: anon_pmd_kb, 0: file_pmd_kb}
    for a, kind in ((1, "anon"), (0, "file")):
        pmd_pages = (pmd_kb[a] << 10) // page_size
        full[a, 1, pmd_order] = max(0, int(full[a, 1, pmd_order]) - pmd_pages)
        out[f"{kind}-thp-pmd-aligned-{_kb(1 << pmd_order, page_size)}kB"] = pmd_kb[a]
        for al, align in ((1, "aligned"), (0, "unaligned")):
            for o in range(2, nbins):
                out[f"{kind}-thp-pte-{align}-{_kb(1 << o, page_size)}kB"] = _kb(
                    int(full[a, al, o]), page_size)
        out[f"{kind}-thp-pte-partial"] = _kb(int(partial[a]), page_size)
        for c in cont_orders:
            size = _kb(1 << c, page_size)
            out[f"{kind}-cont-pmd-aligned-{size}kB"] = pmd_kb[a]
            out[f"{kind}-cont-pte-aligned-{size}kB"] = _kb(max(0, int(cont[c][a]) - pmd_pages),
                                                           page_size)
    return out
