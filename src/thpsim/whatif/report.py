"""Human (Rich table) and JSON renderings of whatif results (schema: docs/whatif.md)."""

from __future__ import annotations

import io
import json

from thpsim.snapshot.core import Snapshot
from thpsim.whatif.run import WhatIfResult

__all__ = ["JSON_VERSION", "to_json", "to_table"]

JSON_VERSION = 1


def _size(nbytes: int) -> str:
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if nbytes >= 1 << shift and nbytes % (1 << shift) == 0:
            return f"{nbytes >> shift}{unit}"
    return f"{nbytes}B"


def _mib(pages: int, page_size: int) -> str:
    return f"{pages * page_size / 2**20:,.1f}M"


def _arrow(a, b) -> str:
    return f"{a:,} → {b:,}" if a != b else f"{a:,}"


def _collapses(r: WhatIfResult, names: list[str]) -> str:
    if not r.collapses:
        return "-"
    return " ".join(f"{names[o]}:{n:,}" for o, n in sorted(r.collapses.items(), reverse=True))


def _sizes(m: dict) -> dict[str, int]:
    out = {f"{_size(int(v['bytes']))} PTE": v["pages"] for v in m["pte_folios"].values()}
    if m["pmd_mapped"]:
        out["PMD"] = m["pmd_mapped"]
    return out


def snapshot_info(snap: Snapshot) -> dict:
    return {"pid": snap.pid, "comm": snap.comm, "kernel": snap.kernel, "time": snap.time,
            "page_size": snap.page_size, "vmas": len(snap.vmas), "pages": snap.nr_pages,
            "states": snap.state_counts()}


def to_json(snap: Snapshot, results: list[WhatIfResult], scans: int | None) -> str:
    """The ``--json`` document."""
    doc = {"version": JSON_VERSION, "snapshot": snapshot_info(snap),
           "scans": scans if scans is not None else "fixpoint",
           "results": [r.to_dict() for r in results]}
    return json.dumps(doc, indent=2) + "\n"


def to_table(snap: Snapshot, results: list[WhatIfResult], width: int = 160) -> str:
    """The side-by-side table: one column per combination."""
    from rich.console import Console
    from rich.table import Table

    from thpsim.mm.geometry import geometry_for

    g = geometry_for(snap.page_size)
    names = [_size(snap.page_size << o) for o in range(g.pmd_order + 1)]
    ps = snap.page_size
    title = (f"whatif: {snap.comm or 'snapshot'} pid {snap.pid} — {len(snap.vmas)} VMAs, "
             f"{_mib(snap.nr_pages, ps)} span")
    t = Table(title=title, show_lines=False)
    t.add_column("", style="bold")
    for r in results:
        t.add_column(r.combo.label, justify="right", overflow="fold")

    def row(label, fn):
        t.add_row(label, *[fn(r) for r in results])

    row("engine", lambda r: r.engine)
    row("khugepaged scans it", lambda r: "yes" if r.registered else "no")
    row("full scans to fixpoint", lambda r: f"{r.scans_to_fixpoint}"
        + ("" if r.fixpoint else " (no fixpoint)"))
    row("time to fixpoint", lambda r: f"{r.time_to_fixpoint_s:,.0f} s ({r.passes:,} passes)")
    row("collapses", lambda r: _collapses(r, names))
    row("PMD ranges touched", lambda r: f"{r.pmds_touched:,}")
    row("RSS anon", lambda r: f"{_mib(r.before['rss_anon_pages'], ps)} → "
        f"{_mib(r.after['rss_anon_pages'], ps)}")
    row("bloat (zero-filled)", lambda r: _mib(r.bloat_pages, ps))
    row("swapped in", lambda r: _mib(r.swapins, ps))
    sizes = sorted({k for r in results for m in (r.before, r.after) for k in _sizes(m)},
                   key=lambda k: names.index(k.split()[0]) if k != "PMD" else 99)
    for k in sizes:
        row("PMD mappings" if k == "PMD" else f"pages in {k}",
            lambda r, k=k: _arrow(_sizes(r.before).get(k, 0), _sizes(r.after).get(k, 0)))
    for model in ("x86-64", "amd", "arm64"):
        row(f"TLB entries {model}", lambda r, m=model: _arrow(r.before["tlb_entries"][m],
                                                              r.after["tlb_entries"][m]))
    row("PTEs scanned", lambda r: f"{r.pages_scanned:,}")
    row("collapse attempts", lambda r: f"{r.attempts:,} "
        f"({r.attempts_by_result.get('SCAN_SUCCEED', 0):,} ok)")
    row("pages copied", lambda r: f"{r.copies:,}")
    row("PTEs per idle scan", lambda r: f"{r.idle_scan_pages:,}")
    row("first scan", lambda r: ", ".join(
        f"{k.removeprefix('SCAN_').lower()}:{v:,}"
        for k, v in sorted(r.first_scan_results.items(), key=lambda kv: -kv[1])[:4]) or "-")
    buf = io.StringIO()
    Console(file=buf, width=width, force_terminal=False, color_system=None).print(t)
    notes = sorted({n for r in results for n in r.notes})
    return buf.getvalue() + "".join(f"note: {n}\n" for n in notes)
