"""Capture a live process's anonymous memory as a :class:`Snapshot` (read-only).

Everything is read through :mod:`thpsim.host.pagemap` (smaps for the VMAs,
pagemap + kpageflags/kpagecount + ``PAGEMAP_SCAN`` for the pages) and
:func:`thpsim.host.thp_sysfs.snapshot` for the THP knobs; nothing is written and the
target is not stopped, so a target that runs meanwhile can change under the reader
(each chunk is consistent only with itself).

Which VMAs: private mappings without a backing file (``[heap]``, ``[stack]``,
``[anon:...]``, unnamed), including ``PROT_NONE`` reservations; not the kernel's
special mappings (``[vdso]``, ``[vvar]``, ...) and not file or shared mappings.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np

from thpsim.host import pagemap as pm
from thpsim.host.errors import HostUnavailable
from thpsim.snapshot.core import (
    HUGE_ZERO,
    OTHER,
    PRESENT,
    SWAP,
    ZERO,
    Snapshot,
    SnapshotVma,
)

__all__ = ["CHUNK_PAGES", "capture", "captured_vmas"]

CHUNK_PAGES = 1 << 16  # pages per read_range call (bounded memory, progress granularity)
_SPECIAL = frozenset({"[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]", "[uprobes]"})

ProgressFn = Callable[[int, int], None]


def captured_vmas(vmas: list[pm.Vma]) -> list[pm.Vma]:
    """The VMAs a snapshot holds: private anonymous mappings (see the module docstring)."""
    return [v for v in vmas
            if v.is_anon_mapping and v.perms[3:4] == "p" and v.path not in _SPECIAL]


def _states(info: pm.PageInfo) -> dict[str, np.ndarray]:
    """The snapshot columns for one :class:`~thpsim.host.pagemap.PageInfo` chunk."""
    n = len(info)
    present = info.present
    zero = present & info.zero
    anon = present & ~zero & info.anon & ~info.file
    state = np.zeros(n, np.uint8)
    state[info.swap & ~present] = SWAP
    state[present & ~zero & ~anon] = OTHER
    state[zero & ~info.pmd_mapped] = ZERO
    state[zero & info.pmd_mapped] = HUGE_ZERO
    state[anon] = PRESENT
    fi = np.where(anon, info.pfn - info.head, 0)
    order = np.where(anon, info.order, -1).astype(np.int8)
    # a folio that changed while it was read (order unknown, or the page no longer
    # inside it): recorded as order 0 so the snapshot stays consistent; counted in meta
    nr = np.left_shift(1, np.clip(order, 0, 20).astype(np.int64))
    bad = anon & ((order < 0) | (info.head < 0) | (fi < 0) | (fi >= nr))
    order[bad] = 0
    fi[bad] = 0
    return {
        "state": state,
        "order": order,
        "folio_index": fi.astype(np.int32),
        "pmd_mapped": info.pmd_mapped & (anon | zero),
        "mapcount": np.where(anon, np.minimum(info.kcount, 65535), 0).astype(np.uint16),
        "exclusive": info.exclusive & anon,
        "unresolved": bad,
    }


def _status_field(pid: int, name: str) -> str:
    """A field of ``/proc/PID/status`` (``""`` if absent), e.g. ``THP_enabled`` (0 after
    ``prctl(PR_SET_THP_DISABLE)``)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, val = line.partition(":")
                if key == name:
                    return val.strip()
    except OSError:
        pass
    return ""


def capture(pid: int, progress: ProgressFn | None = None) -> Snapshot:
    """Snapshot the anonymous memory of process ``pid`` (read-only, target keeps running).

    Parameters
    ----------
    pid : int
        The process.
    progress : callable, optional
        Called as ``progress(pages_done, pages_total)`` after each chunk of at most
        :data:`CHUNK_PAGES` pages.

    Returns
    -------
    Snapshot
        With the host's THP knobs (``settings``), ``uname -r`` (``kernel``) and in
        ``meta``: ``pmd_source`` (how PMD mappings were found), ``unresolved`` (pages
        whose folio changed while being read, stored as order 0), ``thp_enabled``
        (``/proc/PID/status``: 0 when the process disabled THP with ``prctl``),
        ``cmdline`` and ``capture_seconds``.

    Raises
    ------
    HostUnavailable
        Not root: PFNs and ``/proc/kpageflags`` (folio sizes) are root-only.
    ProcessGone
        The process does not exist or exited during the capture.
    """
    from thpsim.host import thp_sysfs

    t0 = time.time()
    comm = pm.comm(pid)  # first: a missing process is reported as such, root or not
    if os.geteuid() != 0:
        raise HostUnavailable("snapshot capture needs root: folio information (PFNs in "
                              "pagemap, /proc/kpageflags, /proc/kpagecount) is root-only")
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmdline = ""
    thp_enabled = _status_field(pid, "THP_enabled")
    sel = captured_vmas(pm.vmas(pid))
    page = pm.PAGE_SIZE
    total = sum(v.size // page for v in sel)
    cols = {c: np.zeros(total, Snapshot.DTYPES[c]) for c in Snapshot.COLUMNS}
    cols["order"][:] = -1
    out_vmas: list[SnapshotVma] = []
    pos = 0
    unresolved = 0
    sources: set[str] = set()
    for v in sel:
        has_anon = False
        for a in range(v.start, v.end, CHUNK_PAGES * page):
            b = min(v.end, a + CHUNK_PAGES * page)
            info = pm.read_range(pid, a, b)
            if not info.folio_info and info.present.any():
                raise HostUnavailable("snapshot capture needs root: kpageflags could not be read")
            sources.add(info.pmd_source)
            st = _states(info)
            m = len(info)
            for c in Snapshot.COLUMNS:
                cols[c][pos : pos + m] = st[c]
            unresolved += int(st["unresolved"].sum())
            has_anon |= bool(((st["state"] == PRESENT) | (st["state"] == SWAP)).any())
            pos += m
            if progress is not None:
                progress(pos, total)
        # anon_vma exists when an anonymous page or swap entry is there; otherwise it
        # cannot be told from /proc (zero-page read faults do not allocate one)
        out_vmas.append(SnapshotVma(v.start, v.end, " ".join(v.vmflags),
                                    True if has_anon else None, v.path))
    if progress is not None and total == 0:
        progress(0, 0)
    sources.discard("none")
    snap = Snapshot(
        vmas=out_vmas, **cols, page_size=page, kernel=os.uname().release,
        settings=thp_sysfs.snapshot(), pid=pid, comm=comm, time=t0,
        meta={"pmd_source": ",".join(sorted(sources)) or "none",
              "unresolved": str(unresolved), "thp_enabled": thp_enabled,
              "cmdline": cmdline[:512],
              "capture_seconds": f"{time.time() - t0:.3f}"})
    snap.validate(where=f"capture of process {pid}")
    return snap
