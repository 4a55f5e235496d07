"""``thpsim inspect``: THP layouts of live processes (thpmaps' counters + khugepaged's view)."""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys

from thpsim.commands import UsageError, write_atomic

__all__ = ["register", "render"]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "inspect", help="THP usage of live processes (thpmaps counters, khugepaged's view)",
        description="Read-only report of how live processes are mapped by THPs: thpmaps' "
                    "counters per VMA (same labels, kB and percentages of the VMA's "
                    "Anonymous), PTE occupancy as khugepaged classifies it and the PMD "
                    "ranges khugepaged would scan under the current settings. Needs root.")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--pid", type=int, action="append", default=[], metavar="PID",
                     help="a process to inspect (repeatable); default: every process")
    who.add_argument("--cgroup", metavar="PATH",
                     help="every process of this cgroup and its children")
    p.add_argument("--rollup", action="store_true",
                   help="sum the per-VMA statistics (human output shows only the sum)")
    p.add_argument("--cont", action="append", default=[], metavar="SIZE",
                   help="also count naturally aligned contiguous blocks of SIZE (e.g. 64K)")
    p.add_argument("--pmds", action="store_true",
                   help="layout pictures of each PMD-aligned window of the VMAs with pages")
    p.add_argument("--json", action="store_true", help="print JSON (see docs/inspect.md)")
    p.add_argument("--inc-empty", action="store_true",
                   help="show zero counters and VMAs without pages too (human output)")
    p.add_argument("--inc-smaps", action="store_true",
                   help="add the additive smaps fields to the counters, as thpmaps does")
    p.add_argument("-o", "--output", metavar="FILE", help="write the output to FILE")
    p.set_defaults(func=cmd_inspect)


def cmd_inspect(args: argparse.Namespace) -> int:
    from thpsim.host import pagemap as pm
    from thpsim.host.inspect import inspect
    from thpsim.host.thpmaps import cont_order

    nr = pm.pmd_nr()
    try:
        orders = tuple(cont_order(c, page_size=pm.PAGE_SIZE, pmd_order=nr.bit_length() - 1)
                       for c in args.cont)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.cgroup is not None:
        from thpsim.host.inspect import cgroup_pids

        try:
            cgroup_pids(args.cgroup)
        except ValueError as e:
            raise UsageError(str(e)) from None
    report = inspect(args.pid or None, cgroup=args.cgroup, cont_orders=orders, pmds=args.pmds,
                     inc_smaps=args.inc_smaps, with_rollup=args.rollup)
    if args.json:
        text = json.dumps(report.to_json(), indent=1) + "\n"
    else:
        width = 160
        if not args.output and sys.stdout.isatty():
            width = shutil.get_terminal_size().columns
        text = render(report, rollup_only=args.rollup, inc_empty=args.inc_empty, width=width)
    if args.output:
        write_atomic(args.output, text)
    else:
        sys.stdout.write(text)
    return 0


# ---------------------------------------------------------------- human output

_FLAG_CODES = ("hg", "nh", "lo", "um", "uw", "ui", "io", "pf", "de", "mm", "ht")


def _counter_lines(counters: dict[str, int], anon_kb: int, file_kb: int,
                   inc_empty: bool) -> list[str]:
    from thpsim.host.thpmaps import counter_kind, percent

    out = []
    for label, kb in counters.items():
        if not kb and not inc_empty:
            continue
        kind = counter_kind(label)
        total = anon_kb if kind == "anon" else file_kb if kind == "file" else 0
        out.append(f"{label}: {kb} kB{percent(kb, total)}")
    return out


def _occupancy_text(occ: dict[str, int]) -> str:
    return "/".join(str(occ[k]) for k in ("present", "none", "zero", "swap", "shared"))


def render(report, *, rollup_only: bool = False, inc_empty: bool = False,
           width: int = 160) -> str:
    """The human report: one Rich table per process (or only the rollup), then pictures."""
    from rich.console import Console
    from rich.table import Table

    from thpsim.host.pagemap import PAGE_SIZE
    from thpsim.layout import Layout

    buf = io.StringIO()
    con = Console(file=buf, width=max(width, 60), color_system=None, highlight=False)
    if not rollup_only:
        for proc in report.processes:
            t = Table(title=f"{proc.pid} {proc.comm}", title_justify="left")
            for col in ("VMA", "flags", "thpmaps counters",
                        "present/none/zero/swap/shared", "khugepaged PMDs"):
                t.add_column(col, overflow="fold")
            shown = []
            for v in proc.vmas:
                lines = _counter_lines(v.counters, v.anonymous_kb, v.file_kb, inc_empty)
                empty = v.occupancy["none"] == (v.end - v.start) // PAGE_SIZE and not lines
                if empty and not inc_empty:
                    continue
                shown.append(v)
                flags = " ".join(c for c in v.flags.split() if c in _FLAG_CODES)
                t.add_row(f"{v.start:x}-{v.end:x}\n{v.perms} {v.path}".rstrip(), flags,
                          "\n".join(lines), _occupancy_text(v.occupancy).replace(" s", "\ns"),
                          str(v.khugepaged_eligible_pmds))
            con.print(t)
            for v in shown:
                if v.pmds:
                    con.print(f"VMA {v.start:#x}-{v.end:#x}")
                    con.print(Layout(v.pmds).render(), markup=False)
    if report.rollup is not None:
        r = report.rollup
        t = Table(title="rollup", title_justify="left")
        t.add_column("counter")
        t.add_column("value", justify="right")
        for line in _counter_lines(r["counters"], r["anonymous_kb"], r["file_kb"], inc_empty):
            label, _, value = line.partition(": ")
            t.add_row(label, value)
        for k, n in r["occupancy"].items():
            t.add_row(f"occupancy {k}", f"{n} pages")
        t.add_row("khugepaged eligible PMDs", str(r["khugepaged_eligible_pmds"]))
        con.print(t)
    if report.skipped:
        con.print(f"skipped {len(report.skipped)} processes: "
                  + "; ".join(f"{s['pid']}: {s['reason']}" for s in report.skipped[:5])
                  + (" ..." if len(report.skipped) > 5 else ""))
    kh = report.khugepaged
    con.print(f"khugepaged ({kh.get('policy')} rules): "
              + ("running" if kh.get("enabled") else "off under the current settings"))
    return buf.getvalue()
