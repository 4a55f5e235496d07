"""The in-memory snapshot of a process's anonymous memory (format version 1).

A :class:`Snapshot` is columnar: a table of VMAs and, concatenated in VMA order,
one element per base page of every VMA's span in NumPy arrays.  The on-disk format
(``thpsim.snapshot.io``, docs/snapshot-format.md) stores exactly these columns.

Page states (``state``):

====== ============ ========================================================
value  name         meaning
====== ============ ========================================================
0      ``NONE``     no PTE (never touched, or zapped)
1      ``PRESENT``  mapped page of an anonymous folio (``order``, ``folio_index``)
2      ``ZERO``     the shared zero page, PTE-mapped
3      ``HUGE_ZERO`` the huge zero page, PMD-mapped
4      ``SWAP``     a swap entry
5      ``OTHER``    present but not anonymous (e.g. a file page in a private mapping
                    that was never written); khugepaged treats it as not collapsible
====== ============ ========================================================

For present pages: ``order`` is the folio order, ``folio_index`` the page's index
inside its folio (so the folio's head is at ``page - folio_index``; a folio can be
partly outside the VMA or unmapped), ``pmd_mapped`` says it is mapped by a PMD,
``mapcount`` is the page's mapcount (``/proc/kpagecount``, clipped to 65535) and
``exclusive`` the pagemap ``PM_MMAP_EXCLUSIVE`` bit.  For other states these are 0
(``order`` -1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

__all__ = [
    "FORMAT_VERSION",
    "HUGE_ZERO",
    "NONE",
    "OTHER",
    "PRESENT",
    "STATE_NAMES",
    "SWAP",
    "ZERO",
    "Snapshot",
    "SnapshotError",
    "SnapshotVma",
]

FORMAT_VERSION = 1

NONE, PRESENT, ZERO, HUGE_ZERO, SWAP, OTHER = range(6)
STATE_NAMES = ("none", "present", "zero", "huge_zero", "swap", "other")


class SnapshotError(ValueError):
    """A snapshot is malformed or damaged (the message says what and where)."""


@dataclass(frozen=True)
class SnapshotVma:
    """One VMA of a snapshot.

    Attributes
    ----------
    start, end : int
        Byte addresses, page aligned, ``start < end``.
    flags : str
        smaps ``VmFlags`` (space separated two-letter flags, e.g. ``"rd wr mr mw me ac hg"``).
    anon_vma : bool or None
        Whether the VMA has an anon_vma (``None``: unknown; ``True`` when any page is
        anonymous).
    name : str
        The maps path column (``[heap]``, ``[stack]``, a file, or empty).
    """

    start: int
    end: int
    flags: str = "rd wr mr mw me ac"
    anon_vma: bool | None = None
    name: str = ""

    @property
    def flag_set(self) -> frozenset[str]:
        return frozenset(self.flags.split())

    @property
    def hg(self) -> bool:
        return "hg" in self.flag_set

    @property
    def nh(self) -> bool:
        return "nh" in self.flag_set


@dataclass
class Snapshot:
    """A process's anonymous memory at one moment (see the module docstring)."""

    vmas: list[SnapshotVma]
    state: np.ndarray  # uint8
    order: np.ndarray  # int8
    folio_index: np.ndarray  # int32
    pmd_mapped: np.ndarray  # bool
    mapcount: np.ndarray  # uint16
    exclusive: np.ndarray  # bool
    page_size: int = 4096
    kernel: str = ""
    settings: dict[str, str] = field(default_factory=dict)
    pid: int = 0
    comm: str = ""
    time: float = 0.0
    meta: dict[str, str] = field(default_factory=dict)

    COLUMNS: ClassVar[tuple[str, ...]] = (
        "state", "order", "folio_index", "pmd_mapped", "mapcount", "exclusive")
    DTYPES: ClassVar[dict[str, type]] = {
        "state": np.uint8, "order": np.int8, "folio_index": np.int32,
        "pmd_mapped": np.bool_, "mapcount": np.uint16, "exclusive": np.bool_}

    @property
    def nr_pages(self) -> int:
        return int(self.state.size)

    def vma_offsets(self) -> np.ndarray:
        """Start index of each VMA's pages in the page arrays (length ``len(vmas)+1``)."""
        sizes = [(v.end - v.start) // self.page_size for v in self.vmas]
        return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)

    def vpns(self) -> np.ndarray:
        """Virtual page number of every page (int64)."""
        parts = [np.arange(v.start // self.page_size, v.end // self.page_size, dtype=np.int64)
                 for v in self.vmas]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def validate(self, where: str = "snapshot") -> None:
        """Raise :class:`SnapshotError` unless the snapshot is consistent."""
        ps = self.page_size
        if ps <= 0 or ps & (ps - 1):
            raise SnapshotError(f"{where}: page_size {ps} is not a power of two")
        prev_end = -1
        for i, v in enumerate(self.vmas):
            if v.start % ps or v.end % ps or v.start >= v.end:
                raise SnapshotError(f"{where}: vma {i} [{v.start:#x}, {v.end:#x}) is empty "
                                    f"or not page aligned")
            if v.start < prev_end:
                raise SnapshotError(f"{where}: vma {i} at {v.start:#x} overlaps or is out of "
                                    f"order")
            prev_end = v.end
        n = int(self.vma_offsets()[-1])
        for col in self.COLUMNS:
            a = getattr(self, col)
            if not isinstance(a, np.ndarray) or a.shape != (n,):
                raise SnapshotError(f"{where}: column {col!r} has shape "
                                    f"{getattr(a, 'shape', None)}, expected ({n},) for the "
                                    f"VMAs' span")
            if a.dtype != self.DTYPES[col]:
                raise SnapshotError(f"{where}: column {col!r} has dtype {a.dtype}, expected "
                                    f"{np.dtype(self.DTYPES[col])}")
        st = self.state
        bad = np.flatnonzero(st > OTHER)
        if bad.size:
            raise SnapshotError(f"{where}: page {int(bad[0])}: state {int(st[bad[0]])} is not "
                                f"one of 0..{OTHER}")
        present = st == PRESENT
        o, fi = self.order, self.folio_index
        bad = np.flatnonzero(present & ((o < 0) | (o > 20)))
        if bad.size:
            raise SnapshotError(f"{where}: page {int(bad[0])}: present page with folio order "
                                f"{int(o[bad[0]])}")
        # int32 shift: 1 << int8 order would overflow for order >= 7
        nr = np.left_shift(1, np.clip(o, 0, 20).astype(np.int32))
        bad = np.flatnonzero(present & ((fi < 0) | (fi >= nr)))
        if bad.size:
            raise SnapshotError(f"{where}: page {int(bad[0])}: folio_index {int(fi[bad[0]])} "
                                f"outside a folio of order {int(o[bad[0]])}")
        bad = np.flatnonzero(self.pmd_mapped & ~(present | (st == HUGE_ZERO)))
        if bad.size:
            raise SnapshotError(f"{where}: page {int(bad[0])}: pmd_mapped but "
                                f"{STATE_NAMES[int(st[bad[0]])]}")

    def state_counts(self) -> dict[str, int]:
        """Pages per state name."""
        c = np.bincount(self.state, minlength=len(STATE_NAMES))
        return {name: int(c[i]) for i, name in enumerate(STATE_NAMES)}
