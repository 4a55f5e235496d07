"""Inspect live processes: thpmaps' counters plus what khugepaged sees.

For every VMA of every inspected process (read-only: ``/proc`` and ``/sys``):

* the thpmaps-compatible counters (:mod:`thpsim.host.thpmaps`), for the
  VMAs thpmaps reports numbers for (some of ``rwx`` and ``Rss > 0``);
* the PTE occupancy as khugepaged classifies it: ``present`` (a mapped page
  other than a zero page), ``none``, ``zero`` (4K or huge zero page),
  ``swap`` (swap or another non-present entry such as a guard marker) — these
  four partition the VMA's pages — and ``shared`` (the present pages whose
  folio is maybe mapped by another process, as ``max_ptes_shared`` counts);
* ``khugepaged_eligible_pmds``: the PMD-aligned ranges inside the VMA that
  khugepaged would scan under the host's current THP settings (see
  :func:`khugepaged_eligible_pmds`);
* optionally the layout pictures of each PMD-aligned window the VMA covers.

Reads are not atomic; a running process may change while it is read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np

from thpsim.host import pagemap as pm
from thpsim.host.errors import HostUnavailable, ProcessGone
from thpsim.host.thpmaps import SMAPS_ADDITIVE, thp_counters
from thpsim.layout import PMDLayout
from thpsim.mm.policies import policy_for_kernel

__all__ = [
    "OCCUPANCY_KEYS",
    "InspectReport",
    "ProcessReport",
    "VmaReport",
    "all_pids",
    "cgroup_pids",
    "host_settings",
    "inspect",
    "inspect_process",
    "khugepaged_eligible_pmds",
    "occupancy",
    "require_inspect",
    "rollup",
    "vm_flags",
]

OCCUPANCY_KEYS = ("present", "none", "zero", "swap", "shared")
THP_DIR = "/sys/kernel/mm/transparent_hugepage"
#: the model policy of the running kernel (6.18: legacy, PMD-only collapse; 7.2: linux-7.2)
HOST_POLICY = policy_for_kernel(os.uname().release) if hasattr(os, "uname") else "legacy"
_CHUNK_PAGES = 1 << 21  # pages of a VMA read at once (~100 MiB of per-page arrays)

# smaps VmFlags mnemonics that make a VMA VM_NO_KHUGEPAGED (VM_SPECIAL or hugetlb)
_NO_KHUGEPAGED = frozenset({"io", "pf", "de", "mm", "ht"})


@dataclass
class VmaReport:
    """One VMA of an inspected process (byte addresses, kB counters, page counts)."""

    start: int
    end: int
    perms: str
    path: str
    flags: str
    counted: bool
    anonymous_kb: int
    file_kb: int
    counters: dict[str, int]
    occupancy: dict[str, int]
    khugepaged_eligible_pmds: int
    pmds: list[PMDLayout] | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "start": self.start, "end": self.end, "perms": self.perms, "path": self.path,
            "flags": self.flags, "anonymous_kb": self.anonymous_kb, "file_kb": self.file_kb,
            "counters": dict(self.counters), "occupancy": dict(self.occupancy),
            "khugepaged_eligible_pmds": self.khugepaged_eligible_pmds,
        }
        if self.pmds is not None:
            d["pmds"] = [{"addr": p.addr, "picture": p.picture, "shared": p.shared}
                         for p in self.pmds]
        return d


@dataclass
class ProcessReport:
    pid: int
    comm: str
    vmas: list[VmaReport] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "comm": self.comm, "vmas": [v.to_json() for v in self.vmas]}


@dataclass
class InspectReport:
    processes: list[ProcessReport]
    rollup: dict[str, Any] | None = None
    khugepaged: dict[str, Any] = field(default_factory=dict)
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"processes": [p.to_json() for p in self.processes]}
        if self.rollup is not None:
            d["rollup"] = self.rollup
        d["khugepaged"] = dict(self.khugepaged)
        d["skipped"] = list(self.skipped)
        return d


# ---------------------------------------------------------------- preconditions


def require_inspect() -> None:
    """Raise :class:`HostUnavailable` (one line) unless pagemap PFNs and kpageflags are readable."""
    if not os.path.isdir("/proc/self"):
        raise HostUnavailable("thpsim inspect needs Linux /proc")
    if os.geteuid() != 0:
        raise HostUnavailable("thpsim inspect needs root: PFNs in /proc/PID/pagemap and "
                              "/proc/kpageflags, /proc/kpagecount are root-only")
    for name in ("/proc/kpageflags", "/proc/kpagecount"):
        if not os.access(name, os.R_OK):
            raise HostUnavailable(f"thpsim inspect cannot read {name} "
                                  "(needs root and CONFIG_PROC_PAGE_MONITOR)")


# ---------------------------------------------------------------- process lists


def all_pids() -> list[int]:
    """Every process id under ``/proc``."""
    return sorted(int(d) for d in os.listdir("/proc") if d.isdigit())


def cgroup_pids(path: str) -> list[int]:
    """Processes of a cgroup (v1 or v2) and its descendants.

    ``path`` is the cgroup directory, absolute or relative to ``/sys/fs/cgroup``.

    Raises
    ------
    ValueError
        If ``path`` is not a cgroup directory.
    """
    root = path
    if not os.path.isfile(os.path.join(root, "cgroup.procs")):
        alt = os.path.join("/sys/fs/cgroup", path.lstrip("/"))
        if not os.path.isfile(os.path.join(alt, "cgroup.procs")):
            raise ValueError(f"--cgroup {path}: not a cgroup directory (no cgroup.procs)")
        root = alt
    pids: set[int] = set()
    for d, _dirs, _files in os.walk(root):
        try:
            with open(os.path.join(d, "cgroup.procs")) as f:
                pids.update(int(x) for x in f.read().split())
        except FileNotFoundError:
            continue  # removed while walking
    return sorted(pids)


def _thp_disabled(pid: int) -> bool:
    """``prctl(PR_SET_THP_DISABLE)`` in effect (``THP_enabled: 0`` in status)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("THP_enabled:"):
                    return line.split()[1:2] == ["0"]
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessGone(pid) from None
    return False


# ---------------------------------------------------------------- khugepaged's rules


def host_settings(thp_dir: str = THP_DIR):
    """The model's :class:`~thpsim.mm.settings.Settings` holding the host's current THP knobs.

    Read-only: the knobs are read from sysfs, never written.  Returns None when
    the kernel has no THP sysfs.
    """
    from thpsim.host.thp_sysfs import snapshot
    from thpsim.mm.geometry import geometry_for
    from thpsim.mm.settings import Settings

    if not os.path.isfile(os.path.join(thp_dir, "enabled")):
        return None
    s = Settings(geometry_for(pm.PAGE_SIZE))
    known = s.as_dict()
    s.apply({k: v for k, v in snapshot(thp_dir).items() if k in known})
    return s


def vm_flags(v: pm.Vma) -> int:
    """The model's VM_* bits for a VMA of smaps (``VmFlags`` and the permissions)."""
    from thpsim.mm import vma as mv

    f = 0
    codes = set(v.vmflags)
    if v.perms[:1] == "r":
        f |= mv.VM_READ
    if v.perms[1:2] == "w":
        f |= mv.VM_WRITE
    for code, bit in (("hg", mv.VM_HUGEPAGE), ("nh", mv.VM_NOHUGEPAGE), ("lo", mv.VM_LOCKED),
                      ("um", mv.VM_UFFD_MISSING), ("uw", mv.VM_UFFD_WP),
                      ("ui", mv.VM_UFFD_MINOR)):
        if code in codes:
            f |= bit
    if codes & _NO_KHUGEPAGED:
        f |= mv.VM_SPECIAL
    return f


def _is_private_anon(v: pm.Vma) -> bool:
    """``vma_is_anonymous`` for what smaps shows: private, no file, no special mapping."""
    if v.perms[3:4] != "p" or v.inode != 0:
        return False
    return v.path in ("", "[heap]", "[stack]") or v.path.startswith("[anon:")


def khugepaged_eligible_pmds(v: pm.Vma, settings, *, thp_disabled: bool = False,
                             policy: str = HOST_POLICY) -> int:
    """PMD-aligned ranges of ``v`` that khugepaged would scan under ``settings``.

    The rule (docs/inspect.md): zero unless the VMA is private anonymous,
    khugepaged runs (``hugepage_enabled`` of ``policy``) and the model's
    ``thp_vma_allowable_orders(TVA_KHUGEPAGED)`` allows the orders khugepaged
    collapses to (the PMD order for ``legacy``, every anon order otherwise)
    for the VMA's flags (``hg``/``nh``, ``VM_NO_KHUGEPAGED``, the process's
    ``PR_SET_THP_DISABLE``) — an ``anon_vma`` is assumed to exist when the VMA
    has anonymous or swapped pages; otherwise the count of PMD-aligned
    ``[a, a + PMD_SIZE)`` inside ``[start, end)``, as khugepaged's scan rounds
    ``vm_start`` up and ``vm_end`` down.
    """
    from thpsim.mm.huge_memory import TVA_KHUGEPAGED, orders_mask, thp_vma_allowable_orders
    from thpsim.mm.mm import THP_DISABLE_COMPLETELY, THP_DISABLE_NONE
    from thpsim.mm.vma import VMA

    if settings is None or not _is_private_anon(v):
        return 0
    if not settings.hugepage_enabled(policy):
        return 0
    g = settings.geometry
    pmd_bytes = g.page_size << g.pmd_order
    first = -(-v.start // pmd_bytes)
    last = v.end // pmd_bytes
    if last <= first:
        return 0
    has_anon_vma = v.fields.get("Anonymous", 0) > 0 or v.fields.get("Swap", 0) > 0
    model_vma = VMA(v.start // g.page_size, v.end // g.page_size, vm_flags(v),
                    anon_vma=1 if has_anon_vma else 0)
    sys_ns = SimpleNamespace(settings=settings, geometry=g, hw_thp_disabled=False)
    mm_ns = SimpleNamespace(thp_disable=THP_DISABLE_COMPLETELY if thp_disabled
                            else THP_DISABLE_NONE)
    orders = 1 << g.pmd_order if policy == "legacy" else orders_mask(g.anon_orders)
    if not thp_vma_allowable_orders(sys_ns, mm_ns, model_vma, TVA_KHUGEPAGED, orders):
        return 0
    return last - first


# ---------------------------------------------------------------- one process


def occupancy(info: pm.PageInfo) -> dict[str, int]:
    """khugepaged's PTE classes over the pages of ``info`` (see the module docstring)."""
    present = info.present
    zero = present & info.zero
    swap = ~present & (info.swap | info.guard)
    mapped = present & ~zero
    shared = pm.folio_shared(info, mapped)
    return {"present": int(mapped.sum()), "none": int((~present & ~swap).sum()),
            "zero": int(zero.sum()), "swap": int(swap.sum()), "shared": int(shared.sum())}


def _counted(v: pm.Vma) -> bool:
    """thpmaps reports numbers for VMAs with some permission and a resident page."""
    return any(c != "-" for c in v.perms[:3]) and v.fields.get("Rss", 0) > 0


def _read_vma(pid: int, v: pm.Vma, counted: bool, cont_orders: tuple[int, ...],
              pmd_order: int) -> tuple[dict[str, int], dict[str, int]]:
    """Occupancy and (if ``counted``) thpmaps counters of one VMA.

    Huge VMAs are read in aligned chunks of :data:`_CHUNK_PAGES` pages so memory stays
    bounded; only the present pages of each chunk are kept for the counters.  (A
    large folio straddling a chunk boundary may then be seen as shared.)
    """
    ps = pm.PAGE_SIZE
    step = _CHUNK_PAGES * ps
    occ = dict.fromkeys(OCCUPANCY_KEYS, 0)
    parts: list[tuple[np.ndarray, ...]] = []
    a = v.start
    while a < v.end:
        b = min(v.end, (a // step + 1) * step)
        info = pm.read_range(pid, a, b, pmd=False)
        for k, n in occupancy(info).items():
            occ[k] += n
        if counted:
            idx = np.flatnonzero(info.present)
            parts.append((info.start // ps + idx, info.pfn[idx], info.kflags[idx],
                          info.order[idx]))
        a = b
    counters: dict[str, int] = {}
    if counted:
        vpn, pfn, kflags, order = (np.concatenate(x) for x in zip(*parts, strict=True))
        counters = thp_counters(
            vpn, pfn, kflags, order, anon_pmd_kb=v.fields.get("AnonHugePages", 0),
            file_pmd_kb=v.fields.get("ShmemPmdMapped", 0) + v.fields.get("FilePmdMapped", 0),
            cont_orders=cont_orders, page_size=ps, pmd_order=pmd_order)
    return occ, counters


def inspect_process(pid: int, *, cont_orders: tuple[int, ...] = (), pmds: bool = False,
                    inc_smaps: bool = False, settings=None,
                    policy: str = HOST_POLICY) -> ProcessReport:
    """Inspect one process (see the module docstring).

    Raises
    ------
    ProcessGone
        The process does not exist or exited while being read.
    HostUnavailable
        No permission to read its ``/proc`` files.
    """
    comm = pm.comm(pid)
    thp_off = _thp_disabled(pid)
    nr = pm.pmd_nr()
    pmd_order = nr.bit_length() - 1
    ps = pm.PAGE_SIZE
    out = ProcessReport(pid, comm)
    for v in pm.vmas(pid):
        npages = v.size // ps
        occ = dict.fromkeys(OCCUPANCY_KEYS, 0)
        occ["none"] = npages
        counted = _counted(v)
        counters: dict[str, int] = {}
        has_pages = v.fields.get("Rss", 0) > 0 or v.fields.get("Swap", 0) > 0
        layout = None
        if has_pages and v.path != "[vsyscall]":
            occ, counters = _read_vma(pid, v, counted, cont_orders, pmd_order)
            if pmds:
                layout = pm.host_layout(pid, v.start, v.end).pmds
        elif pmds:
            layout = []
        if inc_smaps:
            counters = {**{k: v.fields[k] for k in SMAPS_ADDITIVE if k in v.fields}, **counters}
        anon_kb = v.fields.get("Anonymous", 0) if counted else 0
        file_kb = v.fields.get("Rss", 0) - anon_kb if counted else 0
        out.vmas.append(VmaReport(
            start=v.start, end=v.end, perms=v.perms, path=v.path, flags=" ".join(v.vmflags),
            counted=counted, anonymous_kb=anon_kb, file_kb=file_kb, counters=counters,
            occupancy=occ,
            khugepaged_eligible_pmds=khugepaged_eligible_pmds(
                v, settings, thp_disabled=thp_off, policy=policy),
            pmds=layout))
    return out


# ---------------------------------------------------------------- many processes


def rollup(processes: list[ProcessReport]) -> dict[str, Any]:
    """Counters, occupancy and eligible PMDs summed over every VMA (thpmaps' ``--rollup``).

    ``anonymous_kb``/``file_kb`` (the percentage bases) sum the VMAs that have
    counters, like thpmaps.
    """
    counters: dict[str, int] = {}
    occ = dict.fromkeys(OCCUPANCY_KEYS, 0)
    anon = file = eligible = 0
    for p in processes:
        for v in p.vmas:
            for k, val in v.counters.items():
                counters[k] = counters.get(k, 0) + val
            for k in OCCUPANCY_KEYS:
                occ[k] += v.occupancy[k]
            anon += v.anonymous_kb
            file += v.file_kb
            eligible += v.khugepaged_eligible_pmds
    return {"counters": counters, "anonymous_kb": anon, "file_kb": file, "occupancy": occ,
            "khugepaged_eligible_pmds": eligible}


def inspect(pids: list[int] | None = None, *, cgroup: str | None = None,
            cont_orders: tuple[int, ...] = (), pmds: bool = False, inc_smaps: bool = False,
            with_rollup: bool = False) -> InspectReport:
    """Inspect ``pids`` (strict: a vanished one raises), a cgroup, or every process.

    Processes that vanish while a cgroup or the whole system is inspected are
    skipped, as are those without any VMA (kernel threads, zombies); those
    whose ``/proc`` files root may not read are listed in ``skipped``.

    Raises
    ------
    HostUnavailable
        Not root (one line saying what is needed).
    ProcessGone
        A process named in ``pids`` does not exist or exited.
    ValueError
        ``cgroup`` is not a cgroup directory.
    """
    require_inspect()
    settings = host_settings()
    strict = bool(pids)
    if pids:
        todo = list(dict.fromkeys(pids))
    elif cgroup is not None:
        todo = cgroup_pids(cgroup)
    else:
        todo = all_pids()
    procs: list[ProcessReport] = []
    skipped: list[dict[str, Any]] = []
    for pid in todo:
        try:
            rep = inspect_process(pid, cont_orders=cont_orders, pmds=pmds, inc_smaps=inc_smaps,
                                  settings=settings)
        except (ProcessGone, FileNotFoundError, ProcessLookupError):
            if strict:
                if not os.path.exists(f"/proc/{pid}"):
                    raise ProcessGone(pid, "no such process") from None
                raise
            continue
        except HostUnavailable as e:
            # root may still be refused (another user namespace, a kernel lockdown)
            if strict:
                raise
            skipped.append({"pid": pid, "reason": str(e)})
            continue
        if rep.vmas or strict:
            procs.append(rep)
    kh = {"policy": HOST_POLICY,
          "enabled": bool(settings is not None and settings.hugepage_enabled(HOST_POLICY))}
    return InspectReport(procs, rollup(procs) if with_rollup else None, kh, skipped)
