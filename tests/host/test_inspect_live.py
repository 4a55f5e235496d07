"""`thpsim inspect` on live processes: agreement with the kernel's thpmaps, occupancy and
khugepaged eligibility on hand-built layouts (a fresh Python child waiting on stdin)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

import thpsim.host.inspect as inspect_mod
from thpsim.cli import main
from thpsim.host.errors import ProcessGone
from thpsim.host.inspect import inspect
from thpsim.host.thp_sysfs import host_thp_settings, model_defaults
from thpsim.host.thpmaps import counter_kind, percent

from .conftest import skip_or_fail

pytestmark = pytest.mark.usefixtures("host")

K = 1024
M = 1024 * K
PAGE = 4096
THPMAPS_ENV = "THPSIM_THPMAPS"
THPMAPS_FALLBACK = "/var/cache/thpsim/thpmaps"

# The child maps regions inside a PROT_NONE reservation (so neighbours never merge),
# prints the reservation base and waits for stdin to close.
CHILD = r"""
import ctypes, os, sys
K, M, PAGE = 1024, 1 << 20, 4096
RW, NONE = 3, 0
PRIV_ANON, FIXED, NORESERVE = 0x22, 0x10, 0x4000
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.mremap.restype = ctypes.c_void_p
libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int,
                        ctypes.c_void_p]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

def check(rc, what):
    if rc != 0:
        raise OSError(ctypes.get_errno(), what)

def mmap(addr, size, prot=RW):
    got = libc.mmap(addr, size, prot, PRIV_ANON | FIXED | NORESERVE, -1, 0)
    if got != addr:
        raise OSError(ctypes.get_errno(), "mmap")

def write(addr, pages=1, step=PAGE):
    for i in range(pages):
        ctypes.memset(addr + i * step, 0x5A, 1)

def read(addr, pages=1):
    for i in range(pages):
        ctypes.string_at(addr + i * PAGE, 1)

raw = libc.mmap(None, 48 * M, NONE, PRIV_ANON | NORESERVE, -1, 0)
B = (raw + 2 * M - 1) // (2 * M) * (2 * M)
mode = sys.argv[1]
if mode == "mix":
    import numpy.random  # ext4 page-cache large folios: file-thp-* counters
    mmap(B, 4 * M); check(libc.madvise(B, 4 * M, 14), "hg")          # R1: PMD THP
    write(B)
    mmap(B + 6 * M, 1 * M)                                            # R2: 8 x 64K
    write(B + 6 * M, 8, 64 * K)
    check(libc.madvise(B + 6 * M + 64 * K + 8 * K, PAGE, 4), "dontneed")  # partial
    mmap(B + 10 * M + 16 * K, 48 * K)                                 # R3: 3 x 16K
    write(B + 10 * M + 16 * K, 3, 16 * K)
    mmap(B + 12 * M, 128 * K)                                         # R4: 64K moved
    write(B + 12 * M, 2, 64 * K)
    if libc.mremap(B + 12 * M, 64 * K, 64 * K, 3, B + 14 * M + PAGE) != B + 14 * M + PAGE:
        raise OSError(ctypes.get_errno(), "mremap 64K")
    mmap(B + 16 * M, 2 * M); check(libc.madvise(B + 16 * M, 2 * M, 14), "hg")  # R5
    write(B + 16 * M)
    if libc.mremap(B + 16 * M, 2 * M, 2 * M, 3, B + 20 * M + PAGE) != B + 20 * M + PAGE:
        raise OSError(ctypes.get_errno(), "mremap 2M")
    mmap(B + 24 * M, 2 * M); check(libc.madvise(B + 24 * M, 2 * M, 14), "hg")  # R6
    write(B + 24 * M)
    check(libc.mprotect(B + 24 * M, PAGE, 1), "mprotect")
    check(libc.mprotect(B + 24 * M, PAGE, 3), "mprotect")
    mmap(B + 28 * M, 2 * M); check(libc.madvise(B + 28 * M, 2 * M, 14), "hg")  # R7
    write(B + 28 * M)
    check(libc.mprotect(B + 28 * M, PAGE, 1), "mprotect")
else:
    mmap(B + 11 * M, 64 * K)                                  # O2: shared with a grandchild
    write(B + 11 * M, 16)
    r, w = os.pipe()
    if os.fork() == 0:
        os.close(w); os.read(r, 1); os._exit(0)
    os.close(r)
    mmap(B + 8 * M, 2 * M)                                    # O: 100 written, 50 read
    write(B + 8 * M, 100)
    read(B + 8 * M + 100 * PAGE, 50)
    mmap(B + 1 * M, 6 * M); check(libc.madvise(B + 1 * M, 6 * M, 14), "hg")   # E1
    write(B + 1 * M)
    mmap(B + 14 * M + 1 * M, 6 * M)                                           # E2
    write(B + 15 * M)
    mmap(B + 22 * M, 4 * M); check(libc.madvise(B + 22 * M, 4 * M, 15), "nh")  # E3
    write(B + 22 * M)
    mmap(B + 28 * M, 1 * M); check(libc.madvise(B + 28 * M, 1 * M, 14), "hg")  # E4
    write(B + 28 * M)
print(B, flush=True)
sys.stdin.read()
"""

# 16K and 64K mTHP on every fault, PMD THP where MADV_HUGEPAGE; khugepaged can
# collapse nothing (every PTE-mapped window has a none PTE) and sleeps long.
MIX_SETTINGS = {"enabled": "madvise", "hugepages-2048kB/enabled": "inherit",
                "hugepages-64kB/enabled": "always", "hugepages-16kB/enabled": "always",
                "khugepaged/max_ptes_none": "0", "khugepaged/scan_sleep_millisecs": "100000"}
OCC_SETTINGS = {"enabled": "madvise", "hugepages-2048kB/enabled": "inherit",
                "khugepaged/max_ptes_none": "0", "khugepaged/scan_sleep_millisecs": "100000"}


def _thpmaps_path() -> str:
    path = os.environ.get(THPMAPS_ENV) or THPMAPS_FALLBACK
    if not os.path.isfile(path):
        skip_or_fail(f"thpmaps not found (set {THPMAPS_ENV}; .ci/run fetches it to "
                     f"{THPMAPS_FALLBACK})")
    return path


class Child:
    """A fresh Python process that builds the layout ``mode`` under the current settings."""

    def __init__(self, mode: str) -> None:
        self.p = subprocess.Popen([sys.executable, "-c", CHILD, mode], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.p.stdout.readline().strip()
        if not line.isdigit():
            self.p.kill()
            raise AssertionError(f"child failed: {line} {self.p.stderr.read()}")
        self.pid, self.base = self.p.pid, int(line)

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.stdin.close()
            self.p.wait(timeout=30)


@contextmanager
def child(mode: str, settings: dict[str, str]) -> Iterator[tuple[int, int]]:
    """A :class:`Child` built and inspected under ``settings``: yields (pid, base address)."""
    with host_thp_settings(model_defaults() | settings):
        c = Child(mode)
        try:
            yield c.pid, c.base
        finally:
            c.close()


def _thpmaps(path: str, pid: int, rollup: bool) -> dict:
    """Run thpmaps: {(start, end): [normalised lines]} or, with rollup, {"rollup": lines}."""
    args = [sys.executable, path, "--pid", str(pid), "--inc-empty", "--cont", "64K",
            "--cont", "16K"] + (["--rollup"] if rollup else [])
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    res: dict = {"rollup": []} if rollup else {}
    cur = "rollup" if rollup else None
    for line in out.stdout.splitlines():
        m = re.match(r"^\s*\d+: ([0-9a-f]+)-([0-9a-f]+) ", line)
        if m:
            cur = (int(m[1], 16), int(m[2], 16))
            res[cur] = []
        elif cur is not None and re.match(r"^[\w-]+:\s+\d+ kB", line):
            res[cur].append(" ".join(line.split()))
    return res


def _ours(rep, rollup: bool) -> dict:
    """Our counters in thpmaps' line format (label: kB (percent))."""
    def lines(counters: dict, anon: int, file: int) -> list[str]:
        out = []
        for label, kb in counters.items():
            total = anon if counter_kind(label) == "anon" else file
            out.append(" ".join(f"{label}: {kb} kB{percent(kb, total)}".split()))
        return out

    if rollup:
        r = rep.rollup
        return {"rollup": lines(r["counters"], r["anonymous_kb"], r["file_kb"])}
    return {(v.start, v.end): lines(v.counters, v.anonymous_kb, v.file_kb)
            for v in rep.processes[0].vmas}


def _agree(path: str, pid: int, rollup: bool):
    """Read thpmaps, ours, thpmaps again until the two thpmaps readings match."""
    for _ in range(4):
        before = _thpmaps(path, pid, rollup)
        rep = inspect([pid], cont_orders=(4, 2), with_rollup=rollup)
        after = _thpmaps(path, pid, rollup)
        if before == after:
            return before, rep
    pytest.fail("the child's layout kept changing while it was read")


def _vma(rep, start: int):
    return next(v for v in rep.processes[0].vmas if v.start == start)


def test_counters_equal_thpmaps_on_a_known_mix(monkeypatch):
    path = _thpmaps_path()
    with child("mix", MIX_SETTINGS) as (pid, b):
        theirs, rep = _agree(path, pid, rollup=False)
        ours = _ours(rep, rollup=False)
        assert set(ours) == set(theirs)
        for key, lines in theirs.items():
            assert ours[key] == lines, f"VMA {key[0]:#x}-{key[1]:#x}"
        theirs_r, rep_r = _agree(path, pid, rollup=True)
        assert _ours(rep_r, rollup=True) == theirs_r
        # huge VMAs are read in chunks: tiny chunks give the same counters and classes
        monkeypatch.setattr(inspect_mod, "_CHUNK_PAGES", 64)
        small = inspect([pid], cont_orders=(4, 2))

    def key(r):
        return [(v.start, v.counters, {k: n for k, n in v.occupancy.items() if k != "shared"})
                for v in r.processes[0].vmas]

    assert key(small) == key(rep)

    # the mix really is there (expected by hand from the child's steps)
    c = {v.start: v.counters for v in rep.processes[0].vmas}
    assert c[b]["anon-thp-pmd-aligned-2048kB"] == 2048
    assert c[b + 6 * M]["anon-thp-pte-aligned-64kB"] == 7 * 64
    assert c[b + 6 * M]["anon-thp-pte-partial"] == 60
    assert c[b + 6 * M]["anon-cont-pte-aligned-16kB"] == 7 * 64 + 3 * 16
    assert c[b + 10 * M + 16 * K]["anon-thp-pte-aligned-16kB"] == 48
    assert c[b + 12 * M + 64 * K]["anon-thp-pte-aligned-64kB"] == 64
    assert c[b + 14 * M + PAGE]["anon-thp-pte-unaligned-64kB"] == 64
    assert c[b + 14 * M + PAGE]["anon-cont-pte-aligned-16kB"] == 0
    assert c[b + 20 * M + PAGE]["anon-thp-pte-unaligned-2048kB"] == 2048
    assert c[b + 24 * M]["anon-thp-pte-aligned-2048kB"] == 2048
    assert c[b + 24 * M]["anon-thp-pmd-aligned-2048kB"] == 0
    assert c[b + 28 * M]["anon-thp-pte-partial"] == 4
    assert c[b + 28 * M + PAGE]["anon-thp-pte-partial"] == 2044


def test_occupancy_eligibility_and_pictures():
    with host_thp_settings(model_defaults() | OCC_SETTINGS):
        c = Child("occ")
        pid, b = c.pid, c.base
        try:
            rep = inspect([pid], pmds=True)
        except BaseException:
            c.close()
            raise
    try:
        with host_thp_settings(model_defaults() | OCC_SETTINGS | {"enabled": "always"}):
            rep2 = inspect([pid])
    finally:
        c.close()
    o = _vma(rep, b + 8 * M)
    assert o.occupancy == {"present": 100, "none": 362, "zero": 50, "swap": 0, "shared": 0}
    assert len(o.pmds) == 1 and o.pmds[0].addr == b + 8 * M
    assert o.pmds[0].picture == "0" * 100 + "z" * 50 + "." * 362
    o2 = _vma(rep, b + 11 * M)
    assert o2.occupancy == {"present": 16, "none": 0, "zero": 0, "swap": 0, "shared": 16}
    # the 64K VMA sits 1M into its PMD window
    assert o2.pmds[0].addr == b + 10 * M
    assert o2.pmds[0].picture == "x" * 256 + "0" * 16 + "x" * 240
    assert o2.pmds[0].shared == "-" * 256 + "S" * 16 + "-" * 240
    # enabled=madvise: only the MADV_HUGEPAGE VMA with whole PMDs inside counts
    elig = {s: _vma(rep, s).khugepaged_eligible_pmds
            for s in (b + 1 * M, b + 15 * M, b + 22 * M, b + 28 * M, b + 8 * M)}
    assert elig == {b + 1 * M: 2, b + 15 * M: 0, b + 22 * M: 0, b + 28 * M: 0, b + 8 * M: 0}
    e1 = _vma(rep, b + 1 * M)
    assert [p.addr for p in e1.pmds] == [b, b + 2 * M, b + 4 * M, b + 6 * M]
    assert e1.pmds[0].picture == "x" * 256 + "0" + "." * 255
    assert e1.pmds[3].picture == "." * 256 + "x" * 256
    elig = {s: _vma(rep2, s).khugepaged_eligible_pmds
            for s in (b + 1 * M, b + 15 * M, b + 22 * M, b + 28 * M, b + 8 * M)}
    assert elig == {b + 1 * M: 2, b + 15 * M: 2, b + 22 * M: 0, b + 28 * M: 0, b + 8 * M: 1}


def test_cli_json_and_human_output(capsys):
    with child("occ", OCC_SETTINGS) as (pid, b):
        assert main(["inspect", "--pid", str(pid), "--json", "--rollup", "--pmds",
                     "--cont", "64K"]) == 0
        d = json.loads(capsys.readouterr().out)
        (proc,) = d["processes"]
        assert proc["pid"] == pid and proc["comm"].startswith("python")
        v = next(v for v in proc["vmas"] if v["start"] == b + 8 * M)
        assert v["end"] == b + 10 * M and isinstance(v["flags"], str)
        assert v["occupancy"]["present"] == 100
        assert "anon-cont-pte-aligned-64kB" in v["counters"]
        assert [p["addr"] for p in v["pmds"]] == [b + 8 * M]
        occ_sum = {k: sum(x["occupancy"][k] for x in proc["vmas"]) for k in v["occupancy"]}
        assert d["rollup"]["occupancy"] == occ_sum
        assert main(["inspect", "--pid", str(pid), "--pmds"]) == 0
        out = capsys.readouterr().out
        assert f"{b + 8 * M:x}-{b + 10 * M:x}" in out and "100/362/50/0/0" in out
        assert f"PMD {b + 8 * M:#x}" in out


def test_vanished_named_pid_is_a_clear_error(capsys):
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    with pytest.raises(ProcessGone, match=str(p.pid)):
        inspect([p.pid])
    assert main(["inspect", "--pid", str(p.pid)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"process {p.pid} is gone" in err


def _own_cgroup() -> str | None:
    """This process's most specific cgroup directory (v2, or a v1 hierarchy)."""
    found = []
    with open("/proc/self/cgroup") as f:
        for line in f:
            _id, ctrl, rel = line.rstrip("\n").split(":", 2)
            roots = (["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] if not ctrl
                     else [f"/sys/fs/cgroup/{c.removeprefix('name=')}" for c in ctrl.split(",")])
            for root in roots:
                d = root + rel.rstrip("/")
                if os.path.isfile(os.path.join(d, "cgroup.procs")):
                    found.append(d)
                    break
    return max(found, key=lambda d: d.count("/")) if found else None


def test_cgroup_and_whole_system_include_this_process():
    path = _own_cgroup()
    if path is None:
        skip_or_fail("no cgroup directory found for this process")
    rep = inspect(cgroup=path)
    assert os.getpid() in [p.pid for p in rep.processes]
    rep = inspect(with_rollup=True)
    me = next(p for p in rep.processes if p.pid == os.getpid())
    assert me.vmas and rep.rollup["occupancy"]["present"] >= sum(
        v.occupancy["present"] for v in me.vmas)
    assert all(p.vmas for p in rep.processes)  # kernel threads are left out
