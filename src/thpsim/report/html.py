"""The HTML report: ``index.html`` plus PNG plots beside it, in one directory.

The page holds the side-by-side table of the runs, a comparison plot (one line per
run), and per run its metadata, address-space map (before/after) and time series.
Everything is written atomically; ``index.html`` last, so a reader never sees a page
that refers to images not yet written.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from thpsim import __version__
from thpsim.commands import UsageError, write_atomic, write_atomic_bytes
from thpsim.report.labels import run_label, settings_label
from thpsim.report.plots import (
    address_map_figure,
    compare_figure,
    png_bytes,
    run_timeseries_figure,
)
from thpsim.report.table import comparison_rows

__all__ = ["write_report"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f4f4f4; }
img { max-width: 100%; border: 1px solid #eee; }
section.run { margin-top: 2em; border-top: 2px solid #ddd; }
code { background: #f6f6f6; padding: 0 0.2em; }
"""

_STALE = re.compile(r"^(run-\d+-(map|series)|compare)\.png$")


def _e(x: object) -> str:
    return html.escape(str(x))


def _params(params: object) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def _table(results: Sequence) -> str:
    cols = [(run_label(r.policy, r.settings), r.summary) for r in results]
    head = "".join(f"<th>{_e(r.policy)}<br>{_e(settings_label(r.settings))}</th>"
                   for r in results)
    body = [f"<tr><th>{_e(name)}</th>" + "".join(f'<td class="num">{_e(c)}</td>' for c in cells)
            + "</tr>" for name, cells in comparison_rows(cols)]
    meta = [("workload", lambda r: r.workload), ("seed", lambda r: r.seed),
            ("duration (s)", lambda r: f"{float(r.duration_s):g}")]
    for name, fn in reversed(meta):  # inserted at the top: workload, seed, duration
        body.insert(0, f"<tr><th>{_e(name)}</th>"
                       + "".join(f'<td class="num">{_e(fn(r))}</td>' for r in results) + "</tr>")
    return (f'<table class="comparison"><tr><th>run</th>{head}</tr>\n'
            + "\n".join(body) + "\n</table>")


def _run_section(i: int, r, images: list[str]) -> str:
    rows = [("workload", r.workload), ("parameters", _params(r.params)), ("policy", r.policy),
            ("settings", _params(r.settings) if r.settings else "defaults"),
            ("seed", r.seed), ("duration (s)", f"{float(r.duration_s):g}")]
    meta = "".join(f"<tr><th>{_e(k)}</th><td><code>{_e(v)}</code></td></tr>" for k, v in rows)
    imgs = "\n".join(f'<p><img src="{_e(name)}" alt="{_e(alt)}"></p>' for name, alt in images)
    return (f'<section class="run" id="run-{i}"><h2>Run {i + 1}: '
            f"{_e(run_label(r.policy, r.settings))}</h2>\n<table>{meta}</table>\n{imgs}\n"
            "</section>")


def _render_run(i: int, r) -> list[tuple[str, bytes, str]]:
    """PNGs of run ``i``: ``[(file name, data, alt text)]`` (runs in a worker)."""
    label = run_label(r.policy, r.settings)
    out = []
    layouts = {k: v for k, v in (r.layouts or {}).items() if v is not None}
    if layouts:
        out.append((f"run-{i}-map.png",
                    png_bytes(address_map_figure(layouts, f"Address space: {label}")),
                    f"address-space map, {label}"))
    out.append((f"run-{i}-series.png",
                png_bytes(run_timeseries_figure(r.series, f"Time series: {label}")),
                f"time series, {label}"))
    return out


def write_report(results: Sequence, directory, title: str = "thpsim report",
                 jobs: int | None = None) -> Path:
    """Write the report of ``results`` to ``directory``; return the path of index.html.

    Parameters
    ----------
    results : sequence of RunResult
        Runs to compare (one table column each), in display order.
    directory : path-like
        Created if missing; the report's PNGs of an earlier report there are replaced.
    title : str
    jobs : int, optional
        Render the runs' plots in this many worker processes (default: in this one).

    Returns
    -------
    Path
        ``directory/index.html``.
    """
    if not results:
        raise UsageError("report: no runs to report")
    out = Path(directory)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{out}: {e.strerror}") from None
    written: set[str] = set()

    def save(name: str, data: bytes) -> str:
        write_atomic_bytes(str(out / name), data)
        written.add(name)
        return name

    cmp_name = save("compare.png", png_bytes(compare_figure(
        [(run_label(r.policy, r.settings), r.series) for r in results], "All runs")))
    if jobs is not None and jobs > 1 and len(results) > 1:
        from joblib import Parallel, delayed

        rendered = Parallel(n_jobs=min(jobs, len(results)), backend="loky")(
            delayed(_render_run)(i, r) for i, r in enumerate(results))
    else:
        rendered = [_render_run(i, r) for i, r in enumerate(results)]
    sections = []
    for i, (r, images) in enumerate(zip(results, rendered, strict=True)):
        sections.append(_run_section(i, r, [(save(name, data), alt)
                                            for name, data, alt in images]))
    for name in os.listdir(out):  # images of an earlier, larger report
        if _STALE.match(name) and name not in written:
            (out / name).unlink(missing_ok=True)
    workloads = sorted({str(r.workload) for r in results})
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>
<style>{_STYLE}</style></head><body>
<h1>{_e(title)}</h1>
<p>thpsim {_e(__version__)} &middot; {len(results)} runs &middot; workloads:
{_e(", ".join(workloads))} &middot; generated {_e(stamp)}</p>
<h2>Side by side</h2>
{_table(results)}
<p><img src="{cmp_name}" alt="comparison of all runs"></p>
<p>Values at the end of each run; sizes in MiB.  TLB rows count the entries needed to map
the process (reach) under each TLB model.  khugepaged rows and bloat (empty or zero-page
PTEs that collapses filled with new zeroed pages) are totals over the run
(definitions: docs/workloads.md, "Metrics").</p>
{"".join(sections)}
</body></html>
"""
    index = out / "index.html"
    write_atomic(str(index), page)
    return index
