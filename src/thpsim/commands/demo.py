"""``thpsim demo``: one bundled workload under three policies and two max_ptes_none values.

Six runs (``legacy``, ``v11``, ``linux-7.2`` x ``max_ptes_none`` 511 and 0) in parallel
worker processes, a side-by-side table on the terminal and the HTML report on disk.
"""

from __future__ import annotations

import argparse
import os

from thpsim.commands import UsageError, positive_float

__all__ = ["DEMO_POLICIES", "DEMO_PTES_NONE", "DEMO_WORKLOAD", "cmd_demo", "demo_cells",
           "register"]

DEMO_WORKLOAD = "allocator"
DEMO_POLICIES = ("legacy", "v11", "linux-7.2")
DEMO_PTES_NONE = (511, 0)
DEMO_DURATION_S = 300.0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="a bundled workload under legacy, v11 and linux-7.2, side by side",
        description="Run the bundled workload under the three collapse policies with "
                    "khugepaged/max_ptes_none 511 and 0, print a side-by-side table and "
                    "write an HTML report.")
    p.add_argument("--report", default="thpsim-demo-report", metavar="DIR",
                   help="report directory (default: %(default)s)")
    p.add_argument("--duration", type=positive_float, default=DEMO_DURATION_S,
                   metavar="SECONDS", help="simulated seconds per run (default: %(default)g)")
    p.add_argument("--workload", default=DEMO_WORKLOAD,
                   help="workload to run (default: %(default)s; see thpsim simulate)")
    p.add_argument("--jobs", type=int, help="worker processes (default: CPUs)")
    p.add_argument("--seed", type=int, default=0, help="workload seed (default: 0)")
    p.set_defaults(func=cmd_demo)


def demo_cells(workload: str = DEMO_WORKLOAD, duration_s: float = DEMO_DURATION_S,
               seed: int = 0):
    """The demo's six cells, in table order (policy-major)."""
    from thpsim.sweep.grid import Cell

    return [Cell(workload_label=workload, workload=workload, params={}, policy=pol,
                 settings_name=f"max_ptes_none={n}",
                 settings={"khugepaged/max_ptes_none": str(n)}, seed=seed,
                 duration_s=duration_s)
            for pol in DEMO_POLICIES for n in DEMO_PTES_NONE]


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the six demo cells, print the table, write the report; 1 if a run failed."""
    from rich.console import Console

    from thpsim.report.html import write_report
    from thpsim.sweep.runner import _local

    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs {args.jobs}: expected a positive integer")
    try:
        from thpsim.workloads import WORKLOADS
    except ImportError:
        WORKLOADS = {}
    if WORKLOADS and args.workload not in WORKLOADS:
        raise UsageError(f"--workload {args.workload!r}: unknown workload (one of "
                         f"{', '.join(sorted(WORKLOADS))})")
    console = Console()
    cells = demo_cells(args.workload, args.duration, args.seed)
    wl = WORKLOADS.get(args.workload)
    about = f" -- {wl.summary}" if wl is not None and getattr(wl, "summary", "") else ""
    console.print(f"[bold]thpsim demo[/bold]: workload [cyan]{args.workload}[/cyan]{about}")
    console.print(f"{args.duration:g} simulated seconds under {', '.join(DEMO_POLICIES)} "
                  f"x khugepaged/max_ptes_none {' and '.join(map(str, DEMO_PTES_NONE))} "
                  f"({len(cells)} runs, {args.jobs or os.cpu_count()} processes)\n")
    order = {c.cell_id: i for i, c in enumerate(cells)}
    results: list = [None] * len(cells)
    failed = []
    with console.status("simulating..."):
        for oc in _local(cells, args.jobs):
            if oc.ok:
                results[order[oc.cell.cell_id]] = oc.result
            else:
                failed.append(oc)
    for oc in failed:
        console.print(f"[red]failed[/red] {oc.cell.policy} {oc.cell.settings_name}: {oc.error}",
                      highlight=False)
    done = [r for r in results if r is not None]
    if not done:
        return 1
    from thpsim.report.table import paired_table

    n = len(DEMO_PTES_NONE)
    # a failed run shows as "-" and keeps its place in the "511 / 0" pairs
    by_policy = [(f"{pol}\nnone {' / '.join(map(str, DEMO_PTES_NONE))}",
                  [r.summary if r is not None else {} for r in results[i * n:(i + 1) * n]])
                 for i, pol in enumerate(DEMO_POLICIES)]
    console.print(paired_table(by_policy, f"{args.workload} after {args.duration:g} s; none = "
                                          "khugepaged/max_ptes_none"))
    console.print(
        "RSS: resident anon memory.  PMD-mapped: memory in 2M THPs.  Zero-filled: resident "
        "pages holding only zeroes.  Bloat: empty or zero-page PTEs that collapses filled "
        "with new zeroed pages (total over the run).  TLB: entries needed to map the process "
        "(fewer is better).  With none=511 khugepaged collapses ranges with holes (more "
        "THPs, more memory); with none=0 only fully populated ranges.", highlight=False)
    index = write_report(done, args.report, f"thpsim demo: {args.workload}",
                         jobs=args.jobs or os.cpu_count())
    console.print(f"\nreport: {index}  (open it in a browser)", highlight=False, soft_wrap=True)
    return 1 if failed else 0
