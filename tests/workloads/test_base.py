"""EventApplier: events through the Process API."""

from __future__ import annotations

import numpy as np
import pytest

from thpsim.system import System
from thpsim.workloads.base import (
    Brk,
    EventApplier,
    Exit,
    Fork,
    Madvise,
    Mmap,
    Munmap,
    Touch,
    WorkloadError,
)


def _ap() -> EventApplier:
    return EventApplier(System(memory="256M"))


def test_brk_grows_one_vma_in_place():
    ap = _ap()
    ap.apply(Mmap(t=0, region="heap", length=64 << 10, advice="hugepage"))
    ap.apply(Brk(t=1, region="heap", length=64 << 10))
    ap.apply(Touch(t=1, region="heap", offset=64 << 10, length=4096))
    mm = ap.procs["main"].mm
    assert len(mm.vmas) == 1
    (vma,) = list(mm.vmas)
    assert (vma.end - vma.start) * 4096 == 128 << 10
    assert ap.regions["main"]["heap"].length == 128 << 10
    assert ap.touches == 1 and ap.events == 3


def test_brk_into_a_mapping_is_an_error():
    ap = _ap()
    ap.apply(Mmap(t=0, region="a", length=4096))
    ap.apply(Mmap(t=0, region="b", length=4096))
    with pytest.raises(WorkloadError, match="not free"):
        ap.apply(Brk(t=0, region="a", length=4096))
    with pytest.raises(WorkloadError, match="multiple of the page size"):
        ap.apply(Brk(t=0, region="b", length=100))


def test_fork_exit_and_regions():
    ap = _ap()
    ap.apply(Mmap(t=0, region="r", length=2 << 20))
    ap.apply(Touch(t=0, region="r"))
    ap.apply(Fork(t=1, child="c"))
    assert ap.regions["c"]["r"].addr == ap.regions["main"]["r"].addr
    ap.apply(Touch(t=1, proc="c", region="r", pages=np.array([3])))
    assert ap.procs["c"].rss_anon == 512  # the PMD folio stays shared, one COW page
    ap.apply(Exit(t=2, proc="c"))
    assert "c" not in ap.procs and len(ap.sys.processes) == 1
    with pytest.raises(WorkloadError, match="unknown process 'c'"):
        ap.apply(Touch(t=3, proc="c", region="r"))


def test_ranges_are_checked_and_munmap_forgets():
    ap = _ap()
    ap.apply(Mmap(t=0, region="r", length=8192))
    with pytest.raises(WorkloadError, match="outside region"):
        ap.apply(Madvise(t=0, region="r", advice="dontneed", offset=4096, length=8192))
    with pytest.raises(WorkloadError, match="page offset outside"):
        ap.apply(Touch(t=0, region="r", pages=np.array([2])))
    ap.apply(Munmap(t=0, region="r"))
    assert "r" not in ap.regions["main"]
    ap.apply(Mmap(t=0, region="r", length=4096))  # the name can be used again


def test_errno_results_are_counted():
    ap = _ap()
    ap.apply(Mmap(t=0, region="r", length=4096))
    ap.apply(Madvise(t=0, region="r", advice="bogus"))
    assert ap.errors == {"madvise": 1}
