"""Run a sweep's cells locally (joblib/loky processes) or on a Dask cluster.

Output directory (docs/sweeps.md, "Output")::

    OUT/cells/<cell_id>/      one RunResult directory per finished cell
                              (series.parquet, layouts.npz, result.json written last)
    OUT/cells/<cell_id>/error.json   the error of a failed cell (removed once it succeeds)
    OUT/results.parquet       one row per cell per sample: cell columns + series columns
    OUT/summary.parquet       one row per cell: cell columns, status, error, summary values
    OUT/failures.json         the failed cells with their errors (an empty list if none)
    OUT/summary.png           bars per workload and run: mean over seeds, min..max whiskers

Workers only compute: every cell's result travels back to this process, which writes
all files (atomically), so Dask workers need no shared filesystem.  A cell whose
``result.json`` exists is finished and is skipped when the sweep is run again.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thpsim.commands import UsageError, write_atomic
from thpsim.sweep.grid import Cell, Grid

__all__ = ["CellOutcome", "SweepOutcome", "gather", "run_cell", "run_sweep"]

SUMMARY_METRICS = ("rss_kb", "bloat_kb", "pmd_mapped_kb", "tlb_x86-64")


@dataclass
class CellOutcome:
    """What a worker sends back: the result, or the error of a failed cell."""

    cell: Cell
    result: Any = None
    error: str = ""
    traceback: str = ""
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.result is not None


@dataclass
class SweepOutcome:
    """Counts of a sweep invocation and the paths it wrote."""

    out_dir: Path
    executed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    summary_rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def run_cell(cell: Cell) -> CellOutcome:
    """Simulate one cell; exceptions become a failed outcome (runs in a worker).

    Parameters
    ----------
    cell : Cell

    Returns
    -------
    CellOutcome
    """
    t0 = time.perf_counter()
    try:
        from thpsim.sim.runner import simulate

        res = simulate(cell.workload, params=dict(cell.params), policy=cell.policy,
                       settings=dict(cell.settings), duration_s=cell.duration_s,
                       seed=cell.seed, sample_s=cell.sample_s)
        return CellOutcome(cell, result=res, wall_s=time.perf_counter() - t0)
    except Exception as e:  # a failed cell is reported, not fatal
        msg = f"{type(e).__name__}: {e}".splitlines()[0]
        return CellOutcome(cell, error=msg, traceback=traceback.format_exc(),
                           wall_s=time.perf_counter() - t0)


# --- files ------------------------------------------------------------------------------
def cell_dir(out: Path, cell: Cell) -> Path:
    return out / "cells" / cell.cell_id


def is_finished(out: Path, cell: Cell) -> bool:
    """True when the cell's result directory is complete (``result.json`` exists)."""
    return (cell_dir(out, cell) / "result.json").exists()


def _record(out: Path, oc: CellOutcome) -> None:
    d = cell_dir(out, oc.cell)
    d.mkdir(parents=True, exist_ok=True)
    err = d / "error.json"
    if oc.ok:
        oc.result.save(d)
        err.unlink(missing_ok=True)
    else:
        doc = oc.cell.to_row() | {"error": oc.error, "traceback": oc.traceback}
        write_atomic(str(err), json.dumps(doc, indent=1) + "\n")


# --- executors ----------------------------------------------------------------------------
def _local(cells: Sequence[Cell], jobs: int | None) -> Iterable[CellOutcome]:
    from joblib import Parallel, delayed

    n = jobs or os.cpu_count() or 1
    par = Parallel(n_jobs=min(n, len(cells)), backend="loky", return_as="generator_unordered")
    try:
        yield from par(delayed(run_cell)(c) for c in cells)
    except Exception as e:  # a worker died (killed, out of memory): the rest cannot finish
        yield from _abandoned(cells, f"worker lost: {type(e).__name__}: {e}")


def _abandoned(cells: Sequence[Cell], why: str) -> Iterable[CellOutcome]:
    # cells the executor never reported; the caller drops the ones already recorded
    for c in cells:
        yield CellOutcome(c, error=why.splitlines()[0])


def _dask(cells: Sequence[Cell], address: str, timeout_s: float) -> Iterable[CellOutcome]:
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise UsageError("--scheduler needs dask.distributed (pip install 'thpsim[cluster]')"
                         ) from None
    try:
        client = Client(address, timeout=f"{timeout_s}s")
    except (OSError, TimeoutError, ValueError) as e:
        raise UsageError(f"--scheduler {address}: cannot connect ({e})") from None
    try:
        futures = client.map(run_cell, list(cells), pure=False)
        by_key = {f.key: c for f, c in zip(futures, cells, strict=True)}
        for fut in as_completed(futures):
            try:
                yield fut.result()
            except Exception as e:  # e.g. KilledWorker: the cell, not the sweep, fails
                yield CellOutcome(by_key[fut.key],
                                  error=f"{type(e).__name__}: {e}".splitlines()[0])
    finally:
        client.close()


# --- the sweep ----------------------------------------------------------------------------
def run_sweep(grid: Grid, out_dir: str | Path, *, jobs: int | None = None,
              scheduler: str | None = None, console=None, progress: bool = True,
              on_cell: Callable[[CellOutcome], None] | None = None,
              connect_timeout_s: float = 15.0) -> SweepOutcome:
    """Run the unfinished cells of ``grid`` and gather all results in ``out_dir``.

    Parameters
    ----------
    grid : Grid
    out_dir : path-like
        Created if missing; finished cells found there are skipped (resume).
    jobs : int, optional
        Local worker processes (default: the number of CPUs).
    scheduler : str, optional
        ``tcp://HOST:PORT`` of a Dask scheduler: run the cells there instead.
    console : rich.console.Console, optional
        Where the progress bar goes.
    progress : bool
        Show the progress bar.
    on_cell : callable, optional
        Called with each outcome as it arrives (after it is recorded).
    connect_timeout_s : float
        How long to wait for the Dask scheduler.

    Returns
    -------
    SweepOutcome
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    out = Path(out_dir)
    try:
        (out / "cells").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{out}: {e.strerror}") from None
    outcome = SweepOutcome(out_dir=out)
    todo = []
    for c in grid.cells:
        (outcome.skipped if is_finished(out, c) else todo).append(c)
    outcome.skipped = [c.cell_id for c in outcome.skipped]
    if todo:
        stream = (_dask(todo, scheduler, connect_timeout_s) if scheduler
                  else _local(todo, jobs))
        seen: set[str] = set()
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, disable=not progress,
                      transient=False) as bar:
            task = bar.add_task("cells", total=len(todo))
            for oc in stream:
                if oc.cell.cell_id in seen:
                    continue
                seen.add(oc.cell.cell_id)
                _record(out, oc)
                outcome.executed.append(oc.cell.cell_id)
                if not oc.ok:
                    outcome.failed[oc.cell.cell_id] = oc.error
                bar.update(task, advance=1,
                           description=f"cells ({len(outcome.failed)} failed)"
                           if outcome.failed else "cells")
                if on_cell is not None:
                    on_cell(oc)
    outcome.summary_rows = gather(grid, out)
    return outcome


def gather(grid: Grid, out_dir: str | Path) -> list[dict[str, Any]]:
    """Write results.parquet, summary.parquet, failures.json and summary.png from the
    cell directories of ``grid``; return the summary rows.

    Cells with neither a result nor an error (never run) get status ``"missing"``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from thpsim.report.labels import run_label
    from thpsim.report.plots import save_png, sweep_summary_figure
    from thpsim.sim.result import RunResult, RunResultError

    out = Path(out_dir)
    series_tables, rows, failures = [], [], []
    for c in grid.cells:
        d = cell_dir(out, c)
        base = c.to_row() | {"run_label": run_label(c.policy, c.settings, c.settings_name)}
        if (d / "result.json").exists():
            try:
                res = RunResult.load(d)
            except RunResultError as e:
                rows.append(base | {"status": "failed", "error": str(e)})
                failures.append(base | {"error": str(e)})
                continue
            t = pa.table({k: v for k, v in res.series.items()})
            for k, v in reversed(list(c.to_row().items())):
                t = t.add_column(0, k, pa.array([v] * t.num_rows))
            series_tables.append(t)
            rows.append(base | {"status": "ok", "error": ""}
                        | {k: float(v) for k, v in res.summary.items()})
        elif (d / "error.json").exists():
            with open(d / "error.json", encoding="utf-8") as fh:
                err = json.load(fh).get("error", "unknown error")
            rows.append(base | {"status": "failed", "error": err})
            failures.append(base | {"error": err})
        else:
            rows.append(base | {"status": "missing", "error": ""})

    def parquet(table, name: str) -> None:
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf)
        from thpsim.commands import write_atomic_bytes

        write_atomic_bytes(str(out / name), buf.getvalue().to_pybytes())

    if series_tables:
        parquet(pa.concat_tables(series_tables, promote_options="default"), "results.parquet")
    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(r))
    parquet(pa.table({k: [r.get(k) for r in rows] for k in keys}), "summary.parquet")
    write_atomic(str(out / "failures.json"), json.dumps(failures, indent=1) + "\n")
    ok = [r for r in rows if r["status"] == "ok"]
    if ok:
        metrics = [m for m in SUMMARY_METRICS if any(m in r for r in ok)]
        save_png(sweep_summary_figure(ok, metrics, f"Sweep {Path(grid.path).name}"),
                 out / "summary.png")
    return rows
