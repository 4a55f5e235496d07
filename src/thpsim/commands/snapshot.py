"""``thpsim snapshot``: capture a live process, generate a synthetic snapshot, or
summarise a snapshot file (docs/snapshot-format.md)."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Callable, Iterator

import numpy as np

from thpsim.commands import UsageError
from thpsim.snapshot.core import PRESENT, STATE_NAMES, Snapshot, SnapshotError

__all__ = ["cmd_snapshot", "register", "summary"]

PROGRESS_MIN_PAGES = 1 << 18  # show a progress bar from 1 GiB of span on


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "snapshot", help="capture, generate or summarise a snapshot of anonymous memory",
        description="Capture a live process's anonymous memory (root, read-only, the "
                    "process keeps running), generate a synthetic snapshot from a SPEC, or "
                    "print a summary of a snapshot file.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--pid", type=int, help="capture this process (needs root)")
    what.add_argument("--synthetic", metavar="SPEC",
                      help="generate from SPEC, e.g. 'heap:64G,present=0.6,"
                           "folios=4k:0.5/64k:0.3/2m:0.2' (grammar: docs/snapshot-format.md)")
    what.add_argument("--info", metavar="FILE", help="print a summary of a snapshot file")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="output file (default for --pid: COMM-PID.thpsnap)")
    p.add_argument("--seed", type=int, help="random seed for --synthetic (overrides seed=)")
    p.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    p.set_defaults(func=cmd_snapshot)


@contextlib.contextmanager
def _progress(label: str, enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A ``progress(done, total)`` callback drawing a Rich bar on stderr for large totals."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn(label), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                   TimeRemainingColumn(), console=Console(stderr=True), transient=True)
    task: list[int] = []

    def update(done: int, total: int) -> None:
        if total < PROGRESS_MIN_PAGES:
            return
        if not task:
            bar.start()
            task.append(bar.add_task(label, total=total))
        bar.update(task[0], completed=done, total=total)

    try:
        yield update
    finally:
        if task:
            bar.stop()


def _save(snap: Snapshot, path: str, show: bool) -> None:
    from thpsim.snapshot.io import save_snapshot

    try:
        with _progress("writing", show) as cb:
            save_snapshot(snap, path, progress=cb)
    except OSError as e:
        raise UsageError(f"{path}: cannot write: {e.strerror or e}") from None
    size = os.path.getsize(path)
    c = snap.state_counts()
    print(f"wrote {path}: {len(snap.vmas)} VMAs, {snap.nr_pages} pages "
          f"({snap.nr_pages * snap.page_size / 2**20:.1f} MiB span), {c['present']} present; "
          f"{size} bytes ({size / max(snap.nr_pages, 1):.3f} bytes/page)")


def cmd_snapshot(args: argparse.Namespace) -> int:
    show = not args.no_progress
    if args.info is not None:
        from thpsim.snapshot.io import load_snapshot

        try:
            with _progress("reading", show) as cb:
                snap = load_snapshot(args.info, progress=cb)
        except SnapshotError as e:
            raise UsageError(str(e)) from None
        print(summary(snap, args.info))
        return 0
    if args.synthetic is not None:
        from thpsim.snapshot.synthetic import synthetic_snapshot

        if not args.output:
            raise UsageError("--synthetic needs -o FILE")
        try:
            snap = synthetic_snapshot(args.synthetic, seed=args.seed)
        except ValueError as e:
            raise UsageError(str(e)) from None
        _save(snap, args.output, show)
        return 0
    from thpsim.snapshot.capture import capture

    if args.pid <= 0:
        raise UsageError(f"--pid {args.pid}: not a process id")
    with _progress(f"capturing {args.pid}", show) as cb:
        snap = capture(args.pid, progress=cb)
    out = args.output or f"{snap.comm or 'pid'}-{args.pid}.thpsnap".replace("/", "_")
    _save(snap, out, show)
    return 0


def _folio_histogram(snap: Snapshot) -> dict[int, tuple[int, int, int]]:
    """order -> (folios, pages mapped, PMD-mapped pages) over present pages."""
    present = snap.state == PRESENT
    out: dict[int, tuple[int, int, int]] = {}
    if not present.any():
        return out
    heads = snap.vpns()[present] - snap.folio_index[present]
    orders = snap.order[present]
    pmd = snap.pmd_mapped[present]
    for o in np.unique(orders).tolist():
        m = orders == o
        h = heads[m]
        # pages are in address order, so heads are non-decreasing: count the changes
        nf = int(np.count_nonzero(h[1:] != h[:-1])) + 1 if h.size else 0
        out[int(o)] = (nf, int(m.sum()), int(pmd[m].sum()))
    return out


def _size(nbytes: int) -> str:
    for unit, div in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if nbytes >= div and nbytes % div == 0:
            return f"{nbytes // div}{unit}"
    return f"{nbytes / 1024:.0f}K" if nbytes >= 1024 else f"{nbytes}B"


def summary(snap: Snapshot, path: str = "") -> str:
    """A plain-text summary: origin, VMAs, page states, folio histogram, settings."""
    import datetime

    n = max(snap.nr_pages, 1)
    when = (datetime.datetime.fromtimestamp(snap.time, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
            if snap.time else "-")
    lines = [f"{path or 'snapshot'}: pid {snap.pid} ({snap.comm or '-'}), kernel "
             f"{snap.kernel or '-'}, page size {snap.page_size}, taken {when}",
             f"{len(snap.vmas)} VMAs, {snap.nr_pages} pages "
             f"({_size(snap.nr_pages * snap.page_size)} span)"]
    off = snap.vma_offsets()
    shown = sorted(range(len(snap.vmas)), key=lambda i: -(off[i + 1] - off[i]))[:8]
    for i in sorted(shown):
        v = snap.vmas[i]
        pres = int((snap.state[off[i]:off[i + 1]] == PRESENT).sum())
        lines.append(f"  {v.start:#014x}-{v.end:#014x} {_size(v.end - v.start):>6} "
                     f"present {pres * snap.page_size // 1024}K  [{v.flags}] {v.name}")
    if len(snap.vmas) > len(shown):
        lines.append(f"  ... {len(snap.vmas) - len(shown)} smaller VMAs not shown")
    counts = snap.state_counts()
    lines.append("page states: " + ", ".join(
        f"{k} {counts[k]} ({100 * counts[k] / n:.1f}%)" for k in STATE_NAMES if counts[k]))
    hist = _folio_histogram(snap)
    if hist:
        lines.append("folios (order: size, folios, pages mapped, PMD-mapped pages):")
        for o, (nf, npg, npmd) in sorted(hist.items()):
            lines.append(f"  {o:>2}: {_size(snap.page_size << o):>5} {nf:>9} {npg:>10} {npmd:>10}")
        present = snap.state == PRESENT
        lines.append(f"mapcount > 1: {int((snap.mapcount[present] > 1).sum())} pages, "
                     f"not exclusive: {int((~snap.exclusive[present]).sum())} pages")
    if snap.settings:
        lines.append("settings: " + " ".join(f"{k}={v}" for k, v in snap.settings.items()))
    if snap.meta:
        lines.append("meta: " + "; ".join(f"{k}={v}" for k, v in snap.meta.items()
                                          if k != "cmdline")
                     + (f"; cmdline={snap.meta['cmdline'][:80]!r}" if "cmdline" in snap.meta
                        else ""))
    return "\n".join(lines)

