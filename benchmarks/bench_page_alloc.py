"""Timings of the buddy allocator's bulk and scalar paths.

Run with ``PYTHONPATH=src python3 benchmarks/bench_page_alloc.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from thpsim.mm.page_alloc import BuddyAllocator


def timed(label: str, fn: Callable[[], object]) -> object:
    t0 = time.perf_counter()
    out = fn()
    print(f"{label:<52s} {time.perf_counter() - t0:8.3f} s")
    return out


def main() -> None:
    n = 1_000_000
    a = timed("construct 16M pages (64 GiB of 4K)", lambda: BuddyAllocator(1 << 24))

    pfns = timed(f"alloc_bulk order 0 x {n:,}", lambda: a.alloc_bulk(0, n))
    assert isinstance(pfns, np.ndarray) and pfns.size == n
    rng = np.random.default_rng(0)
    shuffled = pfns[rng.permutation(n)]
    timed(f"free_bulk order 0 x {n:,} (shuffled)", lambda: a.free_bulk(shuffled, 0))
    assert a.nr_free_pages() == a.total_pages

    f = BuddyAllocator(1 << 22)
    timed("fragment(0.5, 0) on 4M pages", lambda: f.fragment(0.5, 0))
    got = timed(f"alloc_bulk order 0 x {n:,} (fragmented)", lambda: f.alloc_bulk(0, n))
    timed(f"free_bulk order 0 x {n:,} (fragmented)", lambda: f.free_bulk(got, 0))

    m = 100_000
    s = BuddyAllocator(1 << 20)

    def scalar_alloc() -> list[int]:
        return [s.alloc(0) for _ in range(m)]

    held = timed(f"scalar alloc order 0 x {m:,}", scalar_alloc)
    assert isinstance(held, list)
    order = rng.permutation(m).tolist()

    def scalar_free() -> None:
        for i in order:
            s.free(held[i], 0)

    timed(f"scalar free order 0 x {m:,} (shuffled)", scalar_free)
    assert s.nr_free_pages() == s.total_pages

    def scalar_mixed() -> None:
        for i in range(m):
            o = i % 10
            p = s.alloc(o)
            s.free(p, o)

    timed(f"scalar alloc+free orders 0..9 x {m:,}", scalar_mixed)
    timed("check() on 16M pages", a.check)


if __name__ == "__main__":
    main()
