"""Live layouts read from the real kernel, in forked children, under temporary THP settings."""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import pytest

from thpsim.host import pagemap as pm
from thpsim.host.errors import HostBusy, HostUnavailable, ProcessGone
from thpsim.host.swap import zram_swap
from thpsim.host.thp_sysfs import host_thp_settings, model_defaults
from thpsim.scenario.host_worker import libc

from .conftest import skip_or_fail

pytestmark = pytest.mark.usefixtures("host")

PAGE = 4096
PMD = 2 << 20
NR = PMD // PAGE

PROT_READ, PROT_WRITE = 1, 2
MAP_PRIVATE, MAP_ANONYMOUS = 0x02, 0x20
MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_PAGEOUT = 14, 15, 21

_libc = libc()  # mmap/madvise/mprotect/munmap prototypes, as the scenario worker's


def _check(rc: int, what: str) -> None:
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def madvise(addr: int, length: int, advice: int) -> None:
    _check(_libc.madvise(addr, length, advice), f"madvise({advice})")


def map_aligned(npmd: int = 1) -> int:
    """A PMD-aligned private anonymous mapping of ``npmd`` PMDs (the slack is unmapped)."""
    raw = _libc.mmap(None, (npmd + 1) * PMD, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if raw in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap failed")
    addr = (raw + PMD - 1) // PMD * PMD
    if addr > raw:
        _check(_libc.munmap(raw, addr - raw), "munmap")
    tail = raw + (npmd + 1) * PMD - (addr + npmd * PMD)
    if tail:
        _check(_libc.munmap(addr + npmd * PMD, tail), "munmap")
    return addr


def write(addr: int, first: int, count: int = 1) -> None:
    """Write-fault pages ``first .. first+count-1``."""
    for i in range(first, first + count):
        ctypes.memset(addr + i * PAGE, 0x5A, 1)


def read(addr: int, page: int) -> None:
    ctypes.string_at(addr + page * PAGE, 1)


class Child:
    """A forked child that maps ``npmd`` aligned PMDs and runs ``steps`` one at a time.

    The child runs step 0, reports, and waits; :meth:`advance` lets it run the
    next step.  Steps may fork (the grandchild should wait on :meth:`hold`).
    """

    def __init__(self, steps: list[Callable[[int], None]], npmd: int = 1) -> None:
        self.npmd = npmd
        rep_r, rep_w = os.pipe()
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: never return into pytest
            code = 0
            try:
                os.close(rep_r)
                os.close(go_w)
                addr = map_aligned(npmd)
                for step in steps:
                    step(addr)
                    os.write(rep_w, f"{addr}\n".encode())
                    if not os.read(go_r, 1):
                        break
            except BaseException as e:
                os.write(rep_w, f"ERR {e!r}\n".encode())
                code = 1
            os._exit(code)
        os.close(rep_w)
        os.close(go_r)
        self.pid = pid
        self._rep = os.fdopen(rep_r)
        self._go = go_w
        self.addr = self._report()

    def _report(self) -> int:
        line = self._rep.readline().strip()
        if not line.isdigit():
            self.close()
            raise AssertionError(f"child step failed: {line or 'no report'}")
        return int(line)

    def advance(self) -> None:
        os.write(self._go, b"g")
        self._report()

    def layout(self, start: int | None = None, end: int | None = None):
        s = self.addr if start is None else start
        return pm.host_layout(self.pid, s, self.addr + self.npmd * PMD if end is None else end)

    def close(self) -> None:
        if self._go >= 0:
            os.close(self._go)
            self._go = -1
            self._rep.close()
            os.waitpid(self.pid, 0)


def hold_forked() -> None:
    """Fork a grandchild that keeps the parent's memory mapped until the parent exits."""
    r, w = os.pipe()
    if os.fork() == 0:
        os.close(w)
        os.read(r, 1)  # EOF when the child exits
        os._exit(0)
    os.close(r)
    # w stays open in the child (leaked on purpose) until it exits


@contextmanager
def child(steps: list[Callable[[int], None]], npmd: int = 1) -> Iterator[Child]:
    c = Child(steps, npmd)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def thp(state_file):
    """``thp(values)``: model defaults + top-level madvise + ``values``, restored after."""

    @contextmanager
    def apply(values: dict[str, str]):
        with host_thp_settings(model_defaults() | {"enabled": "madvise"} | values,
                               state_file=state_file):
            yield

    return apply


ONLY_64K = {"hugepages-64kB/enabled": "always", "hugepages-2048kB/enabled": "never"}
PMD_ONLY = {"hugepages-2048kB/enabled": "inherit"}


def test_mthp_write_fault_and_x_outside(thp):
    def step0(a):
        write(a, 0)
        _check(_libc.munmap(a + (NR - 64) * PAGE, 64 * PAGE), "munmap")

    with thp(ONLY_64K), child([step0]) as c:
        (p,) = c.layout().pmds
        assert p.addr == c.addr
        assert p.picture == "4" * 16 + "." * (NR - 16 - 64) + "x" * 64
        assert p.shared == "-" * NR
        assert p.folios == [[0, 4, 16, 0]]
        assert p.summary() == "0-15:o4"
        # a range starting inside the folio: x before it, folio not listed (as in the model)
        (q,) = c.layout(start=c.addr + PAGE).pmds
        assert q.picture[0] == "x" and q.picture[1:16] == "4" * 15
        assert q.folios == []


def test_pmd_thp_then_pte_mapped_after_mprotect(thp):
    def step0(a):
        madvise(a, PMD, MADV_HUGEPAGE)
        write(a, 3)

    def step1(a):
        _check(_libc.mprotect(a + 5 * PAGE, PAGE, PROT_READ), "mprotect")

    with thp(PMD_ONLY), child([step0, step1]) as c:
        (p,) = c.layout().pmds
        assert p.picture == "H" * NR
        assert p.folios == [[0, 9, NR, 1]]
        info = pm.read_range(c.pid, c.addr, c.addr + PMD)
        assert info.pmd_source == "PAGEMAP_SCAN"
        assert info.pmd_mapped.all() and info.present.all() and info.thp.all()
        assert (info.head == info.pfn[0]).all() and (info.order == 9).all()
        assert (info.pfn == info.pfn[0] + np.arange(NR)).all()
        (v,) = [v for v in pm.vmas(c.pid) if v.start <= c.addr < v.end]
        assert v.hg and not v.nh and v.anon_huge_pages == PMD
        c.advance()
        (p,) = c.layout().pmds
        assert p.picture == "9" * NR  # still one order-9 folio, now mapped by PTEs
        assert p.folios == [[0, 9, NR, 0]]
        assert sum(v.anon_huge_pages for v in pm.vmas(c.pid)
                   if c.addr <= v.start < c.addr + PMD) == 0


def test_smaps_fallback_without_pagemap_scan(thp, monkeypatch):
    def no_scan(*_a, **_k):
        raise OSError(errno.ENOTTY, "no PAGEMAP_SCAN")

    def step0(a):
        madvise(a, 2 * PMD, MADV_HUGEPAGE)
        write(a, 0)
        write(a, NR)

    def step1(a):  # the second PMD becomes PTE-mapped
        _check(_libc.mprotect(a + (NR + 7) * PAGE, PAGE, PROT_READ), "mprotect")

    with thp(PMD_ONLY), child([step0, step1], npmd=2) as c:
        monkeypatch.setattr(pm, "pmd_mapped_ranges", no_scan)
        c.advance()
        info = pm.read_range(c.pid, c.addr, c.addr + 2 * PMD)
        assert info.pmd_source == "smaps"
        assert [p.picture for p in c.layout().pmds] == ["H" * NR, "9" * NR]


def test_read_faults_map_zero_pages(thp):
    def step0(a):
        read(a, 5)
        write(a, 7)
        madvise(a + PMD, PMD, MADV_HUGEPAGE)
        read(a + PMD, 0)

    with thp({**PMD_ONLY, "use_zero_page": "1"}), child([step0], npmd=2) as c:
        small, huge = c.layout().pmds
        assert small.picture[5] == "z" and small.picture[7] == "0"
        assert small.picture.count(".") == NR - 2
        assert small.folios == [[7, 0, 1, 0]]  # zero pages are not folios
        assert small.shared == "-" * NR
        assert huge.picture == "Z" * NR and huge.folios == []


def test_fork_shares_and_cow_unshares(thp):
    def step0(a):
        madvise(a, PMD, MADV_NOHUGEPAGE)
        write(a, 0, 4)  # order 0 (NOHUGEPAGE forbids mTHP too)
        madvise(a, PMD, MADV_HUGEPAGE)
        write(a, 16)  # a 64K folio, pages 16..31
        hold_forked()

    def step1(a):
        write(a, 1)  # COW: order-0 copy
        write(a, 20)  # COW of a shared large folio: order-0 copy of that page

    with thp(ONLY_64K), child([step0, step1]) as c:
        (p,) = c.layout().pmds
        assert p.picture[:32] == "0000" + "." * 12 + "4" * 16
        assert p.shared[:32] == "SSSS" + "-" * 12 + "S" * 16
        info = pm.read_range(c.pid, c.addr, c.addr + 32 * PAGE)
        assert (info.kcount[:4] == 2).all() and not info.exclusive[:4].any()
        c.advance()
        (p,) = c.layout().pmds
        assert p.picture[:32] == "0000" + "." * 12 + "4444" + "0" + "4" * 11
        assert p.shared[:32] == "S-SS" + "-" * 12 + "SSSS" + "-" + "S" * 11
        assert [0, 4, 4, 0] not in p.folios
        assert [16, 4, 15, 0] in p.folios and [20, 0, 1, 0] in p.folios


def test_pageout_to_zram_gives_swap_entries(thp):
    if not os.path.isdir("/sys/block/zram0"):
        skip_or_fail("no /sys/block/zram0: cannot set up zram swap")

    def step0(a):
        # one CPU: the fresh pages sit in this CPU's LRU batch, which MADV_PAGEOUT drains
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        madvise(a, PMD, MADV_NOHUGEPAGE)
        write(a, 0, 16)

    def pageout(a):
        madvise(a, 8 * PAGE, MADV_PAGEOUT)

    try:
        swap = zram_swap("64M")
        swap.__enter__()
    except (HostUnavailable, HostBusy) as e:
        skip_or_fail(f"zram swap unavailable: {e}")
    try:
        with thp({}), child([step0] + [pageout] * 10) as c:
            for _ in range(10):  # reclaim can miss a page that is briefly off the LRU
                c.advance()
                (p,) = c.layout().pmds
                if p.picture[:8] == "s" * 8:
                    break
            assert p.picture[:16] == "s" * 8 + "0" * 8
            assert p.summary() == "0-7:swap 8-15:o0x8"
            info = pm.read_range(c.pid, c.addr, c.addr + 16 * PAGE)
            assert info.swap[:8].all() and not info.present[:8].any()
    finally:
        swap.__exit__(None, None, None)


def test_process_gone():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    with pytest.raises(ProcessGone):
        pm.read_range(pid, 0, PAGE)
    with pytest.raises(ProcessGone):
        pm.host_layout(pid, 0, PMD)
    with pytest.raises(ProcessGone):
        pm.vmas(pid)


def test_own_heap_is_readable_and_consistent():
    """Folio heads/orders agree with kpageflags for whatever this process has mapped."""
    vs = [v for v in pm.vmas(os.getpid()) if v.is_anon_mapping and v.anonymous]
    assert vs
    v = max(vs, key=lambda v: v.anonymous)
    info = pm.read_range(os.getpid(), v.start, v.end)
    assert info.folio_info
    ok = info.present & ~info.zero
    assert ok.any()
    assert (info.order[ok] >= 0).all()
    assert (info.head[ok] <= info.pfn[ok]).all()
    assert (info.pfn[ok] - info.head[ok] < (1 << info.order[ok].astype(np.int64))).all()


def test_fork_shares_a_pmd_thp(thp):
    def step0(a):
        madvise(a, PMD, MADV_HUGEPAGE)
        write(a, 0)
        hold_forked()

    with thp(PMD_ONLY), child([step0]) as c:
        (p,) = c.layout().pmds
        assert p.picture == "H" * NR and p.shared == "S" * NR
        assert p.folios == [[0, 9, NR, 1]]
