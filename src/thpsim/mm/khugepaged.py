"""khugepaged: mm registration (the mm_slot list).

Twin of the registration half of mm/khugepaged.c: ``khugepaged_enter_vma``,
``__khugepaged_enter``, ``khugepaged_fork`` and ``khugepaged_exit``.  The scan
and collapse half is built on top of this class by the collapse policies.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from thpsim.mm.huge_memory import TVA_KHUGEPAGED, orders_mask, thp_vma_allowable_orders

if TYPE_CHECKING:
    from thpsim.mm.mm import MM
    from thpsim.mm.vma import VMA
    from thpsim.system import System

__all__ = ["Khugepaged"]


class Khugepaged:
    """The khugepaged daemon's state for one :class:`~thpsim.system.System`."""

    def __init__(self, sys: System) -> None:
        self.sys = sys
        #: registered mms in scan order (``khugepaged_scan.mm_head``)
        self.mm_slots: list[MM] = []

    # --- eligibility ------------------------------------------------------------
    def collapse_orders(self, vma: VMA) -> int:
        """Orders khugepaged asks for on an anon VMA (``collapse_allowable_orders``).

        ``legacy`` asks for the PMD order only; ``v11`` (patch 14) and
        ``linux-7.2`` ask for every anon order.
        """
        g = self.sys.geometry
        if self.sys.policy == "legacy":
            return 1 << g.pmd_order
        return orders_mask(g.anon_orders)

    def hugepage_enabled(self) -> bool:
        """``hugepage_pmd_enabled`` (legacy) / ``hugepage_enabled`` (v11, 7.2)."""
        return self.sys.settings.hugepage_enabled(self.sys.policy)

    # --- registration -----------------------------------------------------------
    def enter_vma(self, mm: MM, vma: VMA) -> None:
        """``khugepaged_enter_vma``: register ``mm`` if the VMA could be collapsed."""
        if mm.registered or mm.exiting or not self.hugepage_enabled():
            return
        if thp_vma_allowable_orders(self.sys, mm, vma, TVA_KHUGEPAGED, self.collapse_orders(vma)):
            self.register(mm)

    def register(self, mm: MM) -> None:
        """``__khugepaged_enter``: append to the tail of the scan list."""
        if mm.registered:
            return
        mm.registered = True
        self.mm_slots.append(mm)

    def fork(self, parent: MM, child: MM) -> None:
        """``khugepaged_fork``: the child is registered if the parent was."""
        if parent.registered:
            self.register(child)

    def exit_mm(self, mm: MM) -> None:
        """``khugepaged_exit``: drop the mm's slot."""
        if mm.registered:
            self.mm_slots.remove(mm)
            mm.registered = False

    # --- MADV_COLLAPSE ----------------------------------------------------------------
    def madvise_collapse(self, mm: MM, start: int, end: int) -> int:
        """MADV_COLLAPSE; the collapse engine replaces this (returns -EINVAL here)."""
        return -errno.EINVAL
