"""Benchmark: ``thpsim whatif`` on large synthetic snapshots (docs/whatif.md, "Performance").

Run: ``.venv/bin/python benchmarks/bench_whatif.py [--size 64G] [--size 1T] [--file]``

For each size a synthetic snapshot (``thpsim.snapshot.synthetic``, a heap with a
realistic mix: 60 % present, zero pages, swap, shared pages, 4K/64K/2M folios) is
generated, then timed:

* ``normalise``: the loading rules (once per snapshot);
* ``decide``: the vectorised first-scan decision over every PMD window, per policy,
  with 64K mTHP enabled for v11/7.2 and ``max_ptes_none`` 511 (most PMDs attempt the
  PMD order) or 0 (most scanned PMDs walk the mTHP orders), reported as PTEs/s (best
  of 3, one core: NumPy runs single-threaded here);
* ``whatif``: the whole prediction to the fixpoint for one combination and for the
  three policies; with ``--file`` also from a snapshot file on disk (load + whatif).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from thpsim.snapshot.synthetic import synthetic_snapshot
from thpsim.whatif.decide import DecideParams, decide_windows
from thpsim.whatif.layout import normalise
from thpsim.whatif.run import Combo, whatif

MIX = "present=0.6,zero=0.05,swap=0.02,shared=0.01,folios=4k:0.5/64k:0.3/2m:0.2"


def best(fn, reps=3):
    out, t_best = None, float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        t_best = min(t_best, time.perf_counter() - t)
    return out, t_best


def bench_decide(ld) -> None:
    """Time the first-scan decision of the snapshot's one VMA, per policy."""
    lo, hi = ld.windows(0)
    k, o, sh = (x[lo:hi].reshape(-1, 512) for x in (ld.kind, ld.order, ld.shared))
    pud = np.ones(k.shape[0], dtype=bool)
    for pol, en, m in (("legacy", 1 << 9, 511), ("v11", 1 << 9 | 1 << 4, 511),
                       ("linux-7.2", 1 << 9 | 1 << 4, 511), ("v11", 1 << 9 | 1 << 4, 0),
                       ("linux-7.2", 1 << 9 | 1 << 4, 0)):
        p = DecideParams(pol, 9, en, m, 64, 256, ("SCAN_PMD_NULL", "SCAN_PMD_NONE"))
        d, t_dec = best(lambda p=p: decide_windows(k, o, sh, pud, p))
        print(f"decide {pol:9s} none={m:<3d} {t_dec:6.3f} s  {k.size / t_dec / 1e9:5.2f} G PTE/s "
              f"({int(np.count_nonzero(d.result == 0)):,} PMDs collapse, "
              f"{int(d.complex.sum())} complex)")


def bench(size: str, with_file: bool) -> None:
    t = time.perf_counter()
    snap = synthetic_snapshot(f"heap:{size},{MIX}", seed=1)
    print(f"== {size}: {snap.nr_pages:,} PTEs (generated in {time.perf_counter() - t:.1f} s)")
    ld, t_norm = best(lambda: normalise(snap, 9), 1)
    print(f"normalise            {t_norm:7.2f} s  {snap.nr_pages / t_norm / 1e6:5.0f} M PTE/s")
    bench_decide(ld)
    del ld
    _, t_one = best(lambda: whatif(snap, [Combo.of("v11")]), 1)
    print(f"whatif v11           {t_one:7.2f} s  (end to end from memory)")
    mthp = Combo.of("v11", {"hugepages-64kB/enabled": "always", "khugepaged/max_ptes_none": "0"})
    res, t_mthp = best(lambda: whatif(snap, [mthp]), 1)
    print(f"whatif v11 64K none=0 {t_mthp:6.2f} s  (engine {res[0].engine}, "
          f"{res[0].scans_to_fixpoint} scans, collapses {res[0].collapses})")
    _, t_three = best(lambda: whatif(snap, [Combo.of(p) for p in
                                            ("v11", "linux-7.2", "legacy")]), 1)
    print(f"whatif 3 policies    {t_three:7.2f} s")
    if with_file:
        from thpsim.snapshot.io import load_snapshot, save_snapshot

        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "bench.thpsnap")
            save_snapshot(snap, path)
            del snap

            def run():
                return whatif(load_snapshot(path), [Combo.of("v11")])

            _, t_file = best(run, 1)
            mib = os.path.getsize(path) / 2**20
            print(f"load + whatif v11    {t_file:7.2f} s  (file {mib:.0f} MiB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", action="append", help="snapshot span (default: 64G and 1T)")
    ap.add_argument("--file", action="store_true", help="also time loading from a file")
    args = ap.parse_args()
    for size in args.size or ["64G", "1T"]:
        bench(size, args.file)


if __name__ == "__main__":
    main()
