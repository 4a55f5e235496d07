"""``v11``: the mTHP collapse series "khugepaged: add mTHP collapse support", v11.

kernel-model.md §2 and §2.A.  The scan fills a one-bit-per-PTE bitmap of
present, non-zero PTEs; ``collapse_scan_bitmap`` walks it depth first, left
half first, from the PMD order down to order 2 (descending through orders that
are not enabled), attempting a collapse wherever the bitmap meets
``collapse_max_ptes_none(order)``.  v11's quirks are reproduced on purpose
(docs/fidelity.md): swap entries count as missing for the PMD threshold
(quirk 1), MADV_COLLAPSE obeys the threshold (quirk 2), and the walk's
failures are flattened to ``SCAN_FAIL`` (quirk 3).
"""

from __future__ import annotations

from thpsim.mm import scan_result as sr
from thpsim.mm.policies.base import CollapsePolicy

__all__ = ["V11Policy"]

#: patch 13: results after which the walk descends into the same range
RETRY_LOWER_V11 = frozenset({
    sr.SCAN_LACK_REFERENCED_PAGE, sr.SCAN_EXCEED_NONE_PTE, sr.SCAN_EXCEED_SWAP_PTE,
    sr.SCAN_EXCEED_SHARED_PTE, sr.SCAN_PAGE_LOCK, sr.SCAN_PAGE_COUNT, sr.SCAN_PAGE_LRU,
    sr.SCAN_PAGE_NULL, sr.SCAN_DEL_PAGE_LRU, sr.SCAN_PTE_NON_PRESENT, sr.SCAN_PTE_UFFD_WP,
    sr.SCAN_ALLOC_HUGE_PAGE_FAIL,
})


class V11Policy(CollapsePolicy):
    """The v11 series (DFS bitmap walk, capped scaled ``max_ptes_none``)."""

    name = "v11"
    enum = sr.ENUM_V11
    retry_lower = RETRY_LOWER_V11
    order_check_before_shared = True

    def collapse_max_ptes_none(self, sys, order: int) -> int:
        """Patch 6: ``max_ptes_none`` scaled to ``order``; mTHP capped at NR/2 - 1.

        No ``cc``/VMA argument: it knows neither MADV_COLLAPSE nor uffd.
        """
        g = sys.geometry
        m = sys.settings.max_ptes_none
        if order != g.pmd_order and m >= g.hpage_pmd_nr // 2:
            m = g.creep_cap
        return m >> (g.pmd_order - order)

    def scan_none_limit(self, sys, cc, vma, pmd_only):
        # patch 12: with any mTHP order enabled the scan sees the whole PMD
        if vma.uffd_armed:
            return 0
        return sys.settings.max_ptes_none if cc.is_khugepaged and pmd_only else None

    def isolate_none_limit(self, sys, cc, vma, order):
        if vma.uffd_armed:
            return 0
        return self.collapse_max_ptes_none(sys, order) if cc.is_khugepaged else None

    def isolate_shared_limit(self, sys, cc, order):
        if order != sys.geometry.pmd_order:
            return 0  # patch 5: any shared page fails an mTHP collapse
        return sys.settings.max_ptes_shared if cc.is_khugepaged else None

    def walk(self, kh, ctx) -> str:
        """``collapse_scan_bitmap`` (final form after patch 13)."""
        sys = kh.sys
        g = sys.geometry
        enabled = ctx.enabled
        stack = [(g.pmd_order, 0)]
        collapsed = 0
        prefix = ctx.bitmap_prefix
        while stack:
            order, off = stack.pop()
            n = 1 << order
            if enabled & (1 << order):
                max_none = self.collapse_max_ptes_none(sys, order)
                present = int(prefix[off + n] - prefix[off])
                if present >= n - max_none:
                    r = kh.collapse_huge_page(ctx, order, off)
                    if r == sr.SCAN_SUCCEED:
                        collapsed += n
                        continue
                    if r == sr.SCAN_PTE_MAPPED_HUGEPAGE:
                        continue
                    if r not in self.retry_lower:
                        break  # abandon the whole PMD, pushed siblings included
            if order > 2:
                stack.append((order - 1, off + n // 2))
                stack.append((order - 1, off))
        return sr.SCAN_SUCCEED if collapsed else sr.SCAN_FAIL
