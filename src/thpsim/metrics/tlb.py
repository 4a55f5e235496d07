"""How many TLB entries it takes to map a set of anonymous pages, under simple models.

Models (documented in docs/fidelity.md, "TLB models"):

``x86-64``
    One entry per PTE-mapped 4K page and one per PMD mapping (2M).
``amd``
    As ``x86-64``, plus AMD's PTE coalescing (Zen): up to 4 PTEs that are naturally
    aligned in virtual *and* physical address space (one aligned block of 4 virtual
    pages mapping one aligned block of 4 physical pages), all from one folio, share
    one entry -- present in the block or not, so a partly populated block still
    coalesces the pages it has.
``arm64``
    4K granule with the contiguous bit: a naturally aligned block of 16 PTEs (64K) is
    one entry when all 16 are present and map 16 contiguous, 64K-aligned pages of one
    folio (what ``contpte`` sets up for a 64K-or-larger folio); a PMD mapping is one
    block entry.  Anything else is one entry per PTE.

Real TLBs also have limited capacity per size, separate L1/L2 structures and
replacement; these models count *reach* (entries needed), not misses.
"""

from __future__ import annotations

import numpy as np

__all__ = ["TLB_MODELS", "tlb_entries"]

#: model name -> (PTE coalescing block in pages, requires the whole block present)
TLB_MODELS: dict[str, tuple[int, bool]] = {
    "x86-64": (1, False),
    "amd": (4, False),
    "arm64": (16, True),
}


def tlb_entries(vpn: np.ndarray, pfn: np.ndarray, folio: np.ndarray, pmd_mapped: np.ndarray,
                model: str = "x86-64", pmd_nr: int = 512) -> int:
    """Number of TLB entries needed to map the given pages under ``model``.

    Parameters
    ----------
    vpn, pfn : ndarray of int
        Virtual and physical page numbers of the mapped pages (one element per mapped
        base page; order does not matter, a ``vpn`` must not repeat).
    folio : ndarray of int
        Identity of each page's folio (e.g. its head PFN); pages of different folios
        never share an entry.  Use a unique value per page for the shared zero page.
    pmd_mapped : ndarray of bool
        Pages mapped by a PMD (one entry per distinct PMD window).
    model : {"x86-64", "amd", "arm64"}
    pmd_nr : int
        Pages per PMD.

    Returns
    -------
    int
    """
    try:
        block, whole = TLB_MODELS[model]
    except KeyError:
        raise ValueError(f"unknown TLB model {model!r} (one of {', '.join(TLB_MODELS)})") from None
    vpn = np.asarray(vpn, dtype=np.int64)
    pfn = np.asarray(pfn, dtype=np.int64)
    folio = np.asarray(folio, dtype=np.int64)
    pmd_mapped = np.asarray(pmd_mapped, dtype=bool)
    n_pmd = int(np.unique(vpn[pmd_mapped] // pmd_nr).size) if pmd_mapped.any() else 0
    pte = ~pmd_mapped
    v, p, f = vpn[pte], pfn[pte], folio[pte]
    if block == 1 or v.size == 0:
        return n_pmd + int(v.size)
    delta = p - v
    aligned = (delta % block) == 0
    # pages that can coalesce: key (virtual block, folio, delta); the rest count alone
    va, fa, da = v[aligned] // block, f[aligned], delta[aligned]
    alone = int(v.size - va.size)
    if va.size == 0:
        return n_pmd + alone
    # group sizes of equal (block, folio, delta) keys: lexsort + run boundaries is much
    # cheaper than np.unique(axis=0) on a stacked key array
    order = np.lexsort((da, fa, va))
    va, fa, da = va[order], fa[order], da[order]
    new_group = np.ones(va.size, dtype=bool)
    new_group[1:] = (va[1:] != va[:-1]) | (fa[1:] != fa[:-1]) | (da[1:] != da[:-1])
    starts = np.flatnonzero(new_group)
    counts = np.diff(np.append(starts, va.size))
    if whole:
        # a block is one entry only if all `block` pages are there; else one per page
        full = counts == block
        groups = int(full.sum()) + int(counts[~full].sum())
    else:
        groups = int(starts.size)
    return n_pmd + alone + groups
