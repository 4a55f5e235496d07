"""The ``thpsim`` command line: a thin layer over the Python API.

Errors from bad input are printed as one line (``thpsim: error: ...``) with
exit code 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys as _sys

from thpsim import __version__
from thpsim.commands import UsageError, parse_settings, write_atomic
from thpsim.host.errors import HostUnavailable, ProcessGone
from thpsim.mm.settings import POLICIES
from thpsim.system import DEFAULT_POLICY, System

__all__ = ["UsageError", "main", "write_atomic"]


def _apply_settings(sys_: System, pairs: list[str]) -> None:
    for path, value in parse_settings(pairs).items():
        try:
            sys_.settings.write(path, value)
        except OSError as e:
            raise UsageError(f"--settings {path}={value}: {e.strerror or e}") from None


# --- layout -------------------------------------------------------------------------------
def cmd_layout(args: argparse.Namespace) -> int:
    """Build a region from an access pattern and print its layout."""
    s = System(memory=args.memory, page_size=args.page_size, policy=args.policy)
    _apply_settings(s, args.settings or [])
    p = s.spawn()
    g = s.geometry
    length = args.pmds * g.pmd_size
    a = p.mmap(length)
    if args.madvise:
        for adv in args.madvise.split(","):
            if p.madvise(a, length, adv) != 0:
                raise UsageError(f"--madvise {adv!r}: not a madvise advice")
    from thpsim.scenario_pages import parse_pages

    try:
        if args.write:
            p.touch(a, pages=parse_pages(args.write, args.pmds * g.hpage_pmd_nr))
        if args.read:
            p.touch(a, pages=parse_pages(args.read, args.pmds * g.hpage_pmd_nr), write=False)
    except ValueError as e:
        raise UsageError(str(e)) from None
    lay = p.layout(a, length)
    if args.json:
        print(json.dumps({"pmds": lay.to_json(), "counters": s.counters.snapshot()}))
    else:
        print(lay.render())
    return 0


# --- explain ------------------------------------------------------------------------------
def _read_patterns(spec: str) -> list[str]:
    if not spec.startswith("@"):
        return [spec]
    path = spec[1:]
    try:
        with open(path, encoding="utf-8") as fh:
            lines = [ln.strip() for ln in fh]
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror}") from None
    return [ln for ln in lines if ln and not ln.startswith("#")]


def _render_explain(res: dict, pattern: str, args: argparse.Namespace) -> str:
    out = [f"policy {res['policy']}, enabled {args.enabled}"
           + "".join(f", {k.split('/')[-1]} {v}" for k, v in _explain_knobs(args).items())]
    out.append("before:")
    out += [f"  {i:3d} {pattern[i:i + 64]}" for i in range(0, len(pattern), 64)]
    for n, scan in enumerate(res["scans"], 1):
        out.append(f"scan {n}: {scan['result']}")
        if not scan["attempts"]:
            out.append("  (no collapse attempt)")
        top = max((a["order"] for a in scan["attempts"]), default=0)
        for a in scan["attempts"]:
            indent = "  " * (top - a["order"] + 1)
            mark = "+" if a["result"] == "SCAN_SUCCEED" else "-"
            out.append(f"{indent}{mark} o{a['order']}@{a['offset']:<4d} {a['result']}")
        pic = scan["picture"]
        out.append("  after:")
        out += [f"    {i:3d} {pic[i:i + 64]}" for i in range(0, len(pic), 64)]
    c = res["counters"]
    out.append("counters:")
    for k, v in c["vmstat"].items():
        out.append(f"  vmstat {k} {v:+d}")
    for size, vals in c["mthp"].items():
        for k, v in vals.items():
            out.append(f"  hugepages-{size}/stats/{k} {v:+d}")
    for k, v in c["khugepaged"].items():
        out.append(f"  khugepaged/{k} {v:+d}")
    for w in res.get("warnings", []):
        out.append(f"dmesg: {w}")
    return "\n".join(out)


def _explain_knobs(args: argparse.Namespace) -> dict[str, str]:
    knobs = {}
    for name in ("max_ptes_none", "max_ptes_swap", "max_ptes_shared"):
        val = getattr(args, name)
        if val is not None:
            knobs[f"khugepaged/{name}"] = str(val)
    return knobs


def cmd_explain(args: argparse.Namespace) -> int:
    """Build one PMD from a pattern, run khugepaged, show every attempt."""
    from thpsim.explain import explain, new_system, parse_pattern

    patterns = _read_patterns(args.pattern)
    if args.scans < 1:
        raise UsageError("--scans must be at least 1")
    try:
        machine = new_system(args.policy, args.page_size)
    except ValueError as e:
        raise UsageError(f"--page-size: {e}") from None
    nr = machine.geometry.hpage_pmd_nr
    for i, pat in enumerate(patterns, 1):  # validate everything before any output
        try:
            parse_pattern(pat, nr)
        except ValueError as e:
            where = f"{args.pattern[1:]}:{i}: " if args.pattern.startswith("@") else ""
            raise UsageError(f"{where}{e}") from None
    if args.trace:
        import os

        tdir = os.path.dirname(os.path.abspath(args.trace))
        if not os.path.isdir(tdir) or not os.access(tdir, os.W_OK):
            raise UsageError(f"--trace {args.trace}: directory {tdir} is not writable")
    trace_lines: list[str] = []
    for i, pat in enumerate(patterns, 1):
        where = f"{args.pattern[1:]}:{i}: " if args.pattern.startswith("@") else ""
        try:
            res = explain(pat, policy=args.policy, enabled=args.enabled,
                          knobs=_explain_knobs(args), alloc_fail=args.alloc_fail or "",
                          scans=args.scans, lru_batch=args.lru_batch == "on",
                          page_size=args.page_size, trace=bool(args.trace), sys=machine)
        except OSError as e:
            raise UsageError(f"{where}{e.filename or ''}: {e.strerror}") from None
        except ValueError as e:
            raise UsageError(f"{where}{e}") from None
        trace_lines += res.pop("trace", [])
        if args.json:
            print(json.dumps({k: v for k, v in res.items() if k != "warnings"}))
        else:
            print(_render_explain(res, parse_pattern(pat, nr), args))
    if args.trace:
        write_atomic(args.trace, "".join(line + "\n" for line in trace_lines))
    return 0


# --- scenario -----------------------------------------------------------------------------
EXECUTOR_NAMES = ("model", "host", "vm")


def _load_scenario(path: str):
    from thpsim.scenario.spec import ScenarioError, load_scenario

    try:
        return load_scenario(path)
    except ScenarioError as e:
        raise UsageError(str(e)) from None


def _run_scenario(sc, on: str, policy: str, trace: bool = False, flag: str = "--on") -> dict:
    from thpsim.scenario.executors import ExecutorUnavailable, run_scenario

    try:
        return run_scenario(sc, on, policy=policy if on == "model" else None, trace=trace)
    except ExecutorUnavailable as e:
        raise UsageError(f"{flag} {on}: {e}") from None


def cmd_scenario_run(args: argparse.Namespace) -> int:
    """Run one scenario file; exit 1 if one of its expectations for this policy fails."""
    from thpsim.scenario.expect import check_expectations
    from thpsim.scenario.report import render_result

    sc = _load_scenario(args.file)
    if args.trace:
        import os

        tdir = os.path.dirname(os.path.abspath(args.trace))
        if not os.path.isdir(tdir) or not os.access(tdir, os.W_OK):
            raise UsageError(f"--trace {args.trace}: directory {tdir} is not writable")
    res = _run_scenario(sc, args.on, args.policy, trace=bool(args.trace))
    if args.trace:
        write_atomic(args.trace, "".join(line + "\n" for line in res.get("trace", [])))
    expect = check_expectations(sc, res)
    if args.json:
        print(json.dumps(res))
    else:
        print(render_result(sc, res, expect))
    return 0 if expect.ok else 1


def cmd_scenario_diff(args: argparse.Namespace) -> int:
    """Run one scenario on two executors/policies and diff: 0 equal, 1 different."""
    from thpsim.scenario.diff import diff_scenario
    from thpsim.scenario.report import render_diff

    sc = _load_scenario(args.file)
    # --policy names the model's policy when only the --vs side is the model
    # (`--on host --vs model --policy legacy`)
    policy_vs = args.policy_vs or (args.policy if args.on != "model" else None)
    a = _run_scenario(sc, args.on, args.policy or DEFAULT_POLICY)
    b = _run_scenario(sc, args.vs, policy_vs or DEFAULT_POLICY, flag="--vs")
    rep = diff_scenario(sc, a, b)
    print(render_diff(sc, a, b, rep))
    return rep.exit_code


def cmd_scenario_record(args: argparse.Namespace) -> int:
    """Run the scenarios on a real kernel and store the documents as golden results."""
    from thpsim.scenario.executors import ExecutorUnavailable
    from thpsim.scenario.golden import record_golden

    scs = [_load_scenario(f) for f in args.files]
    if args.on == "vm":
        from thpsim.scenario.vm_exec import run_many_on_vm

        try:
            docs = run_many_on_vm(scs)
        except ExecutorUnavailable as e:
            raise UsageError(f"--on vm: {e}") from None
    else:
        docs = [_run_scenario(sc, "host", DEFAULT_POLICY) for sc in scs]
    ok = [d for d in docs if "error" not in d]
    for d in docs:
        if "error" in d:
            print(f"thpsim: {d['scenario']}: {d['error']}", file=_sys.stderr)
    if ok:
        kdir = record_golden(ok, args.output, note=args.note)
        print(f"recorded {len(ok)} of {len(docs)} scenario(s) in {kdir}")
    return 0 if len(ok) == len(docs) else 1


def cmd_host_restore(args: argparse.Namespace) -> int:
    """Undo the THP knob changes of a host run that was killed outright."""
    from thpsim.host.thp_sysfs import DEFAULT_STATE_FILE, cli_restore

    return cli_restore(args.state_file or DEFAULT_STATE_FILE)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="thpsim", description=__doc__.splitlines()[0])
    ap.add_argument("--version", action="version", version=f"thpsim {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)

    lay = sub.add_parser("layout", help="print the layout of a region after touches")
    lay.add_argument("--pmds", type=int, default=1, help="region size in PMDs")
    lay.add_argument("--write", help="pages to write, e.g. '0-63,100-200:4'")
    lay.add_argument("--read", help="pages to read")
    lay.add_argument("--madvise", help="advice applied to the whole region first")
    lay.add_argument("--settings", nargs="*", metavar="PATH=VALUE")
    lay.add_argument("--memory", default="1G")
    lay.add_argument("--page-size", default="4K")
    lay.add_argument("--policy", choices=POLICIES, default=DEFAULT_POLICY)
    lay.add_argument("--json", action="store_true")
    lay.set_defaults(func=cmd_layout)

    ex = sub.add_parser("explain", help="one PMD through khugepaged, step by step")
    ex.add_argument("pattern", help="PMD pattern ('0*64 .*448'), or @FILE with one per line")
    ex.add_argument("--policy", choices=POLICIES, default=DEFAULT_POLICY)
    ex.add_argument("--enabled", default="2M", help="sizes the VMA allows, e.g. 16K,64K,2M")
    ex.add_argument("--max-ptes-none", type=int)
    ex.add_argument("--max-ptes-swap", type=int)
    ex.add_argument("--max-ptes-shared", type=int)
    ex.add_argument("--alloc-fail", help="sizes whose collapse allocations fail")
    ex.add_argument("--scans", type=int, default=1, help="khugepaged full scans to run")
    ex.add_argument("--lru-batch", choices=("on", "off"), default="on",
                    help="model the per-CPU LRU-batch pins (linux-7.2.md §4.6)")
    ex.add_argument("--page-size", default="4K")
    ex.add_argument("--json", action="store_true",
                    help="one JSON object per pattern, one per line")
    ex.add_argument("--trace", metavar="FILE",
                    help="write the huge_memory tracepoint lines (ftrace format) to FILE")
    ex.set_defaults(func=cmd_explain)

    sc = sub.add_parser("scenario", help="run scenario files (TOML) and diff executors")
    scsub = sc.add_subparsers(dest="scenario_cmd", required=True)
    run = scsub.add_parser("run", help="run a scenario and print its result")
    run.add_argument("file", help="scenario file (docs/scenarios.md)")
    run.add_argument("--on", choices=EXECUTOR_NAMES, default="model", help="executor")
    run.add_argument("--policy", choices=POLICIES, default=DEFAULT_POLICY,
                     help="khugepaged policy of the model")
    run.add_argument("--json", action="store_true", help="print the result document")
    run.add_argument("--trace", metavar="FILE",
                     help="write the huge_memory tracepoint lines (ftrace format) to FILE")
    run.set_defaults(func=cmd_scenario_run)
    dif = scsub.add_parser("diff", help="run a scenario twice and compare (exit 0 equal, "
                                        "1 different, 2 could not run)")
    dif.add_argument("file", help="scenario file")
    dif.add_argument("--on", choices=EXECUTOR_NAMES, default="model", help="first executor")
    dif.add_argument("--policy", choices=POLICIES,
                     help=f"model policy of the first run, or of the second when only it "
                          f"is the model (default {DEFAULT_POLICY})")
    dif.add_argument("--vs", choices=EXECUTOR_NAMES, default="model", help="second executor")
    dif.add_argument("--policy-vs", choices=POLICIES,
                     help=f"model policy of the second run (default {DEFAULT_POLICY})")
    dif.set_defaults(func=cmd_scenario_diff)
    rec = scsub.add_parser("record", help="record golden results of scenarios on a real "
                                          "kernel (host, or the VM in one boot)")
    rec.add_argument("files", nargs="+", help="scenario files")
    rec.add_argument("--on", choices=("host", "vm"), required=True, help="executor")
    rec.add_argument("-o", "--output", default="tests/scenarios/golden",
                     help="golden root directory (default: tests/scenarios/golden)")
    rec.add_argument("--note", default="", help="kept in KERNEL.json")
    rec.set_defaults(func=cmd_scenario_record)
    host = sub.add_parser("host", help="the machine's real kernel")
    host_sub = host.add_subparsers(dest="host_cmd", required=True)
    hr = host_sub.add_parser("restore", help="restore THP knobs saved by a killed run")
    hr.add_argument("--state-file", help="the state file (default: the run's default)")
    hr.set_defaults(func=cmd_host_restore)
    _register_command_modules(sub)
    return ap


def _register_command_modules(sub) -> None:
    """Add the sub-commands of every ``thpsim.commands.*`` module with ``register``."""
    import importlib
    import pkgutil

    import thpsim.commands as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
        if hasattr(mod, "register"):
            mod.register(sub)


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:
        return 0
    except UsageError as e:
        print(f"thpsim: error: {e}", file=_sys.stderr)
        return 2
    except (HostUnavailable, ProcessGone) as e:
        print(f"thpsim: error: {e}", file=_sys.stderr)
        return getattr(e, "exit_code", 2)
    except (ValueError, OSError) as e:
        print(f"thpsim: error: {e}", file=_sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
