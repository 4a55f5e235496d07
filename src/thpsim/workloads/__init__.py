"""Workloads: parameterised generators of timed events (see docs/workloads.md).

:data:`WORKLOADS` maps each workload's name to its class; every class documents its
parameters (``PARAMS``: default and meaning), what real behaviour it models
(``models``) and where that behaviour is described (``source``).
"""

from __future__ import annotations

from thpsim.workloads.allocator import Allocator
from thpsim.workloads.base import Workload, WorkloadError
from thpsim.workloads.dense import DenseHeap
from thpsim.workloads.forkserver import ForkServer
from thpsim.workloads.replay import SnapshotReplay
from thpsim.workloads.sparse import SparseTable
from thpsim.workloads.stacks import ThreadStacks
from thpsim.workloads.trace import LackeyTrace

__all__ = ["WORKLOADS", "Workload", "WorkloadError"]

WORKLOADS: dict[str, type[Workload]] = {
    cls.name: cls
    for cls in (Allocator, ForkServer, ThreadStacks, SparseTable, DenseHeap, SnapshotReplay,
                LackeyTrace)
}
