"""The scenario's processes on the host: a freshly executed worker (``main``) and its forks.

Run as a script by :mod:`thpsim.scenario.host_exec` (``python -I -S host_worker.py
...``), never imported by the worker itself, so the process starts from ``execve``:
its mm is new, not registered with khugepaged (``MMF_VM_HUGEPAGE`` is inherited by
``fork`` but not by ``exec``), and holds nothing but a small interpreter.  It uses
the standard library only.

Command line: ``host_worker.py SUPERVISOR_PID SLOT0_FD [SLOT_FD ...]``: one
``SOCK_SEQPACKET`` socket per process of the scenario (``main`` first, then one per
``fork`` step, in order).  Each process serves JSON commands on its socket and
answers each with one JSON message; at EOF (the supervisor is gone) it exits.  A
``fork`` command forks a child that serves the socket of the given slot.

``host_worker.py anchor SUPERVISOR_PID FD`` runs the anchor instead: a process whose
mm stays registered with khugepaged during the run (see ``host_exec._Anchor``).
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import json
import os
import signal
import socket
import sys

PAGE_SIZE = 4096
PMD_SIZE = 512 * PAGE_SIZE
MADV_COLLAPSE = 25
MAP_PRIVATE, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE = 0x02, 0x20, 0x100000
PROT_RW = 3
PR_SET_NAME, PR_SET_PDEATHSIG = 15, 1
MAP_FAILED = 2**64 - 1
_MSG_MAX = 1 << 20


def libc() -> ctypes.CDLL:
    """The C library with the prototypes used here (mmap, madvise, mprotect, munmap, prctl)."""
    lib = ctypes.CDLL(None, use_errno=True)
    lib.mmap.restype = ctypes.c_void_p
    lib.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                         ctypes.c_int, ctypes.c_long]
    for fn in ("madvise", "mprotect"):
        getattr(lib, fn).argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        getattr(lib, fn).restype = ctypes.c_int
    lib.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.munmap.restype = ctypes.c_int
    lib.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                          ctypes.c_ulong]
    lib.prctl.restype = ctypes.c_int
    return lib


def errname(err: int) -> str:
    return errno_mod.errorcode.get(err, f"E{err}")


def set_comm(lib: ctypes.CDLL, name: str) -> None:
    """``prctl(PR_SET_NAME)``: the task name in ps and in trace lines."""
    buf = ctypes.create_string_buffer(name.encode()[:15])
    lib.prctl(PR_SET_NAME, ctypes.addressof(buf), 0, 0, 0)


def _maps() -> list[tuple[int, int, str]]:
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            rng, perms = line.split()[:2]
            a, b = rng.split("-")
            out.append((int(a, 16), int(b, 16), perms))
    return out


def _accessible(maps: list[tuple[int, int, str]], start: int, end: int, need: str) -> int:
    """Bytes from ``start`` (up to ``end``) mapped with permission ``need``, without a hole."""
    cur = start
    for a, b, perms in maps:
        if b <= cur:
            continue
        if a > cur or need not in perms:
            break
        cur = min(b, end)
        if cur >= end:
            break
    return cur - start


def _result(r: int) -> dict:
    if r < 0:
        return {"ret": -1, "errno": errname(ctypes.get_errno())}
    return {"ret": r, "errno": None}


class Proc:
    """One process of the scenario (``main`` or a fork child): a command loop."""

    def __init__(self, lib: ctypes.CDLL, slot: int, sock: socket.socket,
                 spare: dict[int, socket.socket]) -> None:
        self.lib = lib
        self.slot = slot
        self.sock = sock
        self.spare = spare
        self.seq = 0

    def serve(self) -> None:
        while True:
            try:
                data = self.sock.recv(_MSG_MAX)
            except OSError:
                return
            if not data:  # the supervisor is gone
                return
            cmd = json.loads(data)
            op = cmd["op"]
            if op == "exit":
                self.reply({"ret": 0, "errno": None})
                return
            if op == "fork":
                self.fork(cmd)
                continue
            try:
                out = getattr(self, f"op_{op}")(cmd)
            except Exception as e:  # reported to the supervisor, which fails the run
                out = {"error": f"{type(e).__name__}: {e}"}
            self.reply(out)

    def reply(self, msg: dict) -> None:
        self.sock.send(json.dumps(msg).encode())

    # --- ops ---
    def op_map(self, cmd: dict) -> dict:
        """The regions, at their fixed addresses, private anonymous read/write."""
        for addr, length in cmd["regions"]:
            got = self.lib.mmap(addr, length, PROT_RW,
                                MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0)
            if got != addr:
                why = (os.strerror(ctypes.get_errno()) if got in (None, MAP_FAILED)
                       else f"mapped at {got:#x}")
                return {"error": f"mmap({addr:#x}, {length:#x}): {why}"}
        return {"ret": 0, "errno": None, "pid": os.getpid()}

    def op_touch(self, cmd: dict) -> dict:
        """Write a distinct 8-byte value to / read 8 bytes from each page, in order."""
        write = cmd["write"]
        base = cmd["addr"]
        maps = _maps()
        done = 0
        word = ctypes.c_uint64
        for a, b in cmd["runs"]:
            start = base + a * PAGE_SIZE
            ok = _accessible(maps, start, base + b * PAGE_SIZE, "w" if write else "r")
            ok //= PAGE_SIZE
            if write:
                first = ((self.slot + 1) << 48) | (self.seq + 1)
                # memmove, not c_uint64.from_address(a).value = v: ctypes setters load
                # the old value first (bitfield support), a read fault that maps the
                # zero page, and the write then COW-copies it to an order-0 page
                buf = word()
                for i in range(ok):
                    buf.value = first + i
                    ctypes.memmove(start + i * PAGE_SIZE, ctypes.addressof(buf), 8)
                self.seq += ok
            else:
                for i in range(ok):
                    word.from_address(start + i * PAGE_SIZE).value  # noqa: B018
            done += ok
            if ok < b - a:  # the next page would raise SIGSEGV: skip the rest of the step
                return {"ret": -1, "errno": "SIGSEGV"}
        return {"ret": done, "errno": None}

    def op_madvise(self, cmd: dict) -> dict:
        """One call per contiguous run; the first failure is the result."""
        ret, err = 0, None
        for a, b in cmd["runs"]:
            r = self.lib.madvise(cmd["addr"] + a * PAGE_SIZE, (b - a) * PAGE_SIZE,
                                 cmd["advice"])
            if r < 0 and ret == 0:
                ret, err = -1, errname(ctypes.get_errno())
        return {"ret": ret, "errno": err}

    def op_mprotect(self, cmd: dict) -> dict:
        return _result(self.lib.mprotect(cmd["addr"], cmd["len"], cmd["prot"]))

    def op_munmap(self, cmd: dict) -> dict:
        return _result(self.lib.munmap(cmd["addr"], cmd["len"]))

    def op_probe(self, cmd: dict) -> dict:
        """Make the kernel print this mm's hashed pointer (for the trace filter).

        A scratch mapping ``[A - 4K, A + 2M)`` (``A`` PMD-aligned): a write to its first
        page faults an order-0 page (no aligned block of order >= 2 fits there, so no
        THP counter moves) and gives the mapping an anon_vma; ``MADV_COLLAPSE`` of
        ``[A, A + 2M)``, a PMD without a page table, fails with EINVAL after emitting
        ``mm_khugepaged_scan_pmd`` from this task with ``mm=``.  Then it is unmapped.
        """
        size = 3 * PMD_SIZE
        p = self.lib.mmap(None, size, PROT_RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        if p in (None, MAP_FAILED):
            return _result(-1)
        a = -(-(p + PAGE_SIZE) // PMD_SIZE) * PMD_SIZE
        lo, hi = a - PAGE_SIZE, a + PMD_SIZE
        if lo > p:
            self.lib.munmap(p, lo - p)
        if p + size > hi:
            self.lib.munmap(hi, p + size - hi)
        ctypes.c_char.from_address(lo).value = b"x"
        out = _result(self.lib.madvise(a, PMD_SIZE, MADV_COLLAPSE))
        self.lib.munmap(lo, hi - lo)
        return out

    def fork(self, cmd: dict) -> None:
        slot = cmd["slot"]
        child_sock = self.spare.pop(slot)
        pid = os.fork()
        if pid == 0:
            self.sock.close()
            self.sock, self.slot, self.seq = child_sock, slot, 0
            set_comm(self.lib, cmd["name"])
            return  # the child goes on serving its own socket
        child_sock.close()
        self.reply({"ret": 0, "errno": None, "pid": pid})


def anchor(lib: ctypes.CDLL, sock: socket.socket) -> None:
    """Keep this mm registered with khugepaged: ``MADV_HUGEPAGE`` on an empty PMD,
    repeated on every message (registration needs a PMD size enabled)."""
    p = lib.mmap(None, 2 * PMD_SIZE, PROT_RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    a = -(-p // PMD_SIZE) * PMD_SIZE
    while True:
        lib.madvise(a, PMD_SIZE, 14)  # MADV_HUGEPAGE
        sock.send(b"ok")
        try:
            if not sock.recv(16):
                return
        except OSError:
            return


def main(argv: list[str]) -> None:
    """``[anchor] SUPERVISOR_PID FD...``"""
    lib = libc()
    role = argv.pop(0) if argv[0] == "anchor" else "main"
    supervisor, fds = int(argv[0]), [int(x) for x in argv[1:]]
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # the supervisor cleans up and kills us
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # exited fork children are reaped at once
    lib.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != supervisor:
        return
    socks = [socket.socket(fileno=fd) for fd in fds]
    if role == "anchor":
        set_comm(lib, "thpsim-anchor")
        anchor(lib, socks[0])
        return
    set_comm(lib, "main")
    # one CPU for the scenario's processes (fork children inherit it): freshly faulted
    # pages wait in per-CPU LRU batches, and MADV_PAGEOUT/COLD drain only the local
    # CPU's, so a process that migrated between its faults and its madvise would see
    # some pages left out (not on the LRU yet)
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    Proc(lib, 0, socks[0], {i: s for i, s in enumerate(socks) if i}).serve()


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    finally:
        os._exit(0)  # also in fork children: no interpreter teardown
