"""Read a live process's anonymous memory layout from the real kernel.

Sources (real-kernel.md §1):

* ``/proc/PID/pagemap``: one u64 per virtual page — PFN (bits 0-54, zero
  unless the reader is root), soft-dirty 55, exclusively mapped 56, uffd-wp 57,
  guard region 58, file/shared-anon 61, swapped 62, present 63.
* ``/proc/kpageflags`` / ``/proc/kpagecount``: one u64 per PFN (root only).
  Read in aligned windows of 512 PFNs with ``os.preadv``.  A folio is its
  COMPOUND_HEAD page plus the COMPOUND_TAIL pages that follow; from a tail we
  walk back to the head.  That gives the true folio order even when only part
  of the folio is mapped.
* PMD-mapped ranges: the ``PAGEMAP_SCAN`` ioctl on the pagemap fd with
  ``PAGE_IS_HUGE`` (pagemap/kpageflags cannot tell a PMD mapping from 512 PTEs
  of an order-9 folio).  If the ioctl is not available (kernels before 6.7),
  :func:`read_range` falls back to smaps ``AnonHugePages`` per VMA: windows
  fully covered, in order, by one order-9 anonymous folio are taken as
  PMD-mapped as long as the VMA's ``AnonHugePages`` has room for them.  That is
  a guess when a VMA holds both PMD-mapped and PTE-mapped order-9 folios;
  :attr:`PageInfo.pmd_source` says which source was used.

The reads are not atomic: a process that runs while it is inspected can change
under the reader.  Stop it (or let it wait on a pipe) for an exact picture.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import itertools
import os
import re
import struct
from dataclasses import dataclass, field

import numpy as np

from thpsim.host.errors import HostUnavailable, ProcessGone
from thpsim.layout import ORDER_CHARS, Layout, PMDLayout

__all__ = [
    "KPF_ANON",
    "KPF_COMPOUND_HEAD",
    "KPF_COMPOUND_TAIL",
    "KPF_THP",
    "KPF_ZERO_PAGE",
    "PAGEMAP_SCAN",
    "PAGE_IS_HUGE",
    "PageInfo",
    "Vma",
    "comm",
    "folio_shared",
    "host_layout",
    "pmd_mapped_ranges",
    "pmd_nr",
    "read_range",
    "vmas",
]

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

# pagemap entry bits
PM_PFN_MASK = (1 << 55) - 1
PM_SOFT_DIRTY = 1 << 55
PM_MMAP_EXCLUSIVE = 1 << 56
PM_UFFD_WP = 1 << 57
PM_GUARD_REGION = 1 << 58
PM_FILE = 1 << 61
PM_SWAP = 1 << 62
PM_PRESENT = 1 << 63

# /proc/kpageflags bits
KPF_ANON = 12
KPF_COMPOUND_HEAD = 15
KPF_COMPOUND_TAIL = 16
KPF_HUGE = 17
KPF_NOPAGE = 20
KPF_KSM = 21
KPF_THP = 22
KPF_ZERO_PAGE = 24

# PAGEMAP_SCAN: _IOWR('f', 16, struct pm_scan_arg), a 96-byte argument of 12 u64:
# size, flags, start, end, walk_end, vec, vec_len, max_pages,
# category_inverted, category_mask, category_anyof_mask, return_mask.
# The vector holds struct page_region {u64 start, end, categories}.
PAGEMAP_SCAN = 0xC0606610
_PM_SCAN_ARG = struct.Struct("=12Q")
PAGE_IS_PRESENT = 1 << 3
PAGE_IS_SWAPPED = 1 << 4
PAGE_IS_PFNZERO = 1 << 5
PAGE_IS_HUGE = 1 << 6

_KPF_WINDOW = 512  # PFNs per kpageflags/kpagecount window
_PAGEMAP_CHUNK = 1 << 15  # pagemap entries per preadv buffer
_SCAN_VEC = 256  # page_region entries per PAGEMAP_SCAN call
_MAX_WINDOWS = 4096  # kpageflags windows held in memory at once (16 MiB)
_MAX_EXTEND = 64  # extra kpageflags windows read to find far heads/ends


def pmd_nr() -> int:
    """Base pages per PMD on this machine (``hpage_pmd_size``; 2 MiB if unreadable)."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size") as f:
            return int(f.read()) // PAGE_SIZE
    except (OSError, ValueError):
        return (2 << 20) // PAGE_SIZE


# ---------------------------------------------------------------- /proc access


def _proc_open(pid: int, name: str, what: str) -> int:
    path = f"/proc/{pid}/{name}"
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessGone(pid) from None
    except PermissionError:
        raise HostUnavailable(f"cannot open {path}: {what} needs root or ptrace access to "
                              f"process {pid}") from None


def comm(pid: int) -> str:
    """The process's ``comm`` ('' if it cannot be read for another reason than exit).

    Raises
    ------
    ProcessGone
        The process does not exist (any more).
    """
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessGone(pid) from None
    except OSError:
        return ""


def _proc_text(pid: int, name: str) -> str:
    fd = _proc_open(pid, name, f"reading {name}")
    try:
        chunks = []
        while True:
            try:
                b = os.read(fd, 1 << 20)
            except ProcessLookupError:
                raise ProcessGone(pid) from None
            if not b:
                break
            chunks.append(b)
    finally:
        os.close(fd)
    if not os.path.exists(f"/proc/{pid}"):
        raise ProcessGone(pid)
    return b"".join(chunks).decode(errors="replace")


def _preadv_u64(fd: int, bufs: list[np.ndarray], offset: int) -> int:
    """Fill ``bufs`` (uint64 arrays) from ``offset``; returns the number of bytes read."""
    views = [memoryview(b).cast("B") for b in bufs]
    total = sum(len(v) for v in views)
    done = 0
    while done < total:
        # skip the buffers already complete, slice the partial one
        rest, skip = [], done
        for v in views:
            if skip >= len(v):
                skip -= len(v)
                continue
            rest.append(v[skip:])
            skip = 0
        n = os.preadv(fd, rest, offset + done)
        if n <= 0:
            break
        done += n
    return done


# ---------------------------------------------------------------- VMAs

_MAPS_RE = re.compile(
    r"^([0-9a-f]+)-([0-9a-f]+)\s+(\S{4})\s+([0-9a-f]+)\s+(\S+)\s+(\d+)\s*(.*)$")


@dataclass
class Vma:
    """One mapping of ``/proc/PID/smaps``.

    Attributes
    ----------
    start, end : int
        Byte addresses, ``end`` exclusive.
    perms : str
        ``"rw-p"`` etc.
    offset, dev, inode, path
        The rest of the header line (``path`` may be ``""``, ``[heap]``, ...).
    fields : dict of str to int
        The ``Name: N kB`` lines, in kB (``Anonymous``, ``AnonHugePages``, ...)
        and plain numbers (``THPeligible``).
    vmflags : tuple of str
        The ``VmFlags`` two-letter codes (``hg`` = MADV_HUGEPAGE, ``nh`` =
        MADV_NOHUGEPAGE).
    """

    start: int
    end: int
    perms: str
    offset: int
    dev: str
    inode: int
    path: str
    fields: dict[str, int] = field(default_factory=dict)
    vmflags: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def hg(self) -> bool:
        """``MADV_HUGEPAGE`` was applied."""
        return "hg" in self.vmflags

    @property
    def nh(self) -> bool:
        """``MADV_NOHUGEPAGE`` was applied."""
        return "nh" in self.vmflags

    @property
    def anonymous(self) -> int:
        """smaps ``Anonymous`` in bytes."""
        return self.fields.get("Anonymous", 0) * 1024

    @property
    def anon_huge_pages(self) -> int:
        """smaps ``AnonHugePages`` in bytes (PMD-mapped anonymous THP only)."""
        return self.fields.get("AnonHugePages", 0) * 1024

    @property
    def is_anon_mapping(self) -> bool:
        """No backing file (``[heap]``, ``[stack]``, ``[anon:...]`` or unnamed)."""
        return self.inode == 0 and not self.path.startswith("/")


def _parse_maps_line(line: str) -> Vma | None:
    m = _MAPS_RE.match(line)
    if not m:
        return None
    return Vma(int(m[1], 16), int(m[2], 16), m[3], int(m[4], 16), m[5], int(m[6]), m[7])


def vmas(pid: int) -> list[Vma]:
    """Parse ``/proc/PID/smaps``.

    Raises
    ------
    ProcessGone
        The process does not exist (any more).
    HostUnavailable
        No permission to read its smaps.
    """
    out: list[Vma] = []
    cur: Vma | None = None
    for line in _proc_text(pid, "smaps").splitlines():
        v = _parse_maps_line(line)
        if v is not None:
            cur = v
            out.append(v)
            continue
        if cur is None:
            continue
        name, _, rest = line.partition(":")
        rest = rest.strip()
        if name == "VmFlags":
            cur.vmflags = tuple(rest.split())
        elif rest:
            num = rest.split()[0]
            if num.isdigit():
                cur.fields[name] = int(num)
    return out


def _vma_ranges(pid: int, with_path: bool = False) -> list:
    """``(start, end[, path])`` of each line of ``/proc/PID/maps`` (cheaper than smaps)."""
    out: list = []
    for line in _proc_text(pid, "maps").splitlines():
        v = _parse_maps_line(line)
        if v is not None:
            out.append((v.start, v.end, v.path) if with_path else (v.start, v.end))
    return out


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (a zombie has no memory to read)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rpartition(")")[2].split()[:1]
    return bool(state) and state[0] not in ("Z", "X", "x")


# ---------------------------------------------------------------- PAGEMAP_SCAN


def pmd_mapped_ranges(fd: int, start: int, end: int) -> list[tuple[int, int, int]]:
    """``(start, end, categories)`` byte ranges the kernel maps with a huge (PMD) entry.

    ``fd`` is an open ``/proc/PID/pagemap``.  Uses the ``PAGEMAP_SCAN`` ioctl
    with ``category_anyof_mask = return_mask = PAGE_IS_HUGE``.  ``categories``
    is that mask (add ``PAGE_IS_PFNZERO`` etc. by calling the ioctl yourself).

    Raises
    ------
    OSError
        ``ENOTTY``/``EINVAL`` where the kernel has no ``PAGEMAP_SCAN``.
    """
    vec = (ctypes.c_uint64 * (3 * _SCAN_VEC))()
    out: list[tuple[int, int, int]] = []
    cur = start
    while cur < end:
        arg = bytearray(_PM_SCAN_ARG.pack(
            _PM_SCAN_ARG.size, 0, cur, end, 0, ctypes.addressof(vec), _SCAN_VEC, 0,
            0, 0, PAGE_IS_HUGE, PAGE_IS_HUGE))
        n = fcntl.ioctl(fd, PAGEMAP_SCAN, arg, True)
        for i in range(n):
            out.append((int(vec[3 * i]), int(vec[3 * i + 1]), int(vec[3 * i + 2])))
        walk_end = _PM_SCAN_ARG.unpack(arg)[4]
        if walk_end <= cur:
            break
        cur = walk_end
    # the kernel splits long regions at the vector's end; merge touching ones
    merged: list[tuple[int, int, int]] = []
    for s, e, c in out:
        if merged and merged[-1][1] == s and merged[-1][2] == c:
            merged[-1] = (merged[-1][0], e, c)
        else:
            merged.append((s, e, c))
    return merged


# ---------------------------------------------------------------- per-page info


@dataclass
class PageInfo:
    """Per-page arrays for ``[start, end)`` of one process (index ``i`` = ``start + i*PAGE_SIZE``).

    Attributes
    ----------
    pid, start, end : int
        Process and byte range (page aligned).
    entry : ndarray of uint64
        The raw pagemap entries.
    present, swap, exclusive, uffd_wp, file, soft_dirty, guard : ndarray of bool
        pagemap bits 63, 62, 56, 57, 61, 55, 58.
    pfn : ndarray of int64
        PFN of present pages (0 when not root or not present).
    kflags, kcount : ndarray
        ``/proc/kpageflags`` and ``/proc/kpagecount`` of present pages (0 otherwise
        or when they could not be read).
    head : ndarray of int64
        PFN of the page's folio head (-1 when unknown / not present).
    order : ndarray of int8
        Folio order (-1 when unknown / not present).
    anon, zero, thp : ndarray of bool
        kpageflags ANON, ZERO_PAGE, THP.
    pmd_mapped : ndarray of bool
        Mapped by a PMD (huge) entry.
    folio_info : bool
        Whether kpageflags could be read (root).
    pmd_source : str
        ``"PAGEMAP_SCAN"``, ``"smaps"`` (fallback guess) or ``"none"``.
    """

    pid: int
    start: int
    end: int
    entry: np.ndarray
    present: np.ndarray
    swap: np.ndarray
    exclusive: np.ndarray
    uffd_wp: np.ndarray
    file: np.ndarray
    soft_dirty: np.ndarray
    guard: np.ndarray
    pfn: np.ndarray
    kflags: np.ndarray
    kcount: np.ndarray
    head: np.ndarray
    order: np.ndarray
    anon: np.ndarray
    zero: np.ndarray
    thp: np.ndarray
    pmd_mapped: np.ndarray
    folio_info: bool
    pmd_source: str

    def __len__(self) -> int:
        return int(self.entry.size)


def _read_kpage_windows(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """kpageflags and kpagecount of the 512-PFN windows ``blocks`` (sorted, unique)."""
    nb = blocks.size
    flags = np.zeros((nb, _KPF_WINDOW), dtype=np.uint64)
    counts = np.zeros((nb, _KPF_WINDOW), dtype=np.uint64)
    if nb == 0:
        return flags, counts
    # runs of consecutive windows are read with one preadv each
    breaks = np.flatnonzero(np.diff(blocks) != 1) + 1
    bounds = np.concatenate(([0], breaks, [nb]))
    for name, arr in (("/proc/kpageflags", flags), ("/proc/kpagecount", counts)):
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
        except PermissionError:
            raise HostUnavailable(f"cannot open {name}: folio sizes need root") from None
        except FileNotFoundError:
            raise HostUnavailable(f"{name} is missing (kernel without CONFIG_PROC_PAGE_MONITOR)"
                                  ) from None
        try:
            for a, b in itertools.pairwise(bounds.tolist()):
                bufs = [arr[i] for i in range(a, b)]
                _preadv_u64(fd, bufs, int(blocks[a]) * _KPF_WINDOW * 8)
        finally:
            os.close(fd)
    return flags, counts


def _folios(pfns: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """kpageflags, kpagecount, folio head PFN and folio order of each PFN (-1: unknown).

    The 512-PFN windows holding the PFNs are read; consecutive windows form one
    segment.  A page's head is the last non-tail page at or before it; the folio
    ends at the next non-tail page.  Anonymous folios are naturally aligned and
    at most PMD-sized, so they never leave their window; for anything that
    might (a tail at a segment's start, a hugetlb or misaligned folio at its
    end) the neighbouring window is read too.
    """
    if pfns.size == 0:
        z = np.zeros(0, dtype=np.int64)
        return z.astype(np.uint64), z.astype(np.uint64), z, z.astype(np.int8)
    tail_bit = np.uint64(1 << KPF_COMPOUND_TAIL)
    head_bit = np.uint64(1 << KPF_COMPOUND_HEAD)
    huge_bit = np.uint64(1 << KPF_HUGE)
    blocks = np.unique(pfns // _KPF_WINDOW)
    for _ in range(_MAX_EXTEND):
        flags2, counts2 = _read_kpage_windows(blocks)
        flat_pfn = (blocks[:, None] * _KPF_WINDOW + np.arange(_KPF_WINDOW)).ravel()
        f = flags2.ravel()
        n = f.size
        pos = np.arange(n)
        seg_start = np.ones(n, dtype=bool)
        seg_start[1:] = flat_pfn[1:] != flat_pfn[:-1] + 1
        nontail = (f & tail_bit) == 0
        seg_first = np.maximum.accumulate(np.where(seg_start, pos, 0))
        last_nontail = np.maximum.accumulate(np.where(nontail, pos, -1))
        boundary = np.append(nontail | seg_start, True)  # position n closes everything
        nxt = np.minimum.accumulate(np.where(boundary, np.arange(n + 1), n)[::-1])[::-1]
        p_pos = np.searchsorted(blocks, pfns // _KPF_WINDOW) * _KPF_WINDOW + pfns % _KPF_WINDOW
        hp = last_nontail[p_pos]
        head_found = hp >= seg_first[p_pos]
        hp = np.where(head_found, hp, p_pos)
        end = nxt[hp + 1]  # first boundary after the head
        nr = end - hp
        at_seg_end = (end >= n) | seg_start[np.minimum(end, n - 1)]
        hflags = f[hp]
        odd = ((hflags & huge_bit) != 0) | ((nr & (nr - 1)) != 0) | (flat_pfn[hp] % nr != 0)
        end_open = head_found & at_seg_end & ((hflags & head_bit) != 0) & odd
        need = {int(flat_pfn[seg_first[p_pos[i]]]) // _KPF_WINDOW - 1
                for i in np.flatnonzero(~head_found).tolist()}
        need |= {int(flat_pfn[end[i] - 1]) // _KPF_WINDOW + 1
                 for i in np.flatnonzero(end_open).tolist()}
        need = {b for b in need if b >= 0} - set(blocks.tolist())
        if not need:
            break
        blocks = np.unique(np.concatenate((blocks, np.array(sorted(need), dtype=blocks.dtype))))
    kflags = f[p_pos]
    kcount = counts2.ravel()[p_pos]
    is_tail = (kflags & tail_bit) != 0
    # a tail whose "head" has no HEAD flag: the page changed while we read it
    ok = head_found & ~end_open & (~is_tail | ((hflags & head_bit) != 0))
    head_pfn = np.where(ok, flat_pfn[hp], -1).astype(np.int64)
    order = np.full(pfns.size, -1, dtype=np.int8)
    order[ok] = np.floor(np.log2(np.maximum(nr[ok], 1))).astype(np.int8)
    return kflags, kcount, head_pfn, order


def _smaps_pmd_guess(pid: int, start: int, info_order: np.ndarray, head: np.ndarray,
                     pfn: np.ndarray, anon: np.ndarray, nr: int) -> np.ndarray:
    """Fallback without PAGEMAP_SCAN: see the module docstring."""
    out = np.zeros(info_order.size, dtype=bool)
    span = nr * PAGE_SIZE
    for v in vmas(pid):
        budget = v.anon_huge_pages // span
        if budget <= 0:
            continue
        a = max(v.start, start)
        a = -(-a // span) * span
        while a + span <= v.end and budget > 0:
            i = (a - start) // PAGE_SIZE
            if i < 0 or i + nr > out.size:
                break
            o = info_order[i : i + nr]
            h = head[i : i + nr]
            if ((o == (nr.bit_length() - 1)).all() and (h == h[0]).all() and anon[i : i + nr].all()
                    and (pfn[i : i + nr] == h[0] + np.arange(nr)).all()):
                out[i : i + nr] = True
                budget -= 1
            a += span
    return out


def read_range(pid: int, start: int, end: int, *, folios: bool = True,
               pmd: bool = True) -> PageInfo:
    """Per-page pagemap/kpageflags information for ``[start, end)`` of process ``pid``.

    Parameters
    ----------
    pid : int
        The process.
    start, end : int
        Byte addresses; rounded out to whole pages.
    folios : bool
        Read kpageflags/kpagecount for folio heads and orders (root only;
        silently skipped when not root — ``folio_info`` is then False).
    pmd : bool
        Find PMD-mapped pages (``PAGEMAP_SCAN``, else the smaps fallback).

    Raises
    ------
    ProcessGone
        The process does not exist or exited while being read.
    HostUnavailable
        No permission to read its pagemap.
    """
    start = start // PAGE_SIZE * PAGE_SIZE
    end = -(-end // PAGE_SIZE) * PAGE_SIZE
    if end < start:
        raise ValueError(f"end {end:#x} is before start {start:#x}")
    n = (end - start) // PAGE_SIZE
    entry = np.zeros(n, dtype=np.uint64)
    fd = _proc_open(pid, "pagemap", "reading pagemap")
    try:
        for a in range(0, n, _PAGEMAP_CHUNK):
            buf = entry[a : a + _PAGEMAP_CHUNK]
            try:
                got = _preadv_u64(fd, [buf], (start // PAGE_SIZE + a) * 8)
            except ProcessLookupError:
                raise ProcessGone(pid) from None
            except OSError as e:
                if e.errno == errno.ESRCH:
                    raise ProcessGone(pid) from None
                if e.errno in (errno.EPERM, errno.EACCES):
                    raise HostUnavailable(f"reading /proc/{pid}/pagemap: {e.strerror} "
                                          "(needs root or ptrace access)") from None
                raise
            if got < buf.nbytes:
                # pagemap ends at the top of the user address space ([vsyscall] lies
                # above it); a short read of a live process means "nothing there"
                if not _alive(pid):
                    raise ProcessGone(pid, "pagemap read ended early: the process exited")
                break
        pmd_source = "none"
        pmd_mapped = np.zeros(n, dtype=bool)
        if pmd and n:
            try:
                for va, vb, path in _vma_ranges(pid, with_path=True):
                    a, b = max(va, start), min(vb, end)
                    if a >= b or path == "[vsyscall]":
                        continue
                    for s, e, _c in pmd_mapped_ranges(fd, a, b):
                        pmd_mapped[(max(s, start) - start) // PAGE_SIZE
                                   : (min(e, end) - start) // PAGE_SIZE] = True
                pmd_source = "PAGEMAP_SCAN"
            except OSError as e:
                if e.errno == errno.ESRCH:
                    raise ProcessGone(pid) from None
                if e.errno not in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                pmd_source = "smaps"
    finally:
        os.close(fd)

    def bit(mask: int) -> np.ndarray:
        return (entry & np.uint64(mask)) != 0

    present = bit(PM_PRESENT)
    pfn = np.where(present, (entry & np.uint64(PM_PFN_MASK)).astype(np.int64), 0)
    kflags = np.zeros(n, dtype=np.uint64)
    kcount = np.zeros(n, dtype=np.uint64)
    head = np.full(n, -1, dtype=np.int64)
    order = np.full(n, -1, dtype=np.int8)
    folio_info = False
    idx = np.flatnonzero(present & (pfn != 0))
    if folios and os.geteuid() == 0 and (idx.size or not present.any()):
        # bounded memory: at most _MAX_WINDOWS kpageflags windows per pass
        idx = idx[np.argsort(pfn[idx], kind="stable")]
        win = pfn[idx] // _KPF_WINDOW
        new_win = np.flatnonzero(np.diff(win) != 0) + 1
        cuts = new_win[_MAX_WINDOWS - 1 :: _MAX_WINDOWS]
        for part in np.split(idx, cuts):
            kf, kc, hd, od = _folios(pfn[part])
            kflags[part], kcount[part], head[part], order[part] = kf, kc, hd, od
        folio_info = True

    def kbit(b: int) -> np.ndarray:
        return (kflags & np.uint64(1 << b)) != 0

    anon = kbit(KPF_ANON)
    if pmd_source == "smaps":
        pmd_mapped = _smaps_pmd_guess(pid, start, order, head, pfn, anon, pmd_nr())
    return PageInfo(
        pid=pid, start=start, end=end, entry=entry, present=present, swap=bit(PM_SWAP),
        exclusive=bit(PM_MMAP_EXCLUSIVE), uffd_wp=bit(PM_UFFD_WP), file=bit(PM_FILE),
        soft_dirty=bit(PM_SOFT_DIRTY), guard=bit(PM_GUARD_REGION), pfn=pfn,
        kflags=kflags, kcount=kcount, head=head, order=order, anon=anon,
        zero=kbit(KPF_ZERO_PAGE), thp=kbit(KPF_THP), pmd_mapped=pmd_mapped,
        folio_info=folio_info, pmd_source=pmd_source)


# ---------------------------------------------------------------- layout


def _kpagecount(pfns: np.ndarray) -> np.ndarray:
    """``/proc/kpagecount`` for arbitrary pfns (one pread per run of pfns)."""
    out = np.zeros(pfns.size, dtype=np.uint64)
    if not pfns.size:
        return out
    fd = os.open("/proc/kpagecount", os.O_RDONLY)
    try:
        order = np.argsort(pfns, kind="stable")
        sp = pfns[order]
        cuts = np.flatnonzero(np.diff(sp) != 1) + 1
        pos = 0
        for run in np.split(sp, cuts):
            buf = os.pread(fd, 8 * run.size, int(run[0]) * 8)
            vals = np.frombuffer(buf, dtype=np.uint64)
            out[order[pos : pos + vals.size]] = vals
            pos += run.size
    finally:
        os.close(fd)
    return out


def folio_shared(info: PageInfo, mapped: np.ndarray) -> np.ndarray:
    """Per page: is its folio maybe mapped by another process?

    khugepaged's view (``folio_maybe_mapped_shared``), as in the model: an
    order-0 page is shared when mapped more than once; a large folio when its
    pages' mapcounts (``/proc/kpagecount``, which includes PMD mappings) add up
    to more than this process's own mappings of it in the range read.
    """
    out = np.zeros(mapped.shape, dtype=bool)
    idx = np.flatnonzero(mapped & (info.head >= 0))
    if not idx.size:
        return out
    small = info.order[idx] <= 0
    out[idx[small]] = info.kcount[idx[small]] > 1
    large = idx[~small]
    if large.size:
        heads, inv, own = np.unique(info.head[large], return_inverse=True, return_counts=True)
        orders = np.array([int(info.order[large][np.flatnonzero(inv == k)[0]])
                           for k in range(heads.size)])
        pfns = np.concatenate([np.arange(h, h + (1 << o), dtype=np.int64)
                               for h, o in zip(heads.tolist(), orders.tolist(), strict=True)])
        counts = _kpagecount(pfns)
        sizes = np.left_shift(1, orders)
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        totals = np.add.reduceat(counts.astype(np.int64), starts)
        out[large] = (totals > own)[inv]
    return out


_CHARS = np.frombuffer(ORDER_CHARS.encode(), dtype=np.uint8)


def host_layout(pid: int, start: int, end: int) -> Layout:
    """The layout of ``[start, end)`` of a live process, in the model's format.

    Same windows, picture alphabet, shared string and folio lists as
    :func:`thpsim.layout.layout_of`: ``.`` none, ``z`` 4K zero page, ``Z``
    PMD-mapped huge zero page, ``s`` swap or another non-present entry (guard
    marker), ``0``-``9``/``a``-``d`` PTE-mapped folio of that order, ``H``
    PMD-mapped anonymous THP, ``f`` a non-anonymous page, ``x`` outside the range
    or outside any VMA (``?`` if the folio could not be resolved because the page
    changed while being read).  ``S`` marks pages whose folio is maybe mapped
    by another process (khugepaged's view, see :func:`folio_shared`).  Folio
    entries ``[first_index, order, nr_mapped_in_this_pmd, pmd_mapped]`` are listed
    for anonymous folios only, like the model's.

    Raises
    ------
    HostUnavailable
        Not root (PFNs and ``/proc/kpageflags`` are root-only) or no access.
    ProcessGone
        The process exited.
    """
    if os.geteuid() != 0:
        raise HostUnavailable("host_layout needs root: PFNs in pagemap and /proc/kpageflags "
                              "are root-only")
    nr = pmd_nr()
    s = start // PAGE_SIZE
    e = -(-end // PAGE_SIZE)
    if e <= s:
        return Layout([])
    w0 = s // nr
    w1 = (e - 1) // nr + 1
    info = read_range(pid, w0 * nr * PAGE_SIZE, w1 * nr * PAGE_SIZE)
    total = (w1 - w0) * nr
    vpn = w0 * nr + np.arange(total)
    in_vma = np.zeros(total, dtype=bool)
    for a, b in _vma_ranges(pid):
        if b // PAGE_SIZE <= vpn[0] or a // PAGE_SIZE > vpn[-1]:
            continue
        in_vma |= (vpn >= a // PAGE_SIZE) & (vpn < b // PAGE_SIZE)
    inside_all = in_vma & (vpn >= s) & (vpn < e)

    present = info.present
    zero = present & info.zero
    pmd = present & info.pmd_mapped
    nonanon = present & ~zero & (info.file | ~info.anon)
    anon_pte = present & ~zero & ~nonanon & ~pmd
    pic = np.full(total, ord("."), dtype=np.uint8)
    pic[info.swap | (~present & info.guard)] = ord("s")
    pic[zero & ~pmd] = ord("z")
    pic[zero & pmd] = ord("Z")
    pic[pmd & ~zero & ~nonanon] = ord("H")
    pic[nonanon] = ord("f")
    known = anon_pte & (info.order >= 0) & (info.order < len(ORDER_CHARS))
    pic[known] = _CHARS[info.order[known]]
    pic[anon_pte & ~known] = ord("?")
    shared = np.full(total, ord("-"), dtype=np.uint8)
    shared[folio_shared(info, anon_pte | (pmd & ~zero & ~nonanon))] = ord("S")
    pic[~inside_all] = ord("x")
    shared[~inside_all] = ord("-")

    out: list[PMDLayout] = []
    for w in range(w1 - w0):
        sl = slice(w * nr, (w + 1) * nr)
        inside = inside_all[sl]
        folios: list[list[int]] = []
        folio_pages = (anon_pte | (pmd & ~zero & ~nonanon))[sl]
        idx = np.flatnonzero(folio_pages & (info.head[sl] >= 0))
        if idx.size:
            heads = info.head[sl][idx]
            _, first, cnt = np.unique(heads, return_index=True, return_counts=True)
            for fi, c in sorted(zip(first.tolist(), cnt.tolist(), strict=True),
                                key=lambda t: idx[t[0]]):
                i = int(idx[fi])
                folios.append([i, int(info.order[sl][i]), int(c), int(bool(pmd[sl][i]))])
        folios = [fl for fl in folios if inside[fl[0]]]
        out.append(PMDLayout((w0 + w) * nr * PAGE_SIZE, pic[sl].tobytes().decode(),
                             shared[sl].tobytes().decode(), folios))
    return Layout(out)
