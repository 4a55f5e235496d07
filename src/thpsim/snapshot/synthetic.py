"""Synthetic snapshots from a compact SPEC string (grammar in docs/snapshot-format.md).

Example::

    heap:64G,present=0.6,zero=0.05,swap=0.02,shared=0.01,folios=4k:0.5/64k:0.3/2m:0.2,seed=1

One *region* (a VMA) per ``;``-separated item: ``KIND:SIZE`` then ``key=value``
options.  Fractions are of the region's pages.  The generator is vectorised and works
in batches of :data:`BATCH_BLOCKS` PMD blocks, so besides the result (10 bytes per
page) it needs only ~10 bytes per page of one batch.

How pages are placed (realism, not a model of any allocator):

1. Every PMD block gets a *density* ``d`` drawn from ``Beta(m*c, (1-m)*c)`` where
   ``m = present + zero + swap`` and ``c`` is ``cluster`` (small ``c``: blocks are
   mostly nearly empty or nearly full, as in long-running heaps; large ``c``: uniform).
2. ``huge_zero`` picks whole free blocks uniformly (PMD-mapped huge zero page).
3. PMD-sized folios take whole blocks, chosen with probability increasing with ``d``
   (Gumbel top-k); a fraction ``pmd`` of them is PMD-mapped, the rest PTE-mapped.
4. Smaller folio sizes, largest first: every still-free naturally aligned chunk of
   that size becomes a folio with probability ``min(1, k*d)``, ``k`` solved so the
   expected number of pages meets the requested share (a chunk is free when none of
   its pages is taken yet, so folios never overlap and are always aligned).
5. Zero pages and swap entries are placed the same way on the remaining pages.
6. ``shared`` is the probability that a folio is mapped by another process too
   (mapcount 2 and not exclusive; otherwise mapcount 1, exclusive).

Requested fractions are met in expectation; they fall short only when the
density-weighted space runs out (e.g. ``present=0.95`` with ``cluster=0.1``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from thpsim.snapshot.core import (
    HUGE_ZERO,
    PRESENT,
    SWAP,
    ZERO,
    Snapshot,
    SnapshotVma,
)

__all__ = ["BATCH_BLOCKS", "Region", "parse_spec", "synthetic_snapshot"]

PAGE = 4096
PMD_ORDER = 9
PMD_NR = 1 << PMD_ORDER
BATCH_BLOCKS = 8192  # PMD blocks per batch: 4 Mi pages (16 GiB of span)
BASE_FLAGS = "rd wr mr mw me ac"
_KIND_NAME = {"heap": "[heap]", "anon": "", "stack": "[stack]"}
_KIND_BASE = {"heap": 0x5555_5600_0000, "anon": 0x7F00_0000_0000, "stack": 0x7FFC_0000_0000}
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE_RE = re.compile(r"^(\d+)([KMGT]?)(?:I?B)?$", re.IGNORECASE)
_FLAG_RE = re.compile(r"^[a-z]{2}$")


@dataclass
class Region:
    """One region (VMA) of a SPEC: see docs/snapshot-format.md for every option."""

    kind: str
    size: int  # bytes
    present: float = 0.5
    zero: float = 0.0
    huge_zero: float = 0.0
    swap: float = 0.0
    shared: float = 0.0
    pmd: float = 1.0
    cluster: float = 1.0
    folios: dict[int, float] = field(default_factory=lambda: {0: 1.0})  # order -> weight
    flags: tuple[str, ...] = ()
    at: int | None = None


def _size(text: str, where: str) -> int:
    m = _SIZE_RE.match(text.strip())
    if not m:
        raise ValueError(f"{where}: {text!r} is not a size (e.g. 64G, 512M, 4k)")
    return int(m[1]) * _UNITS[m[2].upper()]


def _fraction(text: str, where: str) -> float:
    try:
        f = float(text)
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not a number") from None
    if not 0.0 <= f <= 1.0:
        raise ValueError(f"{where}: {f} is not a fraction in [0, 1]")
    return f


def _folios(text: str, where: str) -> dict[int, float]:
    out: dict[int, float] = {}
    for item in text.split("/"):
        size, sep, weight = item.partition(":")
        if not sep:
            raise ValueError(f"{where}: {item!r} should be SIZE:WEIGHT (e.g. 64k:0.3)")
        nbytes = _size(size, where)
        nr = nbytes // PAGE
        if nbytes % PAGE or nr & (nr - 1) or nr > PMD_NR:
            raise ValueError(f"{where}: folio size {size!r} is not a power of two from 4k to 2m")
        try:
            w = float(weight)
        except ValueError:
            raise ValueError(f"{where}: weight {weight!r} is not a number") from None
        if w < 0:
            raise ValueError(f"{where}: weight {w} is negative")
        order = nr.bit_length() - 1
        out[order] = out.get(order, 0.0) + w
    total = sum(out.values())
    if total <= 0:
        raise ValueError(f"{where}: the weights add up to 0")
    return {o: w / total for o, w in sorted(out.items(), reverse=True) if w > 0}


def parse_spec(spec: str) -> tuple[list[Region], int | None]:
    """Parse a SPEC string into regions and the seed it names (``None`` if none).

    Raises
    ------
    ValueError
        One line naming the region/option that is wrong.
    """
    regions: list[Region] = []
    seed: int | None = None
    items = [s.strip() for s in spec.split(";")]
    if not any(items):
        raise ValueError("synthetic spec is empty (e.g. 'heap:1G,present=0.6')")
    for ri, item in enumerate(items):
        if not item:
            continue
        head, *opts = [p.strip() for p in item.split(",")]
        kind, sep, size = head.partition(":")
        where = f"spec region {ri + 1} ({head!r})"
        if not sep or kind not in _KIND_NAME:
            raise ValueError(f"{where}: expected KIND:SIZE with KIND one of "
                             f"{', '.join(_KIND_NAME)}")
        nbytes = _size(size, where)
        if nbytes <= 0 or nbytes % PAGE:
            raise ValueError(f"{where}: size {size!r} is not a positive multiple of 4k")
        r = Region(kind, nbytes)
        for opt in opts:
            key, eq, val = opt.partition("=")
            w = f"{where} option {opt!r}"
            if not eq:
                raise ValueError(f"{w}: expected key=value")
            if key in ("present", "zero", "huge_zero", "swap", "shared", "pmd"):
                setattr(r, key, _fraction(val, w))
            elif key == "cluster":
                try:
                    r.cluster = float(val)
                except ValueError:
                    raise ValueError(f"{w}: not a number") from None
                if not r.cluster > 0:
                    raise ValueError(f"{w}: cluster must be > 0")
            elif key == "folios":
                r.folios = _folios(val, w)
            elif key == "flags":
                fl = tuple(f for f in val.split("+") if f)
                if not all(_FLAG_RE.match(f) for f in fl):
                    raise ValueError(f"{w}: flags are two-letter VmFlags joined by '+' "
                                     "(e.g. hg, nh)")
                r.flags = fl
            elif key == "at":
                try:
                    r.at = int(val, 0)
                except ValueError:
                    raise ValueError(f"{w}: not an address") from None
                if r.at < 0 or r.at % PAGE:
                    raise ValueError(f"{w}: address is not 4k aligned")
            elif key == "seed":
                try:
                    seed = int(val)
                except ValueError:
                    raise ValueError(f"{w}: not an integer") from None
            else:
                raise ValueError(f"{w}: unknown option (present, zero, huge_zero, swap, shared, "
                                 "pmd, cluster, folios, flags, at, seed)")
        if r.present + r.zero + r.swap + r.huge_zero > 1.0 + 1e-9:
            raise ValueError(f"{where}: present+zero+swap+huge_zero is more than 1")
        regions.append(r)
    return regions, seed


# ---------------------------------------------------------------- generation


def _solve_scale(dens: np.ndarray, weight: np.ndarray, target: float) -> float:
    """``k`` with ``sum(min(1, k*dens) * weight) == target`` (bisection; clipped)."""
    full = float((weight * (dens > 0)).sum())
    if target <= 0 or full <= 0:
        return 0.0
    if target >= full:
        return np.inf
    lo, hi = 0.0, 1.0 / max(float(dens[dens > 0].min()), 1e-12)
    for _ in range(60):
        mid = (lo + hi) / 2
        if float((np.minimum(1.0, mid * dens) * weight).sum()) < target:
            lo = mid
        else:
            hi = mid
    return hi


class _Batch:
    """Working arrays for ``nb`` PMD blocks (padded; ``valid`` marks pages of the region)."""

    def __init__(self, nb: int, valid: np.ndarray) -> None:
        n = nb * PMD_NR
        self.nb = nb
        self.free = valid.copy()
        self.state = np.zeros(n, np.uint8)
        self.order = np.full(n, -1, np.int8)
        self.folio_index = np.zeros(n, np.int32)
        self.pmd_mapped = np.zeros(n, bool)
        self.mapcount = np.zeros(n, np.uint16)
        self.exclusive = np.zeros(n, bool)


def _place_folios(b: _Batch, rng: np.random.Generator, order: int, sel: np.ndarray,
                  shared: float, pmd_mapped: np.ndarray | bool = False) -> None:
    """Make the chunks ``sel`` (bool per aligned chunk of ``2**order``) folios."""
    s = 1 << order
    k = int(sel.sum())
    if not k:
        return
    sh = rng.random(k, dtype=np.float32) < shared
    for name, val in (("state", PRESENT), ("order", order)):
        getattr(b, name).reshape(-1, s)[sel] = val
    b.folio_index.reshape(-1, s)[sel] = np.arange(s, dtype=np.int32)
    b.mapcount.reshape(-1, s)[sel] = np.where(sh, 2, 1).astype(np.uint16)[:, None]
    b.exclusive.reshape(-1, s)[sel] = ~sh[:, None]
    if np.any(pmd_mapped):
        b.pmd_mapped.reshape(-1, s)[sel] = np.broadcast_to(pmd_mapped, (k,))[:, None]
    b.free.reshape(-1, s)[sel] = False


def _place_pages(b: _Batch, rng: np.random.Generator, dens: np.ndarray, target: float,
                 state: int) -> None:
    """Give ``target`` (expected) free pages the non-folio ``state``, weighted by density."""
    if target <= 0:
        return
    free_blk = b.free.reshape(b.nb, PMD_NR).sum(1)
    k = _solve_scale(dens, free_blk.astype(np.float64), target)
    if k == 0:
        return
    p = np.repeat(np.minimum(1.0, k * dens).astype(np.float32), PMD_NR)
    sel = b.free & (rng.random(p.size, dtype=np.float32) < p)
    b.state[sel] = state
    b.free[sel] = False


def _gen_batch(r: Region, rng: np.random.Generator, valid: np.ndarray) -> _Batch:
    nb = valid.size // PMD_NR
    b = _Batch(nb, valid)
    npages = float(valid.sum())
    full = valid.reshape(nb, PMD_NR).all(1)
    m = min(1.0, r.present + r.zero + r.swap)
    if m <= 0:
        dens = np.zeros(nb)
    elif m >= 1:
        dens = np.ones(nb)
    else:
        # floor: a block with density exactly 0 could never be chosen at all
        dens = np.maximum(rng.beta(m * r.cluster, (1 - m) * r.cluster, nb), 1e-6)
    # 2: huge zero page, whole free blocks, uniformly
    k_hz = round(r.huge_zero * npages / PMD_NR)
    if k_hz:
        cand = np.flatnonzero(full)
        pick = rng.choice(cand, size=min(k_hz, cand.size), replace=False)
        blk = b.state.reshape(nb, PMD_NR)
        blk[pick] = HUGE_ZERO
        b.pmd_mapped.reshape(nb, PMD_NR)[pick] = True
        b.free.reshape(nb, PMD_NR)[pick] = False
        full[pick] = False
    # 3: PMD-sized folios take whole blocks, preferring dense ones (Gumbel top-k)
    w2 = r.folios.get(PMD_ORDER, 0.0)
    k2 = round(r.present * w2 * npages / PMD_NR)
    if k2:
        cand = np.flatnonzero(full)
        key = np.log(dens[cand]) - np.log(-np.log(rng.random(cand.size)))
        pick = cand[np.argsort(-key)[: min(k2, cand.size)]]
        sel = np.zeros(nb, bool)
        sel[pick] = True
        pm = rng.random(pick.size) < r.pmd
        pmd_flag = np.zeros(nb, bool)
        pmd_flag[pick] = pm
        _place_folios(b, rng, PMD_ORDER, sel, r.shared, pmd_flag[sel])
    # 4: smaller folios, largest first, in free naturally aligned chunks
    for order, w in r.folios.items():
        if order >= PMD_ORDER or w <= 0:
            continue
        s = 1 << order
        chunk_free = b.free.reshape(-1, s).all(1)
        per_blk = chunk_free.reshape(nb, PMD_NR // s).sum(1).astype(np.float64) * s
        k = _solve_scale(dens, per_blk, r.present * w * npages)
        if k == 0:
            continue
        p = np.repeat(np.minimum(1.0, k * dens).astype(np.float32), PMD_NR // s)
        sel = chunk_free & (rng.random(p.size, dtype=np.float32) < p)
        _place_folios(b, rng, order, sel, r.shared)
    # 5: zero pages, then swap entries
    _place_pages(b, rng, dens, r.zero * npages, ZERO)
    _place_pages(b, rng, dens, r.swap * npages, SWAP)
    return b


def synthetic_snapshot(spec: str, seed: int | None = None) -> Snapshot:
    """A synthetic :class:`Snapshot` described by ``spec``.

    Parameters
    ----------
    spec : str
        The SPEC string (docs/snapshot-format.md), e.g.
        ``"heap:64G,present=0.6,folios=4k:0.5/64k:0.3/2m:0.2"``.
    seed : int, optional
        Overrides the spec's ``seed=``; with neither the seed is 0, so a spec alone
        always gives the same snapshot.

    Returns
    -------
    Snapshot
        ``kernel="synthetic"``, ``settings`` the model's defaults with every folio
        size of the spec enabled (``always``), ``meta["synthetic"]`` the spec and
        ``meta["seed"]`` the seed.

    Raises
    ------
    ValueError
        The spec is malformed (one line saying where).
    """
    regions, spec_seed = parse_spec(spec)
    if seed is None:
        seed = spec_seed if spec_seed is not None else 0
    rng = np.random.default_rng(seed)
    # place the VMAs: each at its `at=` or after the previous one (a 2M gap)
    vmas: list[SnapshotVma] = []
    prev_end = 0
    for r in regions:
        start = r.at if r.at is not None else max(_KIND_BASE[r.kind], prev_end + (2 << 20))
        if r.at is None:
            start = -(-start // (2 << 20)) * (2 << 20)
        if start < prev_end:
            raise ValueError(f"spec region {r.kind}:{r.size}: at={start:#x} overlaps the "
                             "previous region")
        flags = " ".join([BASE_FLAGS, *[f for f in r.flags if f not in BASE_FLAGS.split()]])
        anon = r.present + r.swap > 0
        vmas.append(SnapshotVma(start, start + r.size, flags, anon or None, _KIND_NAME[r.kind]))
        prev_end = start + r.size
    total = sum(r.size // PAGE for r in regions)
    out = {c: np.zeros(total, Snapshot.DTYPES[c]) for c in Snapshot.COLUMNS}
    out["order"][:] = -1
    pos = 0
    for r, v in zip(regions, vmas, strict=True):
        off = (v.start // PAGE) % PMD_NR  # pages before the VMA in its first PMD block
        n = r.size // PAGE
        nb_all = -(-(off + n) // PMD_NR)
        for b0 in range(0, nb_all, BATCH_BLOCKS):
            b1 = min(nb_all, b0 + BATCH_BLOCKS)
            idx = np.arange(b0 * PMD_NR, b1 * PMD_NR, dtype=np.int64) - off
            valid = (idx >= 0) & (idx < n)
            b = _gen_batch(r, rng, valid)
            lo, hi = max(0, b0 * PMD_NR - off), min(n, b1 * PMD_NR - off)
            src = slice(lo + off - b0 * PMD_NR, hi + off - b0 * PMD_NR)
            for c in Snapshot.COLUMNS:
                out[c][pos + lo : pos + hi] = getattr(b, c)[src]
        pos += n
    settings = _settings(regions)
    snap = Snapshot(vmas=vmas, **out, kernel="synthetic", settings=settings,
                    comm="synthetic", meta={"synthetic": spec, "seed": str(seed)})
    return snap


def _settings(regions: list[Region]) -> dict[str, str]:
    from thpsim.mm.settings import Settings

    s = Settings().as_dict()
    for r in regions:
        for order in r.folios:
            if 0 < order < PMD_ORDER:
                s[f"hugepages-{(PAGE << order) // 1024}kB/enabled"] = "always"
    return s

