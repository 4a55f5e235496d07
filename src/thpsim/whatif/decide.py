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


def _pack(mask: np.ndarray) -> np.ndarray:
    """Rows of ``mask`` as bits: column ``c`` is bit ``c % 8`` of byte ``c // 8``."""
    return np.packbits(mask, axis=1, bitorder="little")


_WORD = {3: np.uint8, 4: np.uint16, 5: np.uint32, 6: np.uint64}


def _block_words(packed: np.ndarray, k: int) -> np.ndarray:
    """The bits of every ``2**k``-page block: ``(r, blocks)`` words for ``k <= 6``,
    ``(r, blocks, 2**(k-6))`` 64-bit words above (little-endian: page ``i`` of a
    block is bit ``i`` of its word)."""
    r = packed.shape[0]
    if k == 2:  # two 4-bit blocks per byte
        return np.stack((packed & np.uint8(0xF), packed >> np.uint8(4)), axis=2).reshape(r, -1)
    if k in _WORD:
        return np.ascontiguousarray(packed).view(_WORD[k])
    return np.ascontiguousarray(packed).view(np.uint64).reshape(r, -1, 1 << (k - 6))


def _block_count(packed: np.ndarray, k: int) -> np.ndarray:
    """Set bits per ``2**k``-page block (int16)."""
    c = np.bitwise_count(_block_words(packed, k))
    return (c if k <= 6 else c.sum(axis=2, dtype=np.int16)).astype(np.int16)


def _first_set(w: np.ndarray, none: int) -> np.ndarray:
    """Index of the lowest set bit of each word, ``none`` for a zero word: the bits
    below the lowest set bit are exactly those of ``(w & -w) - 1``."""
    one = w.dtype.type(1)
    low = w & (~w + one)
    return np.where(w == 0, np.int16(none), np.bitwise_count(low - one).astype(np.int16))


def _block_first(packed: np.ndarray, k: int) -> np.ndarray:
    """Per ``2**k``-page block, the index of its first set page, ``2**k`` if none."""
    n = 1 << k
    w = _block_words(packed, k)
    if k <= 6:
        return _first_set(w, n)
    # a zero word must lose to any set bit of a later word
    per = _first_set(w, 32767).astype(np.int32) + 64 * np.arange(w.shape[2], dtype=np.int32)
    return np.minimum(per.min(axis=2), n).astype(np.int16)


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
    # K_NONE is 0; any() over 8-byte words is 8x fewer elements than over bytes
    rows8 = np.ascontiguousarray(kind).view(np.uint64) if nr % 8 == 0 else kind
    empty = ~huge & ~rows8.any(axis=1)
    no_table, none = _CODE[p.pmd_missing[0]], _CODE[p.pmd_missing[1]]
    result[huge] = R_PMD_MAPPED
    result[empty] = np.where(pud_table[empty], none, no_table)
    examined[huge | empty] = 1
    tab = np.flatnonzero(~huge & ~empty)
    atts: list[tuple[np.ndarray, ...]] = []
    single_order = True  # the walk attempted at most one order
    if tab.size:
        # counts on the whole block (no gathers: a comparison and a count per kind
        # run at memory speed); a PMD-level window counts nothing and is masked
        # present and swap as bit rows: counts (and the walk's block statistics) on
        # 64-page words instead of bytes
        is_pr = kind == K_PRESENT
        pk_pr = _pack(is_pr)
        pk_sw = _pack(kind == K_SWAP)
        n_pr = _block_count(pk_pr, p.pmd_order)[:, 0][tab].astype(np.int64)
        n_sw = _block_count(pk_sw, p.pmd_order)[:, 0][tab].astype(np.int64)
        n_nz = nr - n_pr - n_sw  # a table row holds none, zero, present or swap
        pk_shared = _pack(shared) if shared.any() else None
        n_sh = (_block_count(pk_shared, p.pmd_order)[:, 0][tab].astype(np.int64)
                if pk_shared is not None else np.zeros(tab.size, dtype=np.int64))
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
            sel = slice(None) if rows.size == n else rows  # all walk: views, no gathers
            pk_sh = pk_shared[sel] & pk_pr[sel] if pk_shared is not None else None
            wres, wcplx, watts, single_order = _mthp_walk(pk_pr[sel], pk_sw[sel], pk_sh, is_pr[sel],
                                            order[sel], mthp, p)
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
    if single_order:
        # each part is already in (window, offset) order and the parts have no window
        # in common: a stable sort by window merges them (timsort: two runs, linear)
        perm = np.argsort(win, kind="stable")
    else:
        perm = np.lexsort((-o.astype(np.int64), off, win))  # the walk is pre-order, left first
    return Decision(result, examined, cplx, win[perm], o[perm], off[perm],
                    cols[3].astype(np.int8)[perm], cols[4].astype(np.int32)[perm],
                    cols[5].astype(np.int32)[perm])


def _mthp_walk(pk_pr: np.ndarray, pk_sw: np.ndarray, pk_sh: np.ndarray | None,
               pr: np.ndarray, order: np.ndarray, mthp: int, p: DecideParams):
    """The order walk below the PMD order for windows whose scan succeeded and that
    make no PMD attempt.  Both mTHP policies visit a block iff no ancestor block
    collapsed or stopped the descent (v11's depth-first stack and 7.2's linear walk
    visit the same blocks in the same pre-order).

    ``pk_*`` are the windows' present, swap and shared-present pages as bit rows
    (:func:`_pack`); ``pr`` and ``order`` the byte rows (for the few LRU-batch
    checks and the largest folio order per block)."""
    r, nr = pr.shape
    cplx = np.zeros(r, dtype=bool)
    got: list[tuple[np.ndarray, ...]] = []
    order_first = p.policy == "v11"  # isolate: order check before the shared check
    # blocks the walk still descends into, at order `lowered_k` (None: all of them)
    lowered: np.ndarray | None = None
    lowered_k = p.pmd_order
    # the largest folio order meeting each block, bottom-up from 4-page blocks: a folio
    # of order >= k meeting an order-k block covers it (folios are aligned), so the
    # block's first page of such a folio is its first present page
    maxo = {2: np.maximum(np.maximum(order[:, 0::4], order[:, 1::4]),
                          np.maximum(order[:, 2::4], order[:, 3::4]))}
    for k in range(3, mthp.bit_length()):  # up to the largest mTHP order walked
        maxo[k] = np.maximum(maxo[k - 1][:, 0::2], maxo[k - 1][:, 1::2])
    for k in range(p.pmd_order - 1, 1, -1):
        n = 1 << k
        if not mthp & (1 << k):
            if not (mthp & ((1 << k) - 1)):
                break
            continue
        cnt = _block_count(pk_pr, k)
        att = cnt >= n - p.mthp_max_none(k)
        visited = None
        if lowered is not None:
            visited = np.repeat(lowered, 1 << (lowered_k - k), axis=1)
            att &= visited
        if not att.any():
            continue
        swp = _block_count(pk_sw, k) > 0
        # first shared page and first page of a folio of order >= k, n if none
        fsh = (_block_first(pk_sh, k) if pk_sh is not None
               else np.full(cnt.shape, n, dtype=np.int16))
        fbig = np.where(maxo[k] >= k, _block_first(pk_pr, k), np.int16(n))
        fail = np.minimum(fsh, fbig)
        is_shared = (fsh < fbig) | ((fsh == fbig) & (not order_first))
        failed = att & ~swp & (fail < n)
        success = att & ~swp & ~failed
        mapped = failed & ~is_shared

        # isolated order-0 pages left in the LRU batch (no large folio to flush it)
        rows, blocks = np.nonzero(failed & (fail > 0))
        if rows.size:
            lo = blocks * n
            hi = lo + fail[rows, blocks]
            cols = np.arange(nr)[None, :]
            large = pr[rows] & (order[rows] > 0)
            released = large & (cols >= lo[:, None]) & (cols < hi[:, None])
            cplx[rows[~released.any(axis=1)]] = True
        stop = success | mapped
        lowered = ~stop if visited is None else visited & ~stop
        lowered_k = k
        rr, bb = np.nonzero(att)
        # results only where attempted (a fraction of all blocks)
        a_swp, a_ok, a_map = swp[rr, bb], success[rr, bb], mapped[rr, bb]
        resk = np.where(a_swp, R_SWAP, np.where(a_ok, R_SUCCEED,
                                                np.where(a_map, R_MAPPED, R_SHARED)))
        got.append((rr, np.full(rr.size, k), bb * n, resk, cnt[rr, bb]))
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
    return res, cplx, (ww, wo, woff, wr, wp), len(got) <= 1
