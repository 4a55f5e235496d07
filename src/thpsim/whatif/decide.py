"""The vectorised first-scan decision: what khugepaged does to every PMD at once.

For one VMA's PMD windows (an ``(n, PTRS_PER_PMD)`` view of the loaded layout,
:mod:`thpsim.whatif.layout`) this computes, with NumPy over all windows together,
exactly what :meth:`~thpsim.mm.khugepaged.Khugepaged.collapse_scan_pmd` and the
policy's order walk do to a freshly loaded PMD: the scan result, the PTEs examined
and every collapse attempt ``(order, offset, result)`` in the walk's order.

Why it can be vectorised: on a loaded snapshot every present page is young,
on the LRU, unlocked, unpinned and not lazy-free, so the scan's outcome depends
only on where the none/zero PTEs, swap entries and shared pages are (first index
over each limit), and an attempt's outcome only on its range: a PMD attempt
succeeds (its isolate re-checks what the scan checked), an mTHP attempt fails on
a swap entry (``SCAN_EXCEED_SWAP_PTE``, before isolation), at the first shared
page (limit 0) or at the first page of a folio at least as large
(``SCAN_PTE_MAPPED_HUGEPAGE``), and succeeds otherwise.

One thing is not per-PMD: an isolate that fails after isolating order-0 pages
puts them in the per-CPU LRU batch, where they stay off the LRU until a drain,
which depends on what was scanned before.  Such windows are flagged ``complex``
and the caller uses the full model for them.  Windows in a uffd-armed VMA are
complex too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thpsim.mm import scan_result as sr
from thpsim.whatif.layout import K_HUGE, K_HZERO, K_NONE, K_PRESENT, K_SWAP, K_ZERO

__all__ = ["RESULTS", "DecideParams", "Decision", "decide_windows"]

#: result codes used in :class:`Decision` (index = code)
RESULTS = (sr.SCAN_SUCCEED, sr.SCAN_FAIL, sr.SCAN_PMD_MAPPED, sr.SCAN_PMD_NULL, sr.SCAN_PMD_NONE,
           sr.SCAN_NO_PTE_TABLE, sr.SCAN_EXCEED_NONE_PTE, sr.SCAN_EXCEED_SWAP_PTE,
           sr.SCAN_EXCEED_SHARED_PTE, sr.SCAN_LACK_REFERENCED_PAGE,
           sr.SCAN_PTE_MAPPED_HUGEPAGE)
(R_SUCCEED, R_FAIL, R_PMD_MAPPED, R_PMD_NULL, R_PMD_NONE, R_NO_PTE_TABLE, R_NONE, R_SWAP,
 R_SHARED, R_LACK, R_MAPPED) = range(len(RESULTS))
# every other result the model can give (windows it runs: LRU batch pins and so on)
RESULTS += tuple(dict.fromkeys(r for r in (*sr.ENUM_V11, *sr.ENUM_7_2) if r not in RESULTS))
_CODE = {name: i for i, name in enumerate(RESULTS)}
#: windows decided at once (8 MiB of page kinds)
CHUNK = 16384


@dataclass(frozen=True)
class DecideParams:
    """What the decision needs to know about the policy, settings and VMA.

    Attributes
    ----------
    policy : str
    pmd_order : int
    enabled : int
        Bitmask of orders khugepaged may collapse in this VMA
        (``collapse_possible_orders``); non-zero.
    max_ptes_none, max_ptes_swap, max_ptes_shared : int
    pmd_missing : tuple of str
        Results for a none PMD: (no PMD table in the PUD range, PMD table present).
    """

    policy: str
    pmd_order: int
    enabled: int
    max_ptes_none: int
    max_ptes_swap: int
    max_ptes_shared: int
    pmd_missing: tuple[str, str]

    @property
    def nr(self) -> int:
        return 1 << self.pmd_order

    @property
    def pmd_only(self) -> bool:
        return self.enabled == 1 << self.pmd_order

    def scan_none_limit(self) -> int | None:
        nr, m = self.nr, self.max_ptes_none
        if self.policy == "legacy":
            return m
        if self.policy == "v11":
            return m if self.pmd_only else None
        return m if self.pmd_only else nr - 1

    def mthp_max_none(self, order: int) -> int:
        """``collapse_max_ptes_none(order)`` of an mTHP order for khugepaged."""
        nr, m = self.nr, self.max_ptes_none
        if self.policy == "v11":
            if m >= nr // 2:
                m = nr // 2 - 1
            return m >> (self.pmd_order - order)
        return (1 << order) - 1 if m == nr - 1 else 0


@dataclass
class Decision:
    """Per-window outcome of the first scan (windows of one VMA, in address order).

    Attributes
    ----------
    result : ndarray of int8
        Code into :data:`RESULTS` (meaningless where ``complex``).
    examined : ndarray of int32
        PTEs the scan examined (1 for a PMD-level result).
    complex : ndarray of bool
        The decision needs the full model (see the module docstring).
    att_win, att_order, att_off, att_result : ndarray
        Every attempt, sorted by window then in the walk's order.
    att_present, att_swap : ndarray of int32
        Present pages and swap entries in each attempt's range (for copies/bloat).
    """

    result: np.ndarray
    examined: np.ndarray
    complex: np.ndarray
    att_win: np.ndarray
    att_order: np.ndarray
    att_off: np.ndarray
    att_result: np.ndarray
    att_present: np.ndarray
    att_swap: np.ndarray

    def result_names(self) -> list[str]:
        return [RESULTS[c] for c in self.result.tolist()]

    def attempts_of(self, w: int) -> list[tuple[int, int, str]]:
        sel = np.flatnonzero(self.att_win == w)
        return [(int(self.att_order[i]), int(self.att_off[i]), RESULTS[int(self.att_result[i])])
                for i in sel.tolist()]


def _nth_index(mask: np.ndarray, limit: int) -> np.ndarray:
    """Per row: index of the ``limit+1``-th True (rows must have more than ``limit``)."""
    return np.argmax(np.cumsum(mask, axis=1, dtype=np.int32) > limit, axis=1)


def _count4(mask: np.ndarray) -> np.ndarray:
    """Per row, True count of every 4-column block (a block's four bool bytes read as
    one 32-bit word; multiplying by 0x01010101 sums the bytes into the top byte)."""
    r, nr = mask.shape
    words = np.ascontiguousarray(mask).view(np.uint32).reshape(r, nr // 4)
    return ((words * np.uint32(0x01010101)) >> np.uint32(24)).astype(np.int16)


def _first4(mask: np.ndarray) -> np.ndarray:
    """Per row, index (0-3) of the first True in every 4-column block, 4 if none (the
    lowest set byte of the block's 32-bit little-endian word)."""
    r, nr = mask.shape
    w = np.ascontiguousarray(mask).view(np.uint32).reshape(r, nr // 4)
    low = w & (~w + np.uint32(1))
    first = ((low >= 1 << 8).astype(np.int16) + (low >= 1 << 16) + (low >= 1 << 24))
    return np.where(w == 0, np.int16(4), first)



def decide_windows(kind: np.ndarray, order: np.ndarray, shared: np.ndarray,
                   pud_table: np.ndarray, p: DecideParams) -> Decision:
    """Decide the first scan of ``n`` PMD windows of one VMA.

    Parameters
    ----------
    kind, order, shared : ndarray, shape (n, PTRS_PER_PMD)
        The loaded layout's ``kind``, ``order`` and ``shared`` of the windows.
    pud_table : ndarray of bool, shape (n,)
        Whether the window's PUD range has a PMD table (decides ``SCAN_PMD_NULL``
        versus ``SCAN_PMD_NONE`` for a window without a PTE table).
    p : DecideParams

    Returns
    -------
    Decision
    """
    n, nr = kind.shape
    if n > CHUNK:
        # in chunks: the temporaries stay in cache (2-3x faster on large snapshots)
        parts = [decide_windows(kind[i : i + CHUNK], order[i : i + CHUNK],
                                shared[i : i + CHUNK], pud_table[i : i + CHUNK], p)
                 for i in range(0, n, CHUNK)]
        cat = {f: np.concatenate([getattr(d, f) for d in parts]) for f in
               ("result", "examined", "complex", "att_order", "att_off", "att_result",
                "att_present", "att_swap")}
        cat["att_win"] = np.concatenate([d.att_win + i * CHUNK for i, d in enumerate(parts)])
        return Decision(**cat)
    result = np.full(n, R_FAIL, dtype=np.int8)
    examined = np.full(n, nr, dtype=np.int32)
    cplx = np.zeros(n, dtype=bool)
    first = kind[:, 0]
    huge = (first == K_HUGE) | (first == K_HZERO)
    # a window has a PTE table iff some PTE is not none (pte kinds only)
    empty = ~huge & ~kind.any(axis=1)  # K_NONE is 0
    no_table, none = _CODE[p.pmd_missing[0]], _CODE[p.pmd_missing[1]]
    result[huge] = R_PMD_MAPPED
    result[empty] = np.where(pud_table[empty], none, no_table)
    examined[huge | empty] = 1
    tab = np.flatnonzero(~huge & ~empty)
    atts: list[tuple[np.ndarray, ...]] = []
    if tab.size:
        # counts on the whole block (no gathers: a comparison and a count per kind
        # run at memory speed); a PMD-level window counts nothing and is masked
        n_pr = np.count_nonzero(kind == K_PRESENT, axis=1)[tab]
        n_sw = np.count_nonzero(kind == K_SWAP, axis=1)[tab]
        n_nz = nr - n_pr - n_sw  # a table row holds none, zero, present or swap
        n_sh = (np.count_nonzero(shared, axis=1)[tab] if shared.any()
                else np.zeros(tab.size, dtype=np.int64))
        idx = np.full(tab.size, nr, dtype=np.int64)
        why = np.full(tab.size, R_SUCCEED, dtype=np.int8)
        for count, limit, code in ((n_nz, p.scan_none_limit(), R_NONE),
                                   (n_sw, p.max_ptes_swap, R_SWAP),
                                   (n_sh, p.max_ptes_shared, R_SHARED)):
            if limit is None:
                continue
            over = np.flatnonzero(count > limit)
            if over.size:
                k = kind[tab[over]]
                if code == R_NONE:
                    mask = (k == K_NONE) | (k == K_ZERO)
                elif code == R_SWAP:
                    mask = k == K_SWAP
                else:
                    mask = shared[tab[over]] & (k == K_PRESENT)
                at = _nth_index(mask, limit)
                better = at < idx[over]
                idx[over[better]] = at[better]
                why[over[better]] = code
        aborted = idx < nr
        res = np.where(aborted, why, R_SUCCEED).astype(np.int8)
        examined[tab] = np.minimum(idx + 1, nr)
        lack = ~aborted & ((n_pr == 0) | ((n_sw > 0) & (n_pr < nr // 2)))
        res[lack] = R_LACK
        ok = ~aborted & ~lack
        res[ok] = R_FAIL
        if p.policy == "legacy":
            pmd_try = ok
        elif p.enabled & (1 << p.pmd_order):
            m = p.max_ptes_none
            occupied = n_pr + (n_sw if p.policy == "linux-7.2" else 0)
            pmd_try = ok & (occupied >= nr - m)
        else:
            pmd_try = np.zeros(tab.size, dtype=bool)
        res[pmd_try] = R_SUCCEED
        w = tab[pmd_try]
        atts.append((w, np.full(w.size, p.pmd_order), np.zeros(w.size, dtype=np.int64),
                     np.full(w.size, R_SUCCEED), n_pr[pmd_try], n_sw[pmd_try]))
        mthp = p.enabled & ((1 << p.pmd_order) - 1) if p.policy != "legacy" else 0
        walk = np.flatnonzero(ok & ~pmd_try) if mthp else np.zeros(0, dtype=np.int64)
        if walk.size:
            rows = tab[walk]
            k = kind[rows]
            pr = k == K_PRESENT
            wres, wcplx, watts = _mthp_walk(pr, k == K_SWAP, shared[rows] & pr, order[rows],
                                            mthp, p)
            res[walk] = wres
            cplx[rows] = wcplx
            ww, wo, woff, wr, wp = watts
            atts.append((rows[ww], wo, woff, wr, wp, np.zeros(ww.size, dtype=np.int64)))
        result[tab] = res
    if atts:
        cols = [np.concatenate([a[i] for a in atts]) for i in range(6)]
    else:
        cols = [np.zeros(0, dtype=np.int64)] * 6
    win, o, off = cols[0].astype(np.int64), cols[1].astype(np.int8), cols[2].astype(np.int32)
    perm = np.lexsort((-o.astype(np.int64), off, win))  # the walk is pre-order, left first
    return Decision(result, examined, cplx, win[perm], o[perm], off[perm],
                    cols[3].astype(np.int8)[perm], cols[4].astype(np.int32)[perm],
                    cols[5].astype(np.int32)[perm])


def _mthp_walk(pr: np.ndarray, sw: np.ndarray, sh: np.ndarray, order: np.ndarray, mthp: int,
               p: DecideParams):
    """The order walk below the PMD order for windows whose scan succeeded and that
    make no PMD attempt.  Both mTHP policies visit a block iff no ancestor block
    collapsed or stopped the descent (v11's depth-first stack and 7.2's linear walk
    visit the same blocks in the same pre-order)."""
    r, nr = pr.shape
    big_idx = nr + 1
    lowered = np.ones((r, 1), dtype=bool)
    large = pr & (order > 0)
    cplx = np.zeros(r, dtype=bool)
    got: list[tuple[np.ndarray, ...]] = []
    order_first = p.policy == "v11"  # isolate: order check before the shared check
    # per-order block statistics, built bottom-up from 4-page blocks: present count,
    # swap count, first shared page (absolute column; big_idx when none)
    lowest = 2
    pos = np.arange(nr, dtype=np.int16)
    stats = {}
    cnt = _count4(pr)
    swc = _count4(sw)
    start4 = pos[:: 1 << lowest][None, :]
    fsh = np.full((r, nr >> lowest), big_idx, dtype=np.int16)
    if sh.any():
        f4 = _first4(sh)
        fsh = np.where(f4 < 4, start4 + f4, fsh).astype(np.int16)
    # a folio of order >= k meeting an order-k block covers it (folios are aligned),
    # so the block's first page of such a folio is its first present page
    maxo = np.maximum(np.maximum(order[:, 0::4], order[:, 1::4]),
                      np.maximum(order[:, 2::4], order[:, 3::4]))
    f4 = _first4(pr)
    fpr = np.where(f4 < 4, start4 + f4, big_idx).astype(np.int16)
    for k in range(lowest, p.pmd_order):
        stats[k] = (cnt, swc, fsh, maxo, fpr)
        cnt = cnt[:, 0::2] + cnt[:, 1::2]
        swc = swc[:, 0::2] + swc[:, 1::2]
        fsh = np.minimum(fsh[:, 0::2], fsh[:, 1::2])
        maxo = np.maximum(maxo[:, 0::2], maxo[:, 1::2])
        fpr = np.minimum(fpr[:, 0::2], fpr[:, 1::2])
    for k in range(p.pmd_order - 1, 1, -1):
        n = 1 << k
        visited = np.repeat(lowered, 2, axis=1)
        cnt, swc, fsh_abs, maxo, fpr = stats[k]
        if mthp & (1 << k):
            att = visited & (cnt >= n - p.mthp_max_none(k))
        else:
            att = np.zeros(visited.shape, dtype=bool)
        if not att.any():
            lowered = visited
            if not (mthp & ((1 << k) - 1)):
                break
            continue
        nb = nr // n
        starts = (np.arange(nb, dtype=np.int16) * n)[None, :]
        swp = swc > 0
        fsh = np.where(fsh_abs < big_idx, fsh_abs - starts, big_idx)
        fbig = np.where(maxo >= k, fpr - starts, big_idx)
        fail = np.minimum(fsh, fbig)
        is_shared = (fsh < fbig) | ((fsh == fbig) & ~order_first)
        failed = att & ~swp & (fail < n)
        success = att & ~swp & ~failed
        mapped = failed & ~is_shared
        resk = np.where(swp, R_SWAP, np.where(success, R_SUCCEED,
                                              np.where(mapped, R_MAPPED, R_SHARED)))
        # isolated order-0 pages left in the LRU batch (no large folio to flush it)
        rows, blocks = np.nonzero(failed & (fail > 0))
        if rows.size:
            lo = blocks * n
            hi = lo + fail[rows, blocks]
            cols = np.arange(nr)[None, :]
            released = large[rows] & (cols >= lo[:, None]) & (cols < hi[:, None])
            cplx[rows[~released.any(axis=1)]] = True
        lowered = visited & ~(success | mapped)
        rr, bb = np.nonzero(att)
        got.append((rr, np.full(rr.size, k), bb * n, resk[rr, bb], cnt[rr, bb]))
    if got:
        ww, wo, woff, wr, wp = (np.concatenate([g[i] for g in got]) for i in range(5))
    else:
        ww = wo = woff = wr = wp = np.zeros(0, dtype=np.int64)
    res = np.full(r, R_FAIL, dtype=np.int8)
    if ww.size:
        if p.policy == "linux-7.2":
            retry = np.flatnonzero((wr == R_SWAP) | (wr == R_SHARED))
            if retry.size:
                # the last retry failure of each window in walk (pre-)order: the
                # largest offset, then the smallest order
                key = woff[retry].astype(np.int64) * 64 + (63 - wo[retry])
                best = np.full(r, -1, dtype=np.int64)
                np.maximum.at(best, ww[retry], key)
                last = retry[key == best[ww[retry]]]
                res[ww[last]] = wr[last]
        res[ww[wr == R_SUCCEED]] = R_SUCCEED
    return res, cplx, (ww, wo, woff, wr, wp)
