"""The batched scan of simple PMDs gives exactly the PMD-by-PMD results."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thpsim.system import System

PMD = 2 << 20
KINDS = ["full", "empty", "first64", "half", "few", "young_none", "mthp", "swap", "shared"]


def _run(batch: bool, policy, kinds, sizes, mpn, budget, scans, seed):
    sys = System(memory="256M", swap="32M", policy=policy)
    s = sys.settings
    s.write("enabled", "madvise")
    s.write("khugepaged/max_ptes_none", mpn)
    s.write("khugepaged/pages_to_scan", str(budget))
    for kb in sizes:
        s.write(f"hugepages-{kb}kB/enabled", "madvise")
    p = sys.spawn()
    n = len(kinds)
    a = p.mmap(n * PMD)
    p.madvise(a, n * PMD, "nohugepage")
    rng = np.random.default_rng(seed)
    holder_pages = []
    for k, kind in enumerate(kinds):
        base = a + k * PMD
        if kind == "full":
            p.touch(base, pages=range(512))
        elif kind == "first64":
            p.touch(base, pages=range(64))
        elif kind == "half":
            p.touch(base, pages=range(0, 512, 2))
        elif kind == "few":
            p.touch(base, pages=sorted(rng.choice(512, 5, replace=False)))
        elif kind == "young_none":
            p.touch(base, pages=range(512))
            p.madvise(base, PMD, "cold")  # no young page: lack of referenced pages
        elif kind == "mthp":
            s.write("hugepages-64kB/enabled", "always")
            p.madvise(base, PMD, "hugepage")
            p.touch(base, pages=range(0, 256))
            p.madvise(base, PMD, "nohugepage")
            s.write("hugepages-64kB/enabled", "madvise" if 64 in sizes else "never")
        elif kind == "swap":
            p.touch(base, pages=range(512))
            p.madvise(base + 4096 * 7, 4096, "pageout")
        elif kind == "shared":
            p.touch(base, pages=range(512))
            holder_pages.append(base)
    if holder_pages:
        h = p.fork("holder")
        for k in range(n):
            if a + k * PMD not in holder_pages:
                h.madvise(a + k * PMD, PMD, "dontneed")
    p.madvise(a, n * PMD, "hugepage")
    kh = sys.khugepaged
    kh.batch = batch
    kh.run(full_scans=scans)
    sys.check()
    return (p.layout(a, n * PMD).pictures(), sys.counters.snapshot(), kh.scans,
            [(x.pmd_addr, x.order, x.offset, x.result) for x in kh.attempts],
            kh.full_scans, kh.pages_collapsed, kh.passes, kh.clock_ms, p.rss_anon,
            np.array_equal(p.peek(a, n * PMD), p.peek(a, n * PMD)))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["legacy", "v11", "linux-7.2"]),
       st.lists(st.sampled_from(KINDS), min_size=1, max_size=12),
       st.sampled_from([(2048,), (64, 2048), (64,), (16, 64, 2048)]),
       st.sampled_from(["0", "64", "255", "511"]),
       st.sampled_from([600, 1500, 4096, 100000]), st.integers(1, 3), st.integers(0, 99))
def test_batch_equals_pmd_by_pmd(policy, kinds, sizes, mpn, budget, scans, seed):
    slow = _run(False, policy, kinds, sizes, mpn, budget, scans, seed)
    fast = _run(True, policy, kinds, sizes, mpn, budget, scans, seed)
    assert fast == slow
