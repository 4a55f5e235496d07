"""The simulated machine: physical memory, swap, settings, counters, processes.

Example
-------
>>> from thpsim import System
>>> sys = System(memory="1G")
>>> p = sys.spawn()
>>> addr = p.mmap(4 << 20)
>>> p.touch(addr, 4 << 20)
>>> print(p.layout(addr, 4 << 20).pictures()[0][:16])
HHHHHHHHHHHHHHHH
"""

from __future__ import annotations

import itertools

import numpy as np

from thpsim.mm.counters import Counters
from thpsim.mm.folio import PG_DEFERRED, PG_PARTIALLY_MAPPED, FolioTable
from thpsim.mm.geometry import geometry_for
from thpsim.mm.khugepaged import Khugepaged
from thpsim.mm.page_alloc import BuddyAllocator, MemCgroup
from thpsim.mm.settings import POLICIES, Settings
from thpsim.mm.swapfile import SwapDevice
from thpsim.units import parse_size

__all__ = ["DEFAULT_POLICY", "System"]

DEFAULT_POLICY = "v11"


class System:
    """One simulated machine.

    Parameters
    ----------
    memory : int or str
        Physical memory, bytes or ``"4G"`` style.
    page_size : int or str
        Base page size: 4K (default), 16K or 64K.
    swap : int or str or None
        Size of a swap device, or None for no swap.
    policy : str
        khugepaged collapse policy: ``"v11"`` (default), ``"linux-7.2"`` or ``"legacy"``.
    nr_nodes : int
        NUMA nodes (the physical range is split evenly).
    memcg_limit : int or str or None
        Limit of the (single) memory cgroup all processes are charged to.
    check : bool
        Run the invariant checker after every process operation (slow; for tests).
    """

    ALLOC_OK = 0
    ALLOC_FAIL = 1
    CHARGE_FAIL = 2

    def __init__(self, memory: int | str = "4G", page_size: int | str = 4096,
                 swap: int | str | None = None, policy: str = DEFAULT_POLICY,
                 nr_nodes: int = 1, memcg_limit: int | str | None = None,
                 check: bool = False) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r} (choose from {', '.join(POLICIES)})")
        self.geometry = g = geometry_for(page_size)
        total = parse_size(memory) // g.page_size
        if total < g.hpage_pmd_nr:
            raise ValueError(f"memory {memory!r} is smaller than one PMD")
        self.policy = policy
        self.settings = Settings(g)
        self.counters = Counters(g)
        self.buddy = BuddyAllocator(total, g.max_page_order, nr_nodes)
        self.folios = FolioTable(total)
        limit = None if memcg_limit is None else parse_size(memcg_limit) // g.page_size
        self.memcg = MemCgroup(limit)
        self.swap = SwapDevice(parse_size(swap) // g.page_size) if swap else None
        self.processes: dict[int, Process] = {}
        #: deferred-split queue (insertion ordered set of head pfns)
        self.deferred: dict[int, None] = {}
        self.hw_thp_disabled = False
        self.check_invariants = check
        self.khugepaged = Khugepaged(self)
        self._token = 0
        self._pids = itertools.count(1)

    # --- content tokens -----------------------------------------------------------
    def next_tokens(self, n: int) -> np.ndarray:
        """``n`` fresh, never-used content tokens (what a write stores)."""
        out = np.arange(self._token + 1, self._token + 1 + n, dtype=np.int64)
        self._token += n
        return out

    # --- processes --------------------------------------------------------------------
    def spawn(self, name: str = "main") -> Process:
        """Create a process with an empty address space."""
        from thpsim.mm.mm import MM

        pid = next(self._pids)
        proc = Process(self, MM(pid, name, self.geometry))
        self.processes[pid] = proc
        return proc

    def process(self, name_or_pid: str | int) -> Process:
        for p in self.processes.values():
            if p.pid == name_or_pid or p.name == name_or_pid:
                return p
        raise KeyError(f"no process {name_or_pid!r}")

    # --- folio allocation -------------------------------------------------------------
    def alloc_folio(self, order: int, vpn: int, node: int | None = None) -> tuple[int, int]:
        """Allocate and charge an anon folio; returns ``(head, status)``.

        ``status`` is :attr:`ALLOC_OK`, :attr:`ALLOC_FAIL` (buddy) or
        :attr:`CHARGE_FAIL` (memcg); ``head`` is -1 on failure.
        """
        head = self.buddy.alloc(order, node)
        if head < 0:
            return -1, self.ALLOC_FAIL
        if not self.memcg.try_charge_order(order):
            self.buddy.free(head, order)
            return -1, self.CHARGE_FAIL
        self.folios.init_folio(head, order, self.buddy.node_of(head), vpn)
        if order:
            self.counters.count_mthp_stat(order, "nr_anon")
        return head, self.ALLOC_OK

    def alloc_order0_bulk(self, n: int) -> np.ndarray | None:
        """``n`` order-0 folios at once, or None if they cannot all be had."""
        if not self.memcg.try_charge(n):
            return None
        pfns = self.buddy.alloc_bulk(0, n)
        if pfns.size < n:
            if pfns.size:
                self.buddy.free_bulk(pfns, 0)
            self.memcg.uncharge(n)
            return None
        self.folios.init_bulk_order0(pfns)
        return pfns

    def free_folio(self, head: int) -> None:
        """``free_folio``: return an unreferenced folio to the buddy allocator."""
        f = self.folios
        if f.flags[head] & PG_DEFERRED:
            self.deferred.pop(head, None)
        order = int(f.order[head])
        if order and f.flags[head] & PG_PARTIALLY_MAPPED:
            self.counters.count_mthp_stat(order, "nr_anon_partially_mapped", -1)
        if order:
            self.counters.count_mthp_stat(order, "nr_anon", -1)
        f.clear_folio(head)
        self.buddy.free(head, order)
        self.memcg.uncharge(1 << order)

    def free_folios_order0(self, pfns: np.ndarray) -> None:
        """Vectorised :meth:`free_folio` for order-0 folios."""
        f = self.folios
        f.order[pfns] = -1
        f.refcount[pfns] = 0
        f.flags[pfns] = 0
        f.content[pfns] = 0
        f.mapcount[pfns] = 0
        for p in pfns.tolist() if f.pins else ():
            f.pins.pop(p, None)
        f.nr_live -= pfns.size
        self.buddy.free_bulk(np.asarray(pfns, dtype=np.int64), 0)
        self.memcg.uncharge(int(pfns.size))

    # --- memory pressure --------------------------------------------------------------
    def shrink_deferred_split(self, nr_to_scan: int | None = None) -> int:
        """Run the deferred-split shrinker (as under memory pressure)."""
        from thpsim.mm.huge_memory import deferred_split_scan

        return deferred_split_scan(self, nr_to_scan)

    def check(self) -> None:
        """Run the invariant checker (raises ``AssertionError``)."""
        from thpsim.mm.invariants import check_system

        check_system(self)


from thpsim.process import Process  # noqa: E402  (Process needs System defined)
