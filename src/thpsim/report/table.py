"""The side-by-side comparison of runs: one column per run, one row per summary value.

Used by ``thpsim demo``, ``thpsim simulate`` and ``thpsim sweep`` (Rich table) and by the
HTML report (:func:`comparison_rows`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from rich.table import Table

from thpsim.report.labels import run_label

__all__ = ["DEFAULT_ROWS", "comparison_rows", "comparison_table", "format_value",
           "paired_table", "results_table"]

#: (summary key, row label, unit); rows whose key no column has are left out
DEFAULT_ROWS: tuple[tuple[str, str, str], ...] = (
    ("rss_kb", "RSS", "MiB"),
    ("anon_kb", "anon", "MiB"),
    ("pmd_mapped_kb", "PMD-mapped", "MiB"),
    ("zero_filled_kb", "zero-filled", "MiB"),
    ("bloat_kb", "bloat", "MiB"),
    ("swap_kb", "swap", "MiB"),
    ("tlb_x86-64", "TLB x86-64", ""),
    ("tlb_amd", "TLB amd", ""),
    ("tlb_arm64", "TLB arm64", ""),
    ("khugepaged_pages_scanned", "scanned pages", ""),
    ("khugepaged_attempts", "attempts", ""),
    ("khugepaged_successes", "collapses", ""),
    ("khugepaged_copies", "copied pages", ""),
    ("khugepaged_cpu_ms", "khugepaged", "ms"),
    ("full_scans", "full scans", ""),
    ("events", "workload events", ""),
    ("wall_s", "wall time", "s"),
)


def format_value(value: object, unit: str) -> str:
    """``1536.0, "MiB"`` (value in kB) -> ``"1.5"``; integers without decimals."""
    if value is None:
        return "-"
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(v):
        return "-"
    if unit == "MiB":
        return f"{v / 1024:.1f}"
    if unit in ("s", "ms"):
        return f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"
    if v == int(v):
        return f"{int(v):,}"
    return f"{v:,.2f}"


def comparison_rows(columns: Sequence[tuple[str, Mapping[str, object]]],
                    rows: Sequence[tuple[str, str, str]] = DEFAULT_ROWS
                    ) -> list[tuple[str, list[str]]]:
    """Formatted table body: ``[(row label with unit, [cell per column])]``.

    Parameters
    ----------
    columns : sequence of (header, summary)
        One per run.
    rows : sequence of (key, label, unit)

    Returns
    -------
    list of (str, list of str)
    """
    out = []
    for key, label, unit in rows:
        if not any(key in s for _, s in columns):
            continue
        name = f"{label} {unit}" if unit else label
        out.append((name, [format_value(s.get(key), unit) for _, s in columns]))
    return out


def comparison_table(columns: Sequence[tuple[str, Mapping[str, object]]], title: str = "",
                     rows: Sequence[tuple[str, str, str]] = DEFAULT_ROWS) -> Table:
    """A Rich table with one column per run.

    Parameters
    ----------
    columns : sequence of (header, summary)
    title : str
    rows : sequence of (key, label, unit)

    Returns
    -------
    rich.table.Table
    """
    table = Table(title=title or None)
    table.add_column("", no_wrap=True)
    for header, _ in columns:
        table.add_column(header, justify="right")
    for name, cells in comparison_rows(columns, rows):
        table.add_row(name, *cells)
    return table


def run_header(result) -> str:
    """Column header for a RunResult: policy on one line, settings on the next."""
    return run_label(result.policy, result.settings).replace(" · ", "\n", 1)


def results_table(results: Sequence, title: str = "",
                  headers: Sequence[str] | None = None) -> Table:
    """:func:`comparison_table` of RunResults (one column per run; ``headers`` replace
    the default policy/settings headers)."""
    heads = list(headers) if headers is not None else [run_header(r) for r in results]
    return comparison_table(list(zip(heads, (r.summary for r in results), strict=True)),
                            title)


def paired_table(groups: Sequence[tuple[str, Sequence[Mapping[str, object]]]], title: str = "",
                 rows: Sequence[tuple[str, str, str]] = DEFAULT_ROWS) -> Table:
    """A narrow side-by-side table: one column per group, its runs' values joined by "/".

    ``thpsim demo`` uses one column per policy with the max_ptes_none 511 and 0 runs in
    each cell, which fits an 80-column terminal.

    Parameters
    ----------
    groups : sequence of (header, sequence of summary)
    title : str
    rows : sequence of (key, label, unit)

    Returns
    -------
    rich.table.Table
    """
    flat = [(h, s) for h, ss in groups for s in ss]
    body = comparison_rows(flat, rows)
    table = Table(title=title or None)
    table.add_column("", no_wrap=True)
    for header, _ in groups:
        table.add_column(header, justify="right", no_wrap=True)
    for name, cells in body:
        out, i = [], 0
        for _, ss in groups:
            out.append(" / ".join(cells[i:i + len(ss)]))
            i += len(ss)
        table.add_row(name, *out)
    return table
