"""A size-class allocator that returns freed spans to the kernel with madvise."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import numpy as np

from thpsim.workloads.base import Event, Madvise, Mmap, Param, Touch, Workload

__all__ = ["Allocator"]

_FREE, _LIVE, _DIRTY = 0, 1, 2


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end indices of the runs of True in ``mask``."""
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return np.flatnonzero(d == 1), np.flatnonzero(d == -1)


class Allocator(Workload):
    """One arena per size class, carved into spans of ``span_pages`` pages.  A live
    fraction of the spans is allocated (every page written); each tick a ``churn``
    fraction of the live spans is freed and as many free spans, picked at random, are
    allocated.  Every ``release_s`` the spans freed since the last release are returned
    to the kernel with ``MADV_DONTNEED`` (tcmalloc) or ``MADV_FREE`` (jemalloc), one
    madvise per run of adjacent freed spans.

    With ``max_ptes_none`` 511 khugepaged collapses the PMDs the releases punched
    holes in, and the released memory comes back as zero-filled pages: RSS returns to
    the arenas' size; with 0 it stays near the live set.
    """

    name = "allocator"
    summary = "size-class arenas releasing freed spans with MADV_DONTNEED/MADV_FREE"
    models = ("tcmalloc/jemalloc-style arenas that release free memory to the kernel by "
              "madvise while THP is on: the released ranges are refilled by khugepaged "
              "(max_ptes_none 511), the 'freed memory comes back' complaint.")
    source = ("jemalloc(3), opt.dirty_decay_ms (default 10 s; purging uses MADV_FREE or "
              "MADV_DONTNEED); Hunter et al., 'Beyond malloc efficiency to fleet efficiency: "
              "a hugepage-aware memory allocator', OSDI 2021 (tcmalloc/Temeraire, releasing "
              "memory breaks huge pages); Documentation/admin-guide/mm/transhuge.rst, "
              "khugepaged/max_ptes_none ('a higher value leads to use additional memory "
              "for programs').")
    PARAMS: ClassVar[dict[str, Param]] = {
        "classes": Param(["4", "16", "64"], "span size of each arena in pages", "list"),
        "arena_size": Param(32 << 20, "size of each arena", "size"),
        "live_fraction": Param(0.4, "fraction of spans allocated at any time", "float"),
        "churn": Param(0.02, "fraction of live spans freed and reallocated per tick",
                       "float"),
        "tick_s": Param(1.0, "allocation tick", "float"),
        "release_s": Param(10.0, "period of releasing freed spans to the kernel", "float"),
        "release": Param("dontneed", "how freed spans are released", "str",
                         ("dontneed", "free", "none")),
        "advice": Param("none", "madvise on the arenas", "str",
                        ("none", "hugepage", "nohugepage")),
    }

    def check(self) -> None:
        self.positive("arena_size", "tick_s", "release_s")
        p = self.params
        try:
            spans = [int(c) for c in p["classes"]]
        except ValueError:
            raise self.error(f"classes must be page counts, got {p['classes']!r}") from None
        if not spans or any(s <= 0 or p["arena_size"] % (s * 4096) for s in spans):
            raise self.error("each class must be a positive page count dividing arena_size")
        for k in ("live_fraction", "churn"):
            if not 0 <= p[k] <= 1:
                raise self.error(f"{k} must be within 0..1")

    def memory_bytes(self) -> int:
        return max(1 << 30, 4 * self.params["arena_size"] * len(self.params["classes"]))

    def events(self, rng: np.random.Generator) -> Iterator[Event]:
        p = self.params
        advice = None if p["advice"] == "none" else p["advice"]
        spans = [int(c) for c in p["classes"]]
        state = []
        for i, sp in enumerate(spans):
            n = p["arena_size"] // (sp * 4096)
            st = np.full(n, _FREE, dtype=np.int8)
            st[rng.choice(n, round(p["live_fraction"] * n), replace=False)] = _LIVE
            state.append(st)
            yield Mmap(t=0.0, region=f"arena{i}", length=p["arena_size"], advice=advice)
            yield Touch(t=0.0, region=f"arena{i}", pages=self._pages(np.flatnonzero(st), sp))
        t, next_release = 0.0, p["release_s"]
        # the live count of each arena is constant, so is the number of spans churned
        if not any(round(p["churn"] * int((st == _LIVE).sum())) for st in state):
            return
        while True:
            t += p["tick_s"]
            for i, (sp, st) in enumerate(zip(spans, state, strict=True)):
                live = np.flatnonzero(st == _LIVE)
                k = round(p["churn"] * live.size)
                if not k:
                    continue
                st[rng.choice(live, k, replace=False)] = _DIRTY
                free = np.flatnonzero(st != _LIVE)
                new = rng.choice(free, k, replace=False)
                st[new] = _LIVE
                yield Touch(t=t, region=f"arena{i}", pages=self._pages(new, sp))
            if t + 1e-9 >= next_release:
                next_release += p["release_s"]
                if p["release"] == "none":
                    continue
                for i, (sp, st) in enumerate(zip(spans, state, strict=True)):
                    starts, ends = _runs(st == _DIRTY)
                    b = sp * 4096
                    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
                        yield Madvise(t=t, region=f"arena{i}", advice=p["release"],
                                      offset=s * b, length=(e - s) * b)
                    st[st == _DIRTY] = _FREE

    @staticmethod
    def _pages(span_idx: np.ndarray, span_pages: int) -> np.ndarray:
        return (np.asarray(span_idx, dtype=np.int64)[:, None] * span_pages
                + np.arange(span_pages)).ravel()
