"""Benchmark: sweep throughput (cells/s) on local processes and on a Dask LocalCluster.

Run: ``.venv/bin/python benchmarks/bench_sweep.py [--jobs 2] [--seeds 4] [--duration 60]``
Runs a small grid (allocator with 8 MiB arenas x 3 policies x 2 max_ptes_none settings x
``--seeds`` seeds) into a fresh temporary directory each time, with one local worker,
``--jobs`` local workers (cold: including starting them; warm: loky's reused workers) and
a Dask LocalCluster of ``--jobs`` single-threaded worker processes (started before
timing), and prints cells/s including gathering the results (Parquet tables, summary
plot).  A cell's own run time and the gathering time are printed too.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from thpsim.sweep.grid import parse_grid
from thpsim.sweep.runner import gather, run_sweep


def grid(seeds: int, duration: float):
    return parse_grid({
        "sweep": {"duration_s": duration, "seeds": seeds,
                  "policies": ["legacy", "v11", "linux-7.2"]},
        "workloads": {"alloc": {"workload": "allocator",
                                "params": {"arena_size": "8M", "classes": ["4", "64"]}}},
        "settings": {"none511": {"khugepaged/max_ptes_none": 511},
                     "none0": {"khugepaged/max_ptes_none": 0}},
    }, "bench")


def timed(label: str, g, **kw) -> None:
    with tempfile.TemporaryDirectory() as d:
        walls: list[float] = []
        t = time.perf_counter()
        res = run_sweep(g, d, progress=False, on_cell=lambda oc: walls.append(oc.wall_s), **kw)
        dt = time.perf_counter() - t
        t = time.perf_counter()
        gather(g, d)
        dg = time.perf_counter() - t
    assert not res.failed, res.failed
    n = len(res.executed)
    print(f"{label:34s} {n} cells in {dt:6.2f} s = {n / dt:5.2f} cells/s "
          f"(mean cell run {sum(walls) / max(1, len(walls)):.2f} s, gathering {dg:.2f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--duration", type=float, default=60.0)
    args = ap.parse_args()
    g = grid(args.seeds, args.duration)
    print(f"grid: {len(g.cells)} cells, {args.duration:g} simulated s each")
    timed("local, 1 process", g, jobs=1)
    timed(f"local, {args.jobs} processes (cold)", g, jobs=args.jobs)
    timed(f"local, {args.jobs} processes (warm)", g, jobs=args.jobs)  # loky reuses workers
    from distributed import LocalCluster

    with LocalCluster(n_workers=args.jobs, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        timed(f"dask, {args.jobs} workers", g, scheduler=cluster.scheduler_address)


if __name__ == "__main__":
    main()
