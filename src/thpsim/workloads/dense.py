"""A steady, dense heap that grows by ``brk`` and is then rewritten at random."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import numpy as np

from thpsim.workloads.base import Brk, Event, Mark, Mmap, Param, Touch, Workload

__all__ = ["DenseHeap"]


class DenseHeap(Workload):
    """A malloc heap that grows in ``brk`` steps to ``size``, every new page written at
    once (dense), then a steady phase that rewrites a random ``write_fraction`` of the
    heap every ``interval_s``.

    Fault-time THP cannot give the heap PMD folios: each PMD is first touched while
    only part of it lies inside the heap VMA, so it faults order 0 and keeps its page
    table.  khugepaged is what turns the heap into PMD mappings, without bloat (every
    page is in use) — the case THP is meant for.
    """

    name = "dense"
    summary = "steady dense heap grown by brk, rewritten at random"
    models = ("A long-running server's dense malloc heap (glibc grows the main arena with "
              "brk in steps of the top pad, 128 KiB by default): faults at the growing "
              "edge are order 0; khugepaged later collapses the full PMDs, which is the "
              "TLB-reach gain THP exists for.")
    source = ("Linux Documentation/admin-guide/mm/transhuge.rst (khugepaged collapses "
              "what faults could not map huge); glibc malloc M_TOP_PAD (mallopt(3)).")
    PARAMS: ClassVar[dict[str, Param]] = {
        "size": Param(128 << 20, "final heap size", "size"),
        "brk_step": Param(128 << 10, "heap growth per brk call", "size"),
        "grow_s": Param(30.0, "seconds over which the heap grows to its size", "float"),
        "interval_s": Param(5.0, "period of the steady rewrites", "float"),
        "write_fraction": Param(0.05, "fraction of heap pages written per period", "float"),
        "advice": Param("none", "madvise on the heap", "str", ("none", "hugepage",
                                                              "nohugepage")),
    }

    def check(self) -> None:
        self.positive("size", "brk_step", "grow_s", "interval_s")
        p = self.params
        if p["brk_step"] % 4096 or p["size"] % p["brk_step"]:
            raise self.error("size must be a multiple of brk_step, brk_step of 4 KiB")
        if not 0 <= p["write_fraction"] <= 1:
            raise self.error("write_fraction must be within 0..1")

    def memory_bytes(self) -> int:
        return max(1 << 30, 4 * self.params["size"])

    def events(self, rng: np.random.Generator) -> Iterator[Event]:
        p = self.params
        step, size = p["brk_step"], p["size"]
        nsteps = size // step
        advice = None if p["advice"] == "none" else p["advice"]
        yield Mmap(t=0.0, region="heap", length=step, advice=advice)
        yield Touch(t=0.0, region="heap", offset=0, length=step)
        for i in range(1, nsteps):
            t = p["grow_s"] * i / nsteps
            yield Brk(t=t, region="heap", length=step)
            yield Touch(t=t, region="heap", offset=i * step, length=step)
        t = p["grow_s"]
        yield Mark(t=t, label="before")
        npages = size // 4096
        k = round(p["write_fraction"] * npages)
        if not k:
            return  # nothing more happens
        while True:
            t += p["interval_s"]
            yield Touch(t=t, region="heap", pages=rng.choice(npages, k, replace=False))
