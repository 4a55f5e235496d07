"""Benchmark: faulting a 4 GiB region, page by page and batched; model state size.

Run: ``.venv/bin/python benchmarks/bench_faults.py [--gib 4]``
Prints faults/s for single-page touches, page touches/s through the batched
API (order-0 only, 64K mTHP, PMD THP), and model bytes per mapped 4K page.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from thpsim.system import System

PMD = 2 << 20


def model_bytes(sys: System) -> int:
    f = sys.folios
    total = sum(a.nbytes for a in (f.order, f.refcount, f.mapcount, f.flags, f.node, f.content))
    total += sys.buddy._free_order.nbytes
    for p in sys.processes.values():
        pt = p.mm.pt
        used = len(pt.tables)
        total += used * pt.nr * (pt.kind.itemsize + pt.pfn.itemsize + pt.flags.itemsize)
    return total


def run(label: str, gib: int, knobs: dict, batched: bool, populate: bool = False,
        limit_pages: int | None = None) -> None:
    sys = System(memory=f"{gib * 1024 + 64}M")
    sys.settings.apply(knobs)
    p = sys.spawn()
    length = gib << 30
    a = p.mmap(length)
    nr = length // 4096 if limit_pages is None else limit_pages
    t = time.perf_counter()
    if batched:
        p.touch(a, length=nr * 4096, populate=populate)
    else:
        for i in range(nr):
            p.touch(a + i * 4096, populate=populate)
    dt = time.perf_counter() - t
    faults = p.rss_anon
    per_page = model_bytes(sys) / max(p.rss_anon, 1)
    print(f"{label:44s} {nr:9d} pages {dt:7.2f} s  {nr / dt / 1e6:6.2f} M touches/s  "
          f"RSS {p.rss_anon * 4 // 1024:7d} MiB  state {per_page:5.1f} B/page")
    del faults


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=int, default=4)
    args = ap.parse_args()
    never = {"enabled": "never"}
    m64 = {"enabled": "never", "hugepages-64kB/enabled": "always"}
    pmd = {"enabled": "always"}
    print(f"thpsim fault benchmark, {args.gib} GiB region, numpy {np.__version__}")
    run("batched write, order 0 (enabled=never)", args.gib, never, True)
    run("batched populate, order 0", args.gib, never, True, populate=True)
    run("batched write, 64K mTHP", args.gib, m64, True)
    run("batched write, PMD THP (enabled=always)", args.gib, pmd, True)
    run("single-page faults, order 0 (first 256 MiB)", args.gib, never, False,
        limit_pages=65536)
    run("single-page faults, 64K mTHP (first 256 MiB)", args.gib, m64, False,
        limit_pages=65536)
    # second touch of already-mapped pages: no faults, only young/dirty/content
    sys = System(memory=f"{args.gib + 1}G")
    sys.settings.write("enabled", "never")
    p = sys.spawn()
    a = p.mmap(args.gib << 30)
    p.touch(a, length=args.gib << 30)
    t = time.perf_counter()
    p.touch(a, length=args.gib << 30)
    dt = time.perf_counter() - t
    n = (args.gib << 30) // 4096
    print(f"{'batched re-touch of mapped pages':44s} {n:9d} pages {dt:7.2f} s  "
          f"{n / dt / 1e6:6.2f} M touches/s")


if __name__ == "__main__":
    main()
