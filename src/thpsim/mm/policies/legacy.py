"""``legacy``: khugepaged before mTHP collapse (PMD only).

The pre-mTHP baseline of kernel-model.md §1 — what the project's 6.18 host
kernel runs: the scan aborts at the first limit exceeded, a successful scan
attempts exactly one PMD collapse, and its result is the scan's result.
"""

from __future__ import annotations

from thpsim.mm import scan_result as sr
from thpsim.mm.policies.base import CollapsePolicy

__all__ = ["LegacyPolicy"]


class LegacyPolicy(CollapsePolicy):
    """PMD-only collapse (``hpage_collapse_scan_pmd`` → ``collapse_huge_page``)."""

    name = "legacy"
    enum = sr.ENUM_V11
    mthp = False
    mthp_alloc_stats = False

    def walk(self, kh, ctx) -> str:
        return kh.collapse_huge_page(ctx, kh.sys.geometry.pmd_order, 0)
