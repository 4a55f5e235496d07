"""Benchmark: khugepaged over a large process with a realistic mix of PMD patterns.

Run: ``.venv/bin/python benchmarks/bench_khugepaged.py [--gib 64] [--policy v11]``

The process is populated with order-0 pages (under MADV_NOHUGEPAGE) in a mix of
per-PMD patterns — full, half, sparse (1 in 16), first 64 pages, a few pages,
untouched — then MADV_HUGEPAGE registers it and khugepaged runs one full scan
(``pages_to_scan`` raised so that the scan is not cut into many passes).  Prints
populate time, scan time, PMDs/s, collapse attempts/s and what was made.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np

from thpsim.system import System

MIX = {  # pattern -> share of PMDs
    "full": 0.35, "half": 0.15, "sparse16": 0.15, "first64": 0.15, "few": 0.1, "empty": 0.1,
}


def build(gib: int, policy: str, seed: int = 0):
    sys = System(memory=f"{gib * 1024 + 256}M", policy=policy)
    p = sys.spawn()
    length = gib << 30
    a = p.mmap(length)
    p.madvise(a, length, "nohugepage")
    n_pmd = length // (2 << 20)
    rng = np.random.default_rng(seed)
    kinds = rng.choice(list(MIX), size=n_pmd, p=list(MIX.values()))
    offs = {"full": np.arange(512), "half": np.arange(0, 512, 2),
            "sparse16": np.arange(0, 512, 16), "first64": np.arange(64),
            "few": np.array([3, 100, 300]), "empty": np.zeros(0, dtype=np.int64)}
    pages = np.concatenate([k * 512 + offs[kind] for k, kind in enumerate(kinds)])
    t = time.perf_counter()
    p.touch(a, pages=pages)
    populate = time.perf_counter() - t
    return sys, p, a, length, populate, Counter(kinds.tolist())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=int, default=64)
    ap.add_argument("--policy", default="v11")
    ap.add_argument("--sizes", default="64,2048", help="per-size kB set to madvise")
    ap.add_argument("--max-ptes-none", default="511")
    args = ap.parse_args()
    sys, p, a, length, populate, mix = build(args.gib, args.policy)
    s = sys.settings
    s.write("enabled", "madvise")
    for kb in (16, 32, 64, 128, 256, 512, 1024, 2048):
        s.write(f"hugepages-{kb}kB/enabled", "never")
    for kb in args.sizes.split(","):
        s.write(f"hugepages-{kb}kB/enabled", "madvise")
    s.write("khugepaged/max_ptes_none", args.max_ptes_none)
    s.write("khugepaged/pages_to_scan", str(4_000_000_000))
    p.madvise(a, length, "hugepage")
    kh = sys.khugepaged
    t = time.perf_counter()
    kh.run(full_scans=1)
    dt = time.perf_counter() - t
    n_pmd = length // (2 << 20)
    made = Counter(at.order for at in kh.attempts if at.result == "SCAN_SUCCEED")
    print(f"{args.gib} GiB, policy {args.policy}, sizes {args.sizes}kB, max_ptes_none "
          f"{args.max_ptes_none}; mix {dict(mix)}")
    print(f"populate {populate:.1f} s ({p.rss_anon / populate / 1e6:.2f} M pages/s)")
    print(f"full scan {dt:.2f} s: {n_pmd / dt:,.0f} PMDs/s, {len(kh.attempts)} attempts "
          f"({len(kh.attempts) / dt:,.0f}/s), successes per order {dict(sorted(made.items()))}")
    print(f"RSS after {p.rss_anon * 4 // 1024} MiB")


if __name__ == "__main__":
    main()
