"""``thpsim sweep GRID.toml``: run a grid of simulations locally or on a Dask cluster."""

from __future__ import annotations

import argparse
from pathlib import Path

from thpsim.commands import UsageError, positive_int

__all__ = ["cmd_sweep", "register"]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep", help="run a grid of simulations (workloads x policies x settings x seeds)",
        description="Run every cell of GRID.toml (docs/sweeps.md) and gather the results "
                    "in one Parquet table with summary plots.  Re-running with the same "
                    "output directory skips finished cells.  Exit 1 if any cell failed.")
    p.add_argument("grid", help="grid file (TOML, docs/sweeps.md)")
    p.add_argument("-o", "--out", help="output directory (default: GRID name + '-sweep')")
    p.add_argument("--jobs", type=positive_int, help="local worker processes (default: CPUs)")
    p.add_argument("--scheduler", metavar="ADDR",
                   help="Dask scheduler address (tcp://HOST:PORT): run the cells there")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sweep)


def _mean(group: list[dict]) -> dict[str, float]:
    keys = {k for r in group for k, v in r.items() if isinstance(v, float) and k != "duration_s"}
    return {k: sum(r[k] for r in group if k in r) / sum(1 for r in group if k in r)
            for k in keys}


def _print_tables(console, rows) -> None:
    """Per workload: one column per policy, its settings sets' seed means joined by "/"."""
    from thpsim.report.table import paired_table

    ok = [r for r in rows if r["status"] == "ok"]
    for wl in dict.fromkeys(r["workload_label"] for r in ok):  # grid order
        mine = [r for r in ok if r["workload_label"] == wl]
        sets = list(dict.fromkeys(r["settings_name"] for r in rows
                                  if r["workload_label"] == wl))
        groups = []
        for pol in dict.fromkeys(r["policy"] for r in mine):
            cells = [_mean([r for r in mine if r["policy"] == pol and r["settings_name"] == s])
                     if any(r["policy"] == pol and r["settings_name"] == s for r in mine)
                     else {} for s in sets]
            groups.append((f"{pol}\n{' / '.join(sets)}", cells))
        seeds = len({r["seed"] for r in mine})
        console.print(paired_table(groups, f"{wl}: mean over {seeds} seed(s)"))


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run the sweep, print per-workload tables and the failures; 1 if any cell failed."""
    from rich.console import Console

    from thpsim.sweep.grid import GridError, load_grid
    from thpsim.sweep.runner import run_sweep

    try:
        grid = load_grid(args.grid)
    except GridError as e:
        raise UsageError(str(e)) from None
    out = Path(args.out) if args.out else Path(Path(args.grid).stem + "-sweep")
    console = Console()
    todo = len(grid.cells)
    console.print(f"[bold]thpsim sweep[/bold] {args.grid}: {todo} cells -> {out}"
                  + (f" on {args.scheduler}" if args.scheduler else ""))
    res = run_sweep(grid, out, jobs=args.jobs, scheduler=args.scheduler, console=console,
                    progress=not args.no_progress)
    _print_tables(console, res.summary_rows)
    console.print(f"{len(res.executed)} cells run, {len(res.skipped)} already finished, "
                  f"{len(res.failed)} failed")
    for cid, err in res.failed.items():
        console.print(f"[red]failed[/red] {cid}: {err}", highlight=False)
    console.print(f"results: {out / 'results.parquet'}, {out / 'summary.parquet'}, "
                  f"{out / 'summary.png'}; failures: {out / 'failures.json'}")
    return res.exit_code
