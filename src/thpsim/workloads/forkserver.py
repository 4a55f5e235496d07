"""A fork-for-snapshot server: copy-on-write after fork (Redis BGSAVE style)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import numpy as np

from thpsim.workloads.base import Event, Exit, Fork, Mark, Mmap, Param, Touch, Workload

__all__ = ["ForkServer"]


class ForkServer(Workload):
    """A server holding a dataset of ``dataset`` bytes (written at start) that writes
    ``writes_per_s`` random pages per second and, every ``snapshot_every_s``, forks a
    child that reads the whole dataset (serialising it) and exits after
    ``snapshot_s``.

    While the child lives every page is shared: each parent write breaks COW and gets
    an order-0 copy (also in PMD-mapped folios, whose PMD is split first); khugepaged
    can collapse the parent's PMDs only where at most ``max_ptes_shared`` pages are
    still shared.
    """

    name = "forkserver"
    summary = "Redis-like fork-for-snapshot server (COW after fork)"
    models = ("Redis BGSAVE/BGREWRITEAOF: fork, the child serialises the dataset, the "
              "parent keeps writing; with THP the COW faults, the copies and collapse of "
              "shared memory are the costs Redis warns about.")
    source = ("Redis documentation, 'Diagnosing latency issues' (latency induced by "
              "transparent huge pages: fork plus copy-on-write) and Redis' startup warning "
              "recommending THP 'never'; Documentation/admin-guide/mm/transhuge.rst "
              "(khugepaged/max_ptes_shared).")
    PARAMS: ClassVar[dict[str, Param]] = {
        "dataset": Param(64 << 20, "dataset (heap) size", "size"),
        "writes_per_s": Param(100, "pages written per second by the parent", "int"),
        "snapshot_every_s": Param(120.0, "period of fork-for-snapshot", "float"),
        "snapshot_s": Param(40.0, "lifetime of the snapshot child", "float"),
        "tick_s": Param(1.0, "write batching period", "float"),
        "advice": Param("none", "madvise on the dataset", "str",
                        ("none", "hugepage", "nohugepage")),
    }

    def check(self) -> None:
        self.positive("dataset", "snapshot_every_s", "snapshot_s", "tick_s")
        p = self.params
        if p["writes_per_s"] < 0:
            raise self.error("writes_per_s must be >= 0")
        if p["snapshot_s"] >= p["snapshot_every_s"]:
            raise self.error("snapshot_s must be shorter than snapshot_every_s")

    def memory_bytes(self) -> int:
        return max(1 << 30, 4 * self.params["dataset"])

    def events(self, rng: np.random.Generator) -> Iterator[Event]:
        p = self.params
        npages = p["dataset"] // 4096
        advice = None if p["advice"] == "none" else p["advice"]
        yield Mmap(t=0.0, region="data", length=p["dataset"], advice=advice)
        yield Touch(t=0.0, region="data", length=p["dataset"])
        per_tick = p["writes_per_s"] * p["tick_s"]
        t = 0.0
        next_fork = p["snapshot_every_s"] / 2
        child_exit = None
        n = 0
        while True:
            t = round(t + p["tick_s"], 9)
            if child_exit is not None and t >= child_exit:
                yield Exit(t=child_exit, proc=f"snap{n}")
                child_exit = None
            if t >= next_fork:
                n += 1
                if n == 1:
                    yield Mark(t=next_fork, label="before")
                yield Fork(t=next_fork, child=f"snap{n}")
                # the child serialises the dataset (reads every page)
                yield Touch(t=next_fork, proc=f"snap{n}", region="data", length=p["dataset"],
                            write=False)
                child_exit = next_fork + p["snapshot_s"]
                next_fork += p["snapshot_every_s"]
            k = int(rng.poisson(per_tick)) if per_tick else 0
            if k:
                yield Touch(t=t, region="data", pages=rng.integers(0, npages, k))
