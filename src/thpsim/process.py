"""The user-facing process API: system calls and memory accesses by byte address.

System calls return 0 or a negative errno (as the raw syscalls do); accesses
outside a VMA or against its protection raise :class:`~thpsim.mm.memory.SegvError`.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

import numpy as np

from thpsim.mm import fork as fork_mod
from thpsim.mm import madvise as madvise_mod
from thpsim.mm import mmap as mmap_mod
from thpsim.mm.memory import handle_mm_fault, touch_pages
from thpsim.mm.mm import (
    MM,
    THP_DISABLE_COMPLETELY,
    THP_DISABLE_EXCEPT_ADVISED,
    THP_DISABLE_NONE,
)
from thpsim.mm.pgtable import HUGE_ZERO_PFN, PTE_PRESENT, PTE_SWAP
from thpsim.mm.vma import VM_UFFD_MINOR, VM_UFFD_MISSING, VM_UFFD_WP

if TYPE_CHECKING:
    from thpsim.layout import Layout
    from thpsim.system import System

__all__ = ["Process", "parse_prot"]

_PROT = {"": 0, "none": 0, "r": 1, "w": 2, "rw": 3, "wr": 3}


def parse_prot(prot: int | str) -> int:
    """``"rw"``/``"r"``/``"none"`` or PROT_* bits -> PROT_* bits."""
    if isinstance(prot, int):
        return prot & 3
    if prot.lower() not in _PROT:
        raise ValueError(f"bad protection {prot!r} (use rw, r or none)")
    return _PROT[prot.lower()]


class Process:
    """A process of a :class:`~thpsim.system.System` (one mm)."""

    def __init__(self, sys: System, mm: MM) -> None:
        self.sys = sys
        self.mm = mm

    @property
    def pid(self) -> int:
        return self.mm.pid

    @property
    def name(self) -> str:
        return self.mm.name

    def __repr__(self) -> str:
        return f"Process(pid={self.pid}, name={self.name!r})"

    # --- helpers ------------------------------------------------------------------
    def _vpn(self, addr: int) -> int:
        return addr >> self.sys.geometry.page_shift

    def _range(self, addr: int, length: int) -> tuple[int, int] | None:
        g = self.sys.geometry
        if addr % g.page_size or length < 0:
            return None
        return addr // g.page_size, (addr + length + g.page_size - 1) // g.page_size

    def _done(self, ret=None):
        if self.sys.check_invariants:
            self.sys.check()
        return ret

    # --- system calls -------------------------------------------------------------
    def mmap(self, length: int, addr: int | None = None, prot: int | str = "rw",
             name: str = "") -> int:
        """Map private anonymous memory; returns its byte address."""
        g = self.sys.geometry
        if length <= 0 or (addr is not None and addr % g.page_size):
            raise ValueError("mmap needs a positive length and a page-aligned address")
        nr = -(-length // g.page_size)
        vpn = mmap_mod.do_mmap(self.sys, self.mm, nr, parse_prot(prot),
                               None if addr is None else addr // g.page_size, name)
        return self._done(vpn * g.page_size)

    def munmap(self, addr: int, length: int) -> int:
        r = self._range(addr, length)
        if r is None or length == 0:
            return -errno.EINVAL
        return self._done(mmap_mod.do_munmap(self.sys, self.mm, *r))

    def mprotect(self, addr: int, length: int, prot: int | str) -> int:
        r = self._range(addr, length)
        if r is None:
            return -errno.EINVAL
        return self._done(mmap_mod.do_mprotect(self.sys, self.mm, *r, parse_prot(prot)))

    def madvise(self, addr: int, length: int, advice: int | str) -> int:
        """``madvise``; ``advice`` is a name (``"hugepage"``, ``"dontneed"`` ...) or number."""
        r = self._range(addr, length)
        if r is None:
            return -errno.EINVAL
        if isinstance(advice, str):
            if advice.lower() not in madvise_mod.ADVICE:
                return -errno.EINVAL
            advice = madvise_mod.ADVICE[advice.lower()]
        return self._done(madvise_mod.do_madvise(self.sys, self.mm, *r, advice))

    def prctl_thp_disable(self, mode: str = "completely") -> int:
        """``PR_SET_THP_DISABLE``: ``"completely"``, ``"except-advised"`` or ``"none"``."""
        modes = {"none": THP_DISABLE_NONE, "completely": THP_DISABLE_COMPLETELY,
                 "except-advised": THP_DISABLE_EXCEPT_ADVISED}
        if mode not in modes:
            return -errno.EINVAL
        self.mm.thp_disable = modes[mode]
        return 0

    def uffd_register(self, addr: int, length: int, mode: str = "missing") -> int:
        """``UFFDIO_REGISTER`` on ``[addr, addr+length)`` (missing, wp or minor)."""
        flag = {"missing": VM_UFFD_MISSING, "wp": VM_UFFD_WP, "minor": VM_UFFD_MINOR}.get(mode)
        r = self._range(addr, length)
        if flag is None or r is None:
            return -errno.EINVAL
        s, e = r
        for vma in self.mm.vmas.overlapping(s, e):
            mmap_mod.vma_modify_flags(self.sys, self.mm, vma, max(s, vma.start),
                                      min(e, vma.end), vma.flags | flag)
        return self._done(0)

    def fork(self, name: str = "child") -> Process:
        """``fork()``: a child sharing every page copy-on-write."""
        child = self.sys.spawn(name)
        fork_mod.dup_mm(self.sys, self.mm, child.mm)
        return self._done(child)

    def exit(self) -> None:
        """Exit: unmap everything and leave the system."""
        fork_mod.exit_mmap(self.sys, self.mm)
        self.sys.processes.pop(self.pid, None)
        self._done()

    # --- memory accesses ------------------------------------------------------------
    def touch(self, addr: int, length: int | None = None, write: bool = True,
              pages=None, populate: bool = False) -> int:
        """Access pages: all of ``[addr, addr+length)``, or ``pages`` (page offsets
        from ``addr``).  Each written page gets a fresh content token; with
        ``populate`` pages are faulted in without changing their content
        (``MADV_POPULATE_WRITE``).  Returns the number of pages touched."""
        g = self.sys.geometry
        base = self._vpn(addr)
        if pages is None:
            nr = -(-(length or g.page_size) // g.page_size)
            vpns = np.arange(base, base + nr, dtype=np.int64)
        else:
            vpns = base + np.asarray(pages, dtype=np.int64)
        return self._done(touch_pages(self.sys, self.mm, vpns, write, populate))

    def write(self, addr: int) -> int:
        """Write one page; returns the token now stored there."""
        vpn = self._vpn(addr)
        touch_pages(self.sys, self.mm, np.array([vpn]), True)
        return self._done(int(self.peek(addr)[0]))

    def read(self, addr: int) -> int:
        """Read one page (faulting it in); returns its content token (0 = zeros)."""
        handle_mm_fault(self.sys, self.mm, self._vpn(addr), False)
        return self._done(int(self.peek(addr)[0]))

    def peek(self, addr: int, length: int | None = None) -> np.ndarray:
        """Content tokens of pages without faulting (swap entries read the slot)."""
        g = self.sys.geometry
        base = self._vpn(addr)
        nr = -(-(length or g.page_size) // g.page_size)
        out = np.zeros(nr, dtype=np.int64)
        pt = self.mm.pt
        for k in range(nr):
            vpn = base + k
            pmd, i = vpn >> g.pmd_order, vpn & (g.hpage_pmd_nr - 1)
            huge = pt.huge.get(pmd)
            if huge is not None:
                out[k] = 0 if huge[0] == HUGE_ZERO_PFN else self.sys.folios.content[huge[0] + i]
                continue
            row = pt.row(pmd)
            if row is None:
                continue
            kind = pt.kind[row, i]
            if kind == PTE_PRESENT:
                out[k] = self.sys.folios.content[pt.pfn[row, i]]
            elif kind == PTE_SWAP:
                out[k] = self.sys.swap.content[pt.pfn[row, i]]
        return out

    # --- inspection -------------------------------------------------------------------
    def layout(self, addr: int | None = None, length: int | None = None) -> Layout:
        """The layout (pictures, shared strings, folio lists) of a range or of all VMAs."""
        from thpsim.layout import layout_of

        return layout_of(self.sys, self.mm, addr, length)

    @property
    def rss_anon(self) -> int:
        """``RssAnon`` in pages."""
        return self.mm.rss_anon

    @property
    def rss_swap(self) -> int:
        """``VmSwap`` in pages."""
        return self.mm.rss_swap
