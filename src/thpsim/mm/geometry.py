"""Page-size geometry: the constants the kernel derives from ``PAGE_SHIFT``.

The kernel's khugepaged defaults and limits all scale with ``HPAGE_PMD_NR``
(``PTRS_PER_PTE``): ``max_ptes_none = NR - 1``, ``max_ptes_swap = NR / 8``,
``max_ptes_shared = NR / 2``, ``pages_to_scan = 8 * NR``, the referenced rule
``NR / 2`` and the v11 "creep" cap ``NR / 2 - 1``.  Everything in thpsim takes a
:class:`Geometry` so that 4K, 16K and 64K base pages are modelled by the same
code (4K is the default).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

__all__ = ["GEOM_4K", "GEOM_16K", "GEOM_64K", "Geometry", "geometry_for"]


@dataclass(frozen=True)
class Geometry:
    """Derived page-table geometry for one base page size.

    Parameters
    ----------
    page_size : int
        Base page size in bytes (4096, 16384 or 65536).
    """

    page_size: int = 4096

    def __post_init__(self) -> None:
        if self.page_size not in (4096, 16384, 65536):
            raise ValueError(f"unsupported base page size {self.page_size}")

    @cached_property
    def page_shift(self) -> int:
        return self.page_size.bit_length() - 1

    @cached_property
    def ptrs_per_pte(self) -> int:
        """``PTRS_PER_PTE``: a page table is one page of 8-byte entries."""
        return self.page_size // 8

    @property
    def hpage_pmd_nr(self) -> int:
        """``HPAGE_PMD_NR``: base pages per PMD mapping."""
        return self.ptrs_per_pte

    @cached_property
    def pmd_order(self) -> int:
        """``HPAGE_PMD_ORDER``: 9 for 4K, 11 for 16K, 13 for 64K."""
        return self.ptrs_per_pte.bit_length() - 1

    @cached_property
    def pmd_size(self) -> int:
        return self.page_size << self.pmd_order

    @cached_property
    def anon_orders(self) -> tuple[int, ...]:
        """``THP_ORDERS_ALL_ANON``: orders 2 .. PMD order (order 1 is file-only)."""
        return tuple(range(2, self.pmd_order + 1))

    @cached_property
    def max_page_order(self) -> int:
        """``MAX_PAGE_ORDER`` of the buddy allocator (x86-64: 10; arm64 16K/64K: PMD order)."""
        return max(10, self.pmd_order)

    def size_kb(self, order: int) -> int:
        """Folio size in kB for ``order`` (the ``hugepages-<N>kB`` directory name)."""
        return (self.page_size << order) // 1024

    def order_of_kb(self, kb: int) -> int:
        """Inverse of :meth:`size_kb`; raises ``ValueError`` for a size that is no order."""
        for order in range(0, self.max_page_order + 1):
            if self.size_kb(order) == kb:
                return order
        raise ValueError(f"{kb}kB is not a folio size for {self.page_size // 1024}K pages")

    def size_name(self, order: int) -> str:
        """``"64kB"`` style name used by sysfs and the per-size stats."""
        return f"{self.size_kb(order)}kB"

    # khugepaged defaults, scaled as in mm/khugepaged.c::khugepaged_init()
    @property
    def default_max_ptes_none(self) -> int:
        return self.hpage_pmd_nr - 1

    @property
    def default_max_ptes_swap(self) -> int:
        return self.hpage_pmd_nr // 8

    @property
    def default_max_ptes_shared(self) -> int:
        return self.hpage_pmd_nr // 2

    @property
    def default_pages_to_scan(self) -> int:
        return self.hpage_pmd_nr * 8

    @property
    def referenced_threshold(self) -> int:
        """``HPAGE_PMD_NR / 2``: young PTEs a PMD with swap entries needs."""
        return self.hpage_pmd_nr // 2

    @property
    def creep_cap(self) -> int:
        """v11's cap for mTHP ``max_ptes_none``: ``HPAGE_PMD_NR / 2 - 1``."""
        return self.hpage_pmd_nr // 2 - 1


GEOM_4K = Geometry(4096)
GEOM_16K = Geometry(16384)
GEOM_64K = Geometry(65536)


def geometry_for(page_size: int | str) -> Geometry:
    """Return the geometry for ``4096``/``"4K"``/``"16K"``/``"64K"``."""
    if isinstance(page_size, str):
        s = page_size.strip().upper().removesuffix("B")
        page_size = int(s[:-1]) * 1024 if s.endswith("K") else int(s)
    return {4096: GEOM_4K, 16384: GEOM_16K, 65536: GEOM_64K}.get(page_size) or Geometry(page_size)
