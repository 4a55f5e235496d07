"""``thpsim whatif``: predict what khugepaged would do to a snapshot (docs/whatif.md)."""

from __future__ import annotations

import argparse
import itertools
import os
import shutil

from thpsim.commands import UsageError, parse_settings, write_atomic

__all__ = ["cmd_whatif", "register"]

POLICY_NAMES = ("v11", "linux-7.2", "legacy")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "whatif", help="predict what khugepaged would do to a snapshot",
        description="Load a snapshot (or capture --pid) into the model and run khugepaged "
                    "until a full scan collapses nothing (or --scans N) under every "
                    "combination of --policy and --settings; print a side-by-side table "
                    "or --json.")
    p.add_argument("snapshot", nargs="?", metavar="SNAPSHOT", help="snapshot file")
    p.add_argument("--pid", type=int, help="capture this live process instead (root)")
    p.add_argument("--policy", nargs="+", choices=POLICY_NAMES, metavar="POLICY",
                   help="policies to compare: v11, linux-7.2, legacy (default: all three)")
    p.add_argument("--settings", nargs="+", action="append", metavar="K=V",
                   help="one settings combination (sysfs paths relative to "
                        "transparent_hugepage/; khugepaged knobs and '64kB=always' may be "
                        "abbreviated); repeat for several combinations")
    p.add_argument("--scans", type=int, metavar="N",
                   help="run exactly N full scans (default: until a fixpoint)")
    p.add_argument("--json", action="store_true", help="print JSON (schema in docs/whatif.md)")
    p.add_argument("-o", "--output", metavar="FILE", help="write the output to FILE")
    p.set_defaults(func=cmd_whatif)


def _load(args):
    if (args.snapshot is None) == (args.pid is None):
        raise UsageError("give a SNAPSHOT file or --pid PID (one of them)")
    if args.pid is not None:
        from thpsim.snapshot.capture import capture

        return capture(args.pid)
    if not os.path.exists(args.snapshot):
        raise UsageError(f"{args.snapshot}: no such file")
    from thpsim.snapshot.io import load_snapshot

    return load_snapshot(args.snapshot)


def cmd_whatif(args) -> int:
    from thpsim.whatif.report import to_json, to_table
    from thpsim.whatif.run import Combo, whatif

    if args.scans is not None and args.scans < 1:
        raise UsageError(f"--scans {args.scans}: must be at least 1")
    policies = args.policy or list(POLICY_NAMES)
    raw = args.settings or [[]]
    if args.snapshot is None and args.pid is None:
        # "--settings K=V FILE": argparse gave the file to the last --settings
        last = raw[-1]
        if last and "=" not in last[-1] and os.path.exists(last[-1]):
            args.snapshot = last.pop()
    groups = [parse_settings(g) for g in raw]
    snap = _load(args)
    combos = [Combo.of(p, s) for p, s in itertools.product(policies, groups)]
    results = whatif(snap, combos, scans=args.scans)
    if args.json:
        text = to_json(snap, results, args.scans)
    else:
        width = max(100, shutil.get_terminal_size((160, 24)).columns)
        text = to_table(snap, results, width=width)
    if args.output:
        write_atomic(args.output, text)
    else:
        print(text, end="")
    return 0
