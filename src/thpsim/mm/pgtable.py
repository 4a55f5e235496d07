"""Page tables of one mm: a PMD level and a pool of PTE tables in NumPy arrays.

A PMD entry is *none* (no key in either dict), a *PTE table* (``tables``:
pmd index -> row of the pool) or a *huge mapping* (``huge``: pmd index ->
``[head pfn or HUGE_ZERO_PFN, flags]``).  A huge PMD keeps a deposited page
table in the kernel; the model materialises it when the PMD is split.

The PTE pool holds, per row of ``PTRS_PER_PTE`` entries, the entry kind, the
pfn (or swap slot) and a flag byte; there is no Python object per PTE.
"""

from __future__ import annotations

import numpy as np

from thpsim.mm.geometry import Geometry

__all__ = [
    "F_DIRTY",
    "F_UFFD_WP",
    "F_WRITE",
    "F_YOUNG",
    "HUGE_ZERO_PFN",
    "PTE_NONE",
    "PTE_PRESENT",
    "PTE_SWAP",
    "PTE_ZERO",
    "PageTables",
]

PTE_NONE = 0  # pte_none()
PTE_PRESENT = 1  # maps a page of an anon folio
PTE_ZERO = 2  # maps the shared 4K zero page
PTE_SWAP = 3  # swap (or other non-present, non-none) entry; pfn holds the slot

F_YOUNG = 1
F_DIRTY = 2
F_UFFD_WP = 4
F_WRITE = 8  # hardware-writable; cleared by fork so that a write COWs

HUGE_ZERO_PFN = -2


class _HugePMDs(dict):
    """pmd index -> [head pfn, flags]; installing one populates its PMD table."""

    def __init__(self, puds: set[int], per: int) -> None:
        super().__init__()
        self._puds = puds
        self._per = per

    def __setitem__(self, pmd: int, entry: list[int]) -> None:
        self._puds.add(pmd // self._per)
        super().__setitem__(pmd, entry)


class PageTables:
    """The page tables of one address space.

    Parameters
    ----------
    geometry : Geometry
        Base page size geometry.
    """

    def __init__(self, geometry: Geometry, initial_rows: int = 16) -> None:
        self.geometry = geometry
        self.nr = geometry.ptrs_per_pte
        self.shift = geometry.pmd_order
        self.kind = np.zeros((initial_rows, self.nr), dtype=np.uint8)
        self.pfn = np.zeros((initial_rows, self.nr), dtype=np.int32)
        self.flags = np.zeros((initial_rows, self.nr), dtype=np.uint8)
        #: PUD-range indices whose PMD table page exists (``mm_find_pmd`` succeeds);
        #: a PMD table stays until munmap/exit frees the whole PUD range
        self.puds: set[int] = set()
        self.tables: dict[int, int] = {}
        self.huge: dict[int, list[int]] = _HugePMDs(self.puds, geometry.ptrs_per_pte)
        self._free_rows = list(range(initial_rows - 1, -1, -1))

    # --- PMD level ------------------------------------------------------------
    def row(self, pmd: int) -> int | None:
        """Row of the PTE table installed at PMD index ``pmd``, or None."""
        return self.tables.get(pmd)

    def alloc_table(self, pmd: int) -> int:
        """``pte_alloc``: install an empty PTE table at ``pmd`` and return its row."""
        assert pmd not in self.tables and pmd not in self.huge
        if not self._free_rows:
            self._grow()
        r = self._free_rows.pop()
        self.puds.add(pmd // self.nr)
        self.kind[r] = 0
        self.pfn[r] = 0
        self.flags[r] = 0
        self.tables[pmd] = r
        return r

    def free_table(self, pmd: int) -> None:
        """Remove the PTE table at ``pmd`` (the PMD becomes none)."""
        r = self.tables.pop(pmd)
        self._free_rows.append(r)

    def _grow(self) -> None:
        old = self.kind.shape[0]
        new = max(16, old * 2)
        for name in ("kind", "pfn", "flags"):
            arr = getattr(self, name)
            grown = np.zeros((new, self.nr), dtype=arr.dtype)
            grown[:old] = arr
            setattr(self, name, grown)
        self._free_rows.extend(range(new - 1, old - 1, -1))

    def pmd_is_none(self, pmd: int) -> bool:
        return pmd not in self.tables and pmd not in self.huge

    def nbytes(self) -> int:
        """Bytes of NumPy state (for the memory benchmark)."""
        return self.kind.nbytes + self.pfn.nbytes + self.flags.nbytes

    def pmds(self) -> list[int]:
        """All PMD indices that are not none, sorted."""
        return sorted(set(self.tables) | set(self.huge))
