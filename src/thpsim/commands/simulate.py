"""``thpsim simulate``: run a workload over simulated time and report its metrics."""

from __future__ import annotations

import argparse
import json
import sys

from thpsim.commands import UsageError, parse_pairs, parse_settings

__all__ = ["register"]

_SHOWN = ("rss_kb", "mem_kb", "anon_kb", "bloat_kb", "pmd_mapped_kb", "tlb_x86-64", "tlb_amd",
          "tlb_arm64", "khugepaged_pages_scanned", "khugepaged_attempts",
          "khugepaged_successes", "khugepaged_copies", "khugepaged_cpu_ms", "full_scans",
          "events", "touches", "wall_s", "events_per_s", "touches_per_s")


def register(sub: argparse._SubParsersAction) -> None:
    from thpsim.mm.settings import POLICIES

    p = sub.add_parser(
        "simulate", help="run a workload over simulated time with khugepaged",
        description="Run a workload (see --list) on a fresh simulated machine with "
                    "khugepaged on the same clock; print the final metrics and optionally "
                    "save the time series (Parquet + JSON).")
    p.add_argument("workload", nargs="?", help="workload name (see --list)")
    p.add_argument("--list", action="store_true", help="list workloads and their parameters")
    p.add_argument("--param", "-p", action="append", default=[], metavar="K=V",
                   help="workload parameter (repeatable)")
    p.add_argument("--policy", default="linux-7.2", choices=POLICIES,
                   help="khugepaged policy (default linux-7.2)")
    p.add_argument("--settings", action="append", default=[], metavar="PATH=VALUE",
                   help="THP sysfs knob, e.g. khugepaged/max_ptes_none=0 (repeatable)")
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                   help="simulated seconds (default: the workload's, 600 for most)")
    p.add_argument("--sample", type=float, default=None, metavar="SECONDS",
                   help="sampling period (default: duration/120)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--report", metavar="DIR",
                   help="save series.parquet, layouts.npz, result.json (and an HTML report "
                        "when available) into DIR")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_simulate)


def _list() -> int:
    from thpsim.workloads import WORKLOADS

    for name, cls in WORKLOADS.items():
        print(f"{name}: {cls.summary}")
        for key, prm in cls.PARAMS.items():
            default = ",".join(prm.default) if isinstance(prm.default, list) else prm.default
            print(f"    {key} = {default!s:<14} {prm.doc}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from thpsim.sim.result import RunResultError
    from thpsim.sim.runner import make_workload, simulate
    from thpsim.workloads import WorkloadError

    if args.list:
        return _list()
    if not args.workload:
        raise UsageError("simulate: give a WORKLOAD (see thpsim simulate --list)")
    params = parse_pairs(args.param, "--param")
    settings = parse_settings(args.settings)
    try:
        wl = make_workload(args.workload, params)
        bar = _Bar(enabled=not args.no_progress and not args.json and sys.stderr.isatty())
        with bar:
            result = simulate(wl, policy=args.policy, settings=settings,
                              duration_s=args.duration, seed=args.seed,
                              sample_s=args.sample, progress=bar.update)
    except WorkloadError as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        raise UsageError(f"--settings: {where}{e.strerror or e}") from None
    if args.report:
        try:
            result.save(args.report)
        except (OSError, RunResultError) as e:
            raise UsageError(f"--report {args.report}: {e}") from None
        try:
            from thpsim.report.html import write_report
        except ImportError:
            write_report = None
        if write_report is not None:
            write_report([result], args.report, title=f"thpsim simulate {result.workload}")
    s = result.summary
    if args.json:
        print(json.dumps({"workload": result.workload, "policy": result.policy,
                          "params": result.params, "settings": result.settings,
                          "duration_s": result.duration_s, "seed": result.seed,
                          "summary": s}, indent=1, default=str))
        return 0
    print(f"{result.workload} under {result.policy}, {result.duration_s:g} s simulated"
          + (f", settings {result.settings}" if result.settings else ""))
    for key in _SHOWN:
        if key in s:
            print(f"  {key:<26} {s[key]:>14,.1f}")
    if args.report:
        print(f"saved to {args.report}")
    return 0


class _Bar:
    """A Rich progress bar on stderr driven by ``update(fraction)``."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar = None
        self._task = None

    def __enter__(self) -> _Bar:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("simulating"), BarColumn(),
                                 TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
                                 console=Console(stderr=True), transient=True)
            self._bar.start()
            self._task = self._bar.add_task("simulating", total=1.0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def update(self, fraction: float) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=fraction)
