"""Page-list syntax shared by the CLI and scenario files.

``"0-63, 512-1023:16, 3372"``: inclusive ranges, ``a-b:step`` and single pages.
"""

from __future__ import annotations

import numpy as np

__all__ = ["parse_pages"]


def parse_pages(spec: str, limit: int | None = None) -> np.ndarray:
    """Sorted unique page offsets from ``spec``.

    Raises
    ------
    ValueError
        Naming the bad item, e.g. ``bad page item '5-2'``.
    """
    out: list[np.ndarray] = []
    for raw in str(spec).split(","):
        item = raw.strip()
        if not item:
            continue
        step = 1
        body = item
        if ":" in item:
            body, st = item.split(":", 1)
            if not st.strip().isdigit() or int(st) <= 0:
                raise ValueError(f"bad page item {item!r}: step must be a positive integer")
            step = int(st)
        if "-" in body:
            a, b = body.split("-", 1)
            if not a.strip().isdigit() or not b.strip().isdigit() or int(a) > int(b):
                raise ValueError(f"bad page item {item!r}: expected a-b with a <= b")
            lo, hi = int(a), int(b)
        elif body.strip().isdigit():
            lo = hi = int(body)
        else:
            raise ValueError(f"bad page item {item!r}")
        out.append(np.arange(lo, hi + 1, step, dtype=np.int64))
    pages = np.unique(np.concatenate(out)) if out else np.zeros(0, dtype=np.int64)
    if limit is not None and pages.size and pages[-1] >= limit:
        raise ValueError(f"page {int(pages[-1])} is outside the region ({limit} pages)")
    return pages
