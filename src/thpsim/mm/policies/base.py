"""What a collapse policy decides, and the parts the policies share.

The engine (:mod:`thpsim.mm.khugepaged`) does the mechanics common to every
kernel version — the PTE scan, allocation, swap-in, isolate, copy, install,
the daemon loop — and asks the policy at each point where the versions differ.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from thpsim.mm import scan_result as sr

if TYPE_CHECKING:
    from thpsim.mm.khugepaged import CollapseControl, Khugepaged, ScanCtx
    from thpsim.mm.vma import VMA
    from thpsim.system import System

__all__ = ["CollapsePolicy"]


class CollapsePolicy:
    """Base class: the knobs every policy sets, and default (baseline) answers."""

    name: ClassVar[str] = ""
    #: ``enum scan_result`` of this kernel (value = index)
    enum: ClassVar[tuple[str, ...]] = sr.ENUM_V11
    #: results of an attempt after which the walk tries smaller orders
    retry_lower: ClassVar[frozenset[str]] = frozenset()
    #: does khugepaged consider mTHP orders at all
    mthp: ClassVar[bool] = True
    #: scan checks none/zero before non-present entries (7.2 order)
    scan_none_first: ClassVar[bool] = False
    #: ``SCAN_PAGE_LAZYFREE`` checks in scan and isolate (7.2)
    lazyfree_check: ClassVar[bool] = False
    #: scan-time aborts also count the PMD-size ``collapse_exceed_*`` stats (7.2)
    scan_counts_mthp_stats: ClassVar[bool] = False
    #: per-size ``collapse_alloc``/``collapse_alloc_failed`` exist (not on the host)
    mthp_alloc_stats: ClassVar[bool] = True
    #: budget charged per PTE examined (7.2) instead of HPAGE_PMD_NR per PMD
    budget_per_pte: ClassVar[bool] = False
    #: isolate's "folio order >= target" check precedes the shared check (v11)
    order_check_before_shared: ClassVar[bool] = True
    #: PMD lookup results: (no PMD table at all, PMD none)
    pmd_missing_results: ClassVar[tuple[str, str]] = (sr.SCAN_PMD_NULL, sr.SCAN_PMD_NONE)
    #: MADV_COLLAPSE results that record a failure but continue with the next PMD
    madvise_continue: ClassVar[frozenset[str]] = frozenset({
        sr.SCAN_PMD_NULL, sr.SCAN_NO_PTE_TABLE, sr.SCAN_PTE_NON_PRESENT, sr.SCAN_PTE_UFFD_WP,
        sr.SCAN_LACK_REFERENCED_PAGE, sr.SCAN_PAGE_NULL, sr.SCAN_PAGE_COUNT, sr.SCAN_PAGE_LOCK,
        sr.SCAN_PAGE_COMPOUND, sr.SCAN_PAGE_LRU, sr.SCAN_DEL_PAGE_LRU,
    })

    # --- limits --------------------------------------------------------------------
    def scan_none_limit(self, sys: System, cc: CollapseControl, vma: VMA,
                        pmd_only: bool) -> int | None:
        """none/zero PTEs the PMD scan tolerates (None = no limit)."""
        if vma.uffd_armed:
            return 0
        return sys.settings.max_ptes_none if cc.is_khugepaged else None

    def scan_swap_limit(self, sys: System, cc: CollapseControl) -> int | None:
        return sys.settings.max_ptes_swap if cc.is_khugepaged else None

    def scan_shared_limit(self, sys: System, cc: CollapseControl) -> int | None:
        return sys.settings.max_ptes_shared if cc.is_khugepaged else None

    def isolate_none_limit(self, sys: System, cc: CollapseControl, vma: VMA,
                           order: int) -> int | None:
        """none/zero PTEs an attempt at ``order`` tolerates in isolate; None = no limit."""
        if vma.uffd_armed:
            return 0
        return sys.settings.max_ptes_none if cc.is_khugepaged else None

    def isolate_shared_limit(self, sys: System, cc: CollapseControl, order: int) -> int | None:
        return sys.settings.max_ptes_shared if cc.is_khugepaged else None

    # --- the order walk --------------------------------------------------------------
    def walk(self, kh: Khugepaged, ctx: ScanCtx) -> str:
        """Attempt collapses in one PMD whose scan succeeded; return the scan's result."""
        raise NotImplementedError

    def madvise_errno(self, result: str) -> int:
        return sr.madvise_collapse_errno(result, self.name)
