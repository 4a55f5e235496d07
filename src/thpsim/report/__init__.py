"""Reports of simulation runs: plots (``plots``), the side-by-side table (``table``) and
the self-contained HTML report (``html``).  See docs/reports.md."""

from __future__ import annotations

__all__: list[str] = []
