"""A sparse array / hash table that grows over time and is written at random slots."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import numpy as np

from thpsim.workloads.base import Brk, Event, Mark, Mmap, Param, Touch, Workload

__all__ = ["SparseTable"]


class SparseTable(Workload):
    """A table whose mapping grows by ``grow_step`` every ``grow_s`` (as a heap grows by
    ``brk`` or a mapping by ``mremap``) up to ``size``, and that receives
    ``inserts_per_s`` inserts, each writing one page at a random slot of the current
    extent (hashing spreads keys uniformly).  Most pages stay untouched.

    The PMD at the growing edge is first touched while it is only partly inside the
    mapping, so it faults order 0 and keeps its page table: the table ends up as
    sparse order-0 PMDs.  khugepaged with ``max_ptes_none`` 511 collapses every PMD with
    a single page in it — RSS jumps towards the table's virtual size; with 0 it stays
    at the touched pages.
    """

    name = "sparse"
    summary = "sparse array / hash table growing over time"
    models = ("A hash table or sparse array (e.g. an open-addressing table, a sparse "
              "matrix, a page-indexed bitmap) that touches few pages of a large, growing "
              "mapping: THP turns each touched 4 KiB into 2 MiB.")
    source = ("Documentation/admin-guide/mm/transhuge.rst (max_ptes_none: 'a higher value "
              "leads to use additional memory for programs'); the MongoDB and Redis "
              "production notes recommending THP off for sparse memory access patterns.")
    PARAMS: ClassVar[dict[str, Param]] = {
        "size": Param(256 << 20, "final table size", "size"),
        "grow_step": Param(256 << 10, "growth per step", "size"),
        "grow_s": Param(1.0, "period of growth steps", "float"),
        "inserts_per_s": Param(100, "inserts (page writes) per second", "int"),
        "tick_s": Param(1.0, "insert batching period", "float"),
        "advice": Param("none", "madvise on the table", "str",
                        ("none", "hugepage", "nohugepage")),
    }

    def check(self) -> None:
        self.positive("size", "grow_step", "grow_s", "tick_s")
        p = self.params
        if p["grow_step"] % 4096 or p["size"] % p["grow_step"]:
            raise self.error("size must be a multiple of grow_step, grow_step of 4 KiB")
        if p["inserts_per_s"] < 0:
            raise self.error("inserts_per_s must be >= 0")

    def memory_bytes(self) -> int:
        return max(1 << 30, 4 * self.params["size"])

    def events(self, rng: np.random.Generator) -> Iterator[Event]:
        p = self.params
        step = p["grow_step"]
        advice = None if p["advice"] == "none" else p["advice"]
        yield Mmap(t=0.0, region="table", length=step, advice=advice)
        extent = step
        next_grow = p["grow_s"]
        per_tick = p["inserts_per_s"] * p["tick_s"]
        t = 0.0
        marked = False
        while True:
            t = round(t + p["tick_s"], 9)
            while next_grow <= t and extent < p["size"]:
                yield Brk(t=next_grow, region="table", length=step)
                extent += step
                next_grow += p["grow_s"]
            if extent >= p["size"] and not marked:
                marked = True
                yield Mark(t=t, label="before")
            if not per_tick and extent >= p["size"]:
                return  # fully grown and no more inserts
            k = int(rng.poisson(per_tick)) if per_tick else 0
            if k:
                yield Touch(t=t, region="table", pages=rng.integers(0, extent // 4096, k))
