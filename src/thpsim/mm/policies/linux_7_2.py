"""``linux-7.2``: mTHP collapse as merged in Linux 7.2 (linux-7.2.md).

A forward linear walk (``mthp_collapse``) over naturally aligned blocks; mTHP
``max_ptes_none`` is 0 or "any one page" (511) only, other values fall back to
0 with a one-time warning; swap entries count as occupied for the PMD order;
the walk returns the last failure (or ``SCAN_ALLOC_HUGE_PAGE_FAIL``); scan
limits for MADV_COLLAPSE are 512 (unlimited); lazy-free pages abort.
"""

from __future__ import annotations

from thpsim.mm import scan_result as sr
from thpsim.mm.policies.base import CollapsePolicy

__all__ = ["Linux72Policy"]

RETRY_LOWER_7_2 = frozenset({
    sr.SCAN_ALLOC_HUGE_PAGE_FAIL, sr.SCAN_LACK_REFERENCED_PAGE, sr.SCAN_EXCEED_NONE_PTE,
    sr.SCAN_EXCEED_SWAP_PTE, sr.SCAN_EXCEED_SHARED_PTE, sr.SCAN_PAGE_LOCK, sr.SCAN_PAGE_COUNT,
    sr.SCAN_PAGE_NULL, sr.SCAN_DEL_PAGE_LRU, sr.SCAN_PTE_NON_PRESENT, sr.SCAN_PTE_UFFD_WP,
    sr.SCAN_PAGE_LAZYFREE,
})

WARN_TEXT = ("mTHP collapse does not support max_ptes_none values other than 0 or 511, "
             "defaulting to 0.")


class Linux72Policy(CollapsePolicy):
    """Linux 7.2.13."""

    name = "linux-7.2"
    enum = sr.ENUM_7_2
    retry_lower = RETRY_LOWER_7_2
    scan_none_first = True
    lazyfree_check = True
    scan_counts_mthp_stats = True
    budget_per_pte = True
    order_check_before_shared = False
    pmd_missing_results = (sr.SCAN_NO_PTE_TABLE, sr.SCAN_NO_PTE_TABLE)

    def collapse_max_ptes_none(self, kh, cc, vma, order: int) -> int:
        """§3.3: uffd → 0; MADV_COLLAPSE → 512; PMD → sysfs; 511 → 2^k - 1; else 0."""
        sys = kh.sys
        g = sys.geometry
        if vma is not None and vma.uffd_armed:
            return 0
        if not cc.is_khugepaged:
            return g.hpage_pmd_nr
        m = sys.settings.max_ptes_none
        if order == g.pmd_order:
            return m
        if m == g.hpage_pmd_nr - 1:
            return (1 << order) - 1
        if m != 0:
            kh.warn_once(WARN_TEXT)
        return 0

    def scan_none_limit(self, sys, cc, vma, pmd_only):
        nr = sys.geometry.hpage_pmd_nr
        if vma.uffd_armed:
            limit = 0
        elif not cc.is_khugepaged:
            limit = nr
        else:
            limit = sys.settings.max_ptes_none
        # KHUGEPAGED_MAX_PTES_LIMIT: mTHP candidates need the whole PMD seen
        return limit if pmd_only else nr - 1

    def scan_swap_limit(self, sys, cc):
        return sys.settings.max_ptes_swap if cc.is_khugepaged else sys.geometry.hpage_pmd_nr

    def scan_shared_limit(self, sys, cc):
        return sys.settings.max_ptes_shared if cc.is_khugepaged else sys.geometry.hpage_pmd_nr

    def isolate_none_limit(self, sys, cc, vma, order):
        return self.collapse_max_ptes_none(sys.khugepaged, cc, vma, order)

    def isolate_shared_limit(self, sys, cc, order):
        g = sys.geometry
        if not cc.is_khugepaged:
            return g.hpage_pmd_nr
        return sys.settings.max_ptes_shared if order == g.pmd_order else 0

    def walk(self, kh, ctx) -> str:
        """``mthp_collapse``: the linear forward walk of §3.1."""
        sys = kh.sys
        g = sys.geometry
        top = g.pmd_order
        enabled = ctx.enabled
        prefix = ctx.bitmap_prefix
        nr = g.hpage_pmd_nr
        off, order = 0, top
        collapsed, alloc_failed, last = 0, False, sr.SCAN_FAIL
        while off < nr:
            n = 1 << order
            lower = True
            if enabled & (1 << order):
                max_none = self.collapse_max_ptes_none(kh, ctx.cc, None, order)
                occupied = int(prefix[off + n] - prefix[off])
                if order == top:
                    occupied += ctx.unmapped  # swap entries count as occupied for the PMD
                if occupied >= n - max_none:
                    r = kh.collapse_huge_page(ctx, order, off)
                    if r == sr.SCAN_SUCCEED:
                        collapsed += n
                        lower = False
                    elif r == sr.SCAN_PTE_MAPPED_HUGEPAGE:
                        lower = False
                    elif r in self.retry_lower:
                        last = r
                        alloc_failed |= r == sr.SCAN_ALLOC_HUGE_PAGE_FAIL
                    else:
                        last = r
                        break
            if lower and order > 2 and enabled & ((1 << order) - 1):
                order -= 1
                continue
            off += n
            order = top if off == 0 else min((off & -off).bit_length() - 1, top)
        if collapsed:
            return sr.SCAN_SUCCEED
        if alloc_failed:
            return sr.SCAN_ALLOC_HUGE_PAGE_FAIL
        return last
