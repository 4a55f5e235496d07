"""``struct mm_struct``: one address space (VMAs, page tables, RSS, MMF flags)."""

from __future__ import annotations

from dataclasses import dataclass, field

from thpsim.mm.geometry import Geometry
from thpsim.mm.pgtable import PageTables
from thpsim.mm.vma import VMAList

__all__ = ["MM", "THP_DISABLE_COMPLETELY", "THP_DISABLE_EXCEPT_ADVISED", "THP_DISABLE_NONE"]

THP_DISABLE_NONE = 0
#: ``PR_SET_THP_DISABLE`` with no flags: ``MMF_DISABLE_THP_COMPLETELY``
THP_DISABLE_COMPLETELY = 1
#: ``PR_SET_THP_DISABLE`` with ``PR_THP_DISABLE_EXCEPT_ADVISED``
THP_DISABLE_EXCEPT_ADVISED = 2


@dataclass(eq=False)
class MM:
    """One mm.

    Attributes
    ----------
    rss_anon, rss_swap : int
        ``MM_ANONPAGES`` and ``MM_SWAPENTS`` counters.
    registered : bool
        ``MMF_VM_HUGEPAGE``: on khugepaged's mm_slot list.
    """

    pid: int
    name: str
    geometry: Geometry
    vmas: VMAList = field(default_factory=VMAList)
    pt: PageTables = None  # type: ignore[assignment]
    rss_anon: int = 0
    rss_swap: int = 0
    registered: bool = False
    exiting: bool = False
    thp_disable: int = THP_DISABLE_NONE
    #: next mmap address hint (vpn) for mappings without a fixed address
    mmap_base: int = 0

    def __post_init__(self) -> None:
        if self.pt is None:
            self.pt = PageTables(self.geometry)
        if not self.mmap_base:
            # 1 GiB, PMD aligned for every geometry (the selftests' BASE_ADDR)
            self.mmap_base = (1 << 30) // self.geometry.page_size
