"""Event counters: ``/proc/vmstat`` ``thp_*`` events and per-size ``stats/*``.

Twin of ``count_vm_event()`` (mm/vmstat.c) and ``count_mthp_stat()``
(mm/huge_memory.c).  Names are the kernel's file names so that a model delta
can be compared with a real one key by key.
"""

from __future__ import annotations

from collections import defaultdict

from thpsim.mm.geometry import GEOM_4K, Geometry

__all__ = ["MTHP_STATS", "VMSTAT_EVENTS", "Counters", "counter_delta"]

#: vmstat events the model moves (a subset of /proc/vmstat).
VMSTAT_EVENTS = (
    "thp_fault_alloc",
    "thp_fault_fallback",
    "thp_fault_fallback_charge",
    "thp_collapse_alloc",
    "thp_collapse_alloc_failed",
    "thp_scan_exceed_none_pte",
    "thp_scan_exceed_swap_pte",
    "thp_scan_exceed_share_pte",
    "thp_split_page",
    "thp_split_page_failed",
    "thp_deferred_split_page",
    "thp_underused_split_page",
    "thp_split_pmd",
    "thp_zero_page_alloc",
    "thp_swpout",
    "pswpin",
    "pswpout",
)

#: per-size stats files (hugepages-<N>kB/stats/).
MTHP_STATS = (
    "anon_fault_alloc",
    "anon_fault_fallback",
    "anon_fault_fallback_charge",
    "collapse_alloc",
    "collapse_alloc_failed",
    "collapse_exceed_none_pte",
    "collapse_exceed_swap_pte",
    "collapse_exceed_shared_pte",
    "split",
    "split_failed",
    "split_deferred",
    "nr_anon",
    "nr_anon_partially_mapped",
    "swpout",
    "swpin",
)


class Counters:
    """System-wide counters.

    Parameters
    ----------
    geometry : Geometry
        Gives the per-size directory names.
    """

    def __init__(self, geometry: Geometry = GEOM_4K) -> None:
        self.geometry = geometry
        self.vmstat: dict[str, int] = defaultdict(int)
        self.mthp: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def count_vm_event(self, name: str, n: int = 1) -> None:
        """``count_vm_event(name)``."""
        self.vmstat[name] += n

    def count_mthp_stat(self, order: int, name: str, n: int = 1) -> None:
        """``count_mthp_stat(order, name)``: one per-size counter."""
        self.mthp[order][name] += n

    def mthp_value(self, order: int, name: str) -> int:
        return self.mthp[order][name] if order in self.mthp else 0

    def snapshot(self) -> dict[str, dict]:
        """Plain-dict copy: ``{"vmstat": {...}, "mthp": {"64kB": {...}}}`` (non-zero only)."""
        vm = {k: v for k, v in self.vmstat.items() if v}
        mthp: dict[str, dict[str, int]] = {}
        for order in sorted(self.mthp):
            vals = {k: v for k, v in self.mthp[order].items() if v}
            if vals:
                mthp[self.geometry.size_name(order)] = vals
        return {"vmstat": vm, "mthp": mthp}


def counter_delta(after: dict[str, dict], before: dict[str, dict]) -> dict[str, dict]:
    """Non-zero differences between two :meth:`Counters.snapshot` results."""
    vm = {
        k: after["vmstat"].get(k, 0) - before["vmstat"].get(k, 0)
        for k in set(after["vmstat"]) | set(before["vmstat"])
    }
    out_vm = {k: v for k, v in sorted(vm.items()) if v}
    out_mthp: dict[str, dict[str, int]] = {}
    for size in set(after["mthp"]) | set(before["mthp"]):
        a, b = after["mthp"].get(size, {}), before["mthp"].get(size, {})
        d = {k: a.get(k, 0) - b.get(k, 0) for k in set(a) | set(b)}
        d = {k: v for k, v in sorted(d.items()) if v}
        if d:
            out_mthp[size] = d
    ordered = dict(sorted(out_mthp.items(), key=lambda kv: int(kv[0][:-2])))
    return {"vmstat": out_vm, "mthp": ordered}
