"""Many thread stacks with guard pages, mostly empty, recycled through a stack cache."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import numpy as np

from thpsim.workloads.base import Event, Madvise, Mmap, Mprotect, Param, Touch, Workload

__all__ = ["ThreadStacks"]


class ThreadStacks(Workload):
    """``threads`` threads, each with a stack of ``stack_size`` bytes mapped by the thread
    library with a guard page (``PROT_NONE``) at its low end.  A thread uses only the
    top ``used`` bytes of its stack.  Every ``churn_s`` a ``churn`` fraction of the
    threads exits and is replaced: the thread library keeps the stack in its cache and,
    as glibc does at thread exit, discards the unused part below the stack pointer with
    ``MADV_DONTNEED``; the new thread reuses it.

    A fault in a stack PMD that lies wholly inside the stack VMA maps a PMD folio
    (2 MiB for a few KiB used); the DONTNEED at thread exit splits it, and khugepaged
    with ``max_ptes_none`` 511 collapses the mostly empty PMD again — the bloat; with
    0 it leaves the stacks alone.
    """

    name = "stacks"
    summary = "many mostly-empty thread stacks with guard pages"
    models = ("Thread stacks of a many-threaded runtime (e.g. a JVM) under THP: each "
              "stack is a PMD-aligned mapping touched only at its top, so THP (at fault, "
              "or by khugepaged collapsing PMDs that are nearly all none) turns a few KiB "
              "per thread into 2 MiB.")
    source = ("OpenJDK bug JDK-8303215 'Make thread stacks not use huge pages' and "
              "JDK-8312182 'THPs cause huge RSS due to thread start timing issue'; glibc "
              "2.38 tunable glibc.pthread.stack_hugetlb; glibc nptl advise_stack_range "
              "(MADV_DONTNEED of the unused stack at thread exit).")
    PARAMS: ClassVar[dict[str, Param]] = {
        "threads": Param(48, "number of threads (stacks)", "int"),
        "stack_size": Param(8 << 20, "stack mapping size (glibc default: RLIMIT_STACK)",
                            "size"),
        "used": Param(64 << 10, "bytes used at the top of each stack", "size"),
        "guard": Param(4096, "guard size at the low end (PROT_NONE)", "size"),
        "churn": Param(0.1, "fraction of threads replaced per churn period", "float"),
        "churn_s": Param(10.0, "thread replacement period", "float"),
        "advice": Param("none", "madvise on the stacks (glibc's stack_hugetlb=0 tunable "
                        "is nohugepage)", "str", ("none", "hugepage", "nohugepage")),
    }

    def check(self) -> None:
        self.positive("threads", "stack_size", "used", "churn_s")
        p = self.params
        if p["guard"] < 0 or p["guard"] % 4096 or p["used"] % 4096 or p["stack_size"] % 4096:
            raise self.error("stack_size, used and guard must be multiples of 4 KiB")
        if p["guard"] + p["used"] > p["stack_size"]:
            raise self.error("guard + used must fit in stack_size")
        if not 0 <= p["churn"] <= 1:
            raise self.error("churn must be within 0..1")

    def memory_bytes(self) -> int:
        p = self.params
        return max(1 << 30, 2 * p["threads"] * p["stack_size"])

    def events(self, rng: np.random.Generator) -> Iterator[Event]:
        p = self.params
        size, used, guard = p["stack_size"], p["used"], p["guard"]
        advice = None if p["advice"] == "none" else p["advice"]
        top = size - used
        for i in range(p["threads"]):
            yield Mmap(t=0.0, region=f"stack{i}", length=size, advice=advice)
            if guard:
                yield Mprotect(t=0.0, region=f"stack{i}", offset=0, length=guard)
            # the new thread's frames at the top of the stack (stacks grow down)
            yield Touch(t=0.0, region=f"stack{i}", offset=top, length=used)
        t = 0.0
        k = round(p["churn"] * p["threads"])
        if not k:
            return  # no thread ever exits
        while True:
            t += p["churn_s"]
            for i in rng.choice(p["threads"], k, replace=False).tolist():
                # thread exit: discard the unused stack below the frames in use
                yield Madvise(t=t, region=f"stack{i}", advice="dontneed", offset=guard,
                              length=top - guard)
                # the next thread reuses the cached stack and runs its frames
                yield Touch(t=t, region=f"stack{i}", offset=top, length=used)
