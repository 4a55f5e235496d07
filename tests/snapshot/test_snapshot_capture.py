"""Capturing a live child with a known layout from the real kernel (root only)."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import pytest

from tests.host.conftest import _host_reason
from tests.oracle import skip_or_fail
from thpsim.host.errors import HostUnavailable, ProcessGone
from thpsim.scenario.host_worker import libc
from thpsim.snapshot.capture import capture
from thpsim.snapshot.core import HUGE_ZERO, NONE, PRESENT, ZERO, Snapshot

PAGE = 4096
PMD = 2 << 20
NR = PMD // PAGE
MADV_HUGEPAGE, MADV_NOHUGEPAGE = 14, 15

_libc = libc()  # mmap/madvise/mprotect/munmap prototypes, as the scenario worker's


@pytest.fixture
def host():
    """Skip (fail under THP_ORACLE=require) without the real kernel; check no knob leaks."""
    reason = _host_reason()
    if reason is not None:
        skip_or_fail(reason)
    from thpsim.host import thp_sysfs

    # under the host lock, so another run's knob changes cannot show up here
    with thp_sysfs.host_lock():
        before = thp_sysfs.snapshot()
        yield
        assert thp_sysfs.snapshot() == before, "THP knobs were left changed"


@pytest.fixture
def thp(host, tmp_path):
    """``thp(values)``: the model's defaults + ``values`` for a block, restored after."""
    from thpsim.host.thp_sysfs import host_thp_settings, model_defaults

    @contextmanager
    def apply(values: dict[str, str]):
        with host_thp_settings(model_defaults() | values,
                               state_file=str(tmp_path / "thp-state.json")):
            yield

    return apply


def map_aligned(advice: int | None = None) -> int:
    """One PMD-aligned private anonymous PMD (the slack around it unmapped)."""
    raw = _libc.mmap(None, 2 * PMD, 3, 0x22, -1, 0)
    if raw in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap failed")
    addr = (raw + PMD - 1) // PMD * PMD
    if addr > raw:
        _libc.munmap(raw, addr - raw)
    _libc.munmap(addr + PMD, raw + 2 * PMD - addr - PMD)
    if advice is not None and _libc.madvise(addr, PMD, advice):
        raise OSError(ctypes.get_errno(), "madvise failed")
    return addr


def write(addr: int, pages) -> None:
    for i in pages:
        ctypes.memset(addr + i * PAGE, 0x5A, 1)


def read(addr: int, pages) -> None:
    for i in pages:
        ctypes.string_at(addr + i * PAGE, 1)


@contextmanager
def child(setup: Callable[[], list[int]]) -> Iterator[tuple[int, list[int]]]:
    """Fork a child that runs ``setup`` (returns addresses), reports them and waits."""
    rep_r, rep_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 0
        try:
            os.close(rep_r)
            os.close(go_w)
            addrs = setup()
            os.write(rep_w, (" ".join(map(str, addrs)) + "\n").encode())
            os.read(go_r, 1)
        except BaseException as e:
            os.write(rep_w, f"ERR {e!r}\n".encode())
            code = 1
        os._exit(code)
    os.close(rep_w)
    os.close(go_r)
    with os.fdopen(rep_r) as rep:
        line = rep.readline().strip()
        try:
            if not line or line.startswith("ERR"):
                raise AssertionError(f"child setup failed: {line or 'no report'}")
            yield pid, [int(x) for x in line.split()]
        finally:
            os.close(go_w)
            os.waitpid(pid, 0)


def pages(snap: Snapshot, addr: int, n: int = NR) -> dict[str, np.ndarray]:
    """The columns of ``n`` pages from ``addr`` (which must lie in one VMA)."""
    off = snap.vma_offsets()
    for i, v in enumerate(snap.vmas):
        if v.start <= addr < v.end:
            assert addr + n * PAGE <= v.end
            a = int(off[i]) + (addr - v.start) // PAGE
            return {c: getattr(snap, c)[a : a + n] for c in Snapshot.COLUMNS} | {"vma": v}
    raise AssertionError(f"{addr:#x} is in no captured VMA")


def _setup_layout() -> list[int]:
    a = map_aligned(MADV_NOHUGEPAGE)
    write(a, range(10))           # order-0 pages 0-9
    read(a, range(20, 30))        # zero page at 20-29
    b = map_aligned()
    write(b, [0, 40])             # 64K folios at 0-15 and 32-47
    c = map_aligned(MADV_HUGEPAGE)
    write(c, [0])                 # a PMD-mapped THP
    d = map_aligned(MADV_HUGEPAGE)
    read(d, [0])                  # the huge zero page
    return [a, b, c, d]


def test_capture_known_layout(thp):
    settings = {"enabled": "madvise", "hugepages-64kB/enabled": "always",
                "hugepages-2048kB/enabled": "inherit", "use_zero_page": "1"}
    with thp(settings), child(_setup_layout) as (pid, (a, b, c, d)):
        calls: list[tuple[int, int]] = []
        snap = capture(pid, progress=lambda done, total: calls.append((done, total)))
    snap.validate()
    assert snap.pid == pid and snap.kernel == os.uname().release
    assert snap.settings["hugepages-64kB/enabled"] == "always"
    assert snap.settings["enabled"] == "madvise"
    assert calls[-1][0] == calls[-1][1] == snap.nr_pages
    assert [x for x, _ in calls] == sorted(x for x, _ in calls)

    # A: order-0 pages 0-9, zero page 20-29, nothing else; VMA has nh
    pa = pages(snap, a)
    want = np.full(NR, NONE)
    want[:10] = PRESENT
    want[20:30] = ZERO
    assert pa["state"].tolist() == want.tolist()
    assert (pa["order"][:10] == 0).all() and (pa["folio_index"][:10] == 0).all()
    assert (pa["mapcount"][:10] == 1).all() and pa["exclusive"][:10].all()
    assert not pa["pmd_mapped"].any() and (pa["mapcount"][10:] == 0).all()
    assert pa["vma"].nh and pa["vma"].anon_vma is True

    # B: two 64K folios, fully mapped, indexes 0..15
    pb = pages(snap, b)
    want = np.full(NR, NONE)
    want[0:16] = PRESENT
    want[32:48] = PRESENT
    assert pb["state"].tolist() == want.tolist()
    assert (pb["order"][want == PRESENT] == 4).all()
    assert pb["folio_index"][0:16].tolist() == list(range(16))
    assert pb["folio_index"][32:48].tolist() == list(range(16))
    assert not pb["pmd_mapped"].any() and pb["exclusive"][want == PRESENT].all()

    # C: one PMD-mapped order-9 folio
    pc = pages(snap, c)
    assert (pc["state"] == PRESENT).all() and (pc["order"] == 9).all()
    assert pc["folio_index"].tolist() == list(range(NR))
    assert pc["pmd_mapped"].all() and pc["vma"].hg
    assert (pc["mapcount"] == 1).all()

    # D: the huge zero page, PMD-mapped; no anonymous page there
    pd = pages(snap, d)
    assert (pd["state"] == HUGE_ZERO).all() and pd["pmd_mapped"].all()
    assert (pd["order"] == -1).all() and pd["vma"].anon_vma is not False


def _setup_forked() -> list[int]:
    a = map_aligned(MADV_NOHUGEPAGE)
    write(a, range(4))
    r, w = os.pipe()
    if os.fork() == 0:  # a grandchild holding the pages until the child exits
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    os.close(r)
    return [a]


def test_capture_shared_after_fork(host):
    with child(_setup_forked) as (pid, (a,)):
        snap = capture(pid)
    pa = pages(snap, a, 8)
    assert pa["state"].tolist() == [PRESENT] * 4 + [NONE] * 4
    assert pa["mapcount"][:4].tolist() == [2] * 4
    assert not pa["exclusive"][:4].any()


def test_capture_gone_and_not_root(host, monkeypatch):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    with pytest.raises(ProcessGone):
        capture(pid)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(HostUnavailable, match="needs root"):
        capture(os.getpid())


def test_cli_capture(host, tmp_path, capsys):
    from thpsim.cli import main
    from thpsim.snapshot.io import load_snapshot

    out = tmp_path / "child.thpsnap"
    with child(_setup_forked) as (pid, (a,)):
        assert main(["snapshot", "--pid", str(pid), "-o", str(out), "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out}: ")
    snap = load_snapshot(out)
    assert snap.pid == pid
    assert pages(snap, a, 8)["state"].tolist() == [PRESENT] * 4 + [NONE] * 4
