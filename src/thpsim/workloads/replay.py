"""Replay a series of snapshots of one process as a workload."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np

from thpsim.snapshot.core import HUGE_ZERO, NONE, PRESENT, SWAP, ZERO, Snapshot, SnapshotError
from thpsim.workloads.base import (
    Event,
    Madvise,
    Mmap,
    Munmap,
    Pageout,
    Param,
    Touch,
    Workload,
)

__all__ = ["SnapshotReplay", "diff_events"]


def _runs(idx: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs ``(first, last+1)`` of sorted integers."""
    if idx.size == 0:
        return []
    cuts = np.flatnonzero(np.diff(idx) != 1) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [idx.size]])
    return [(int(idx[s]), int(idx[e - 1]) + 1) for s, e in zip(starts, ends, strict=True)]


def _vma_pages(snap: Snapshot) -> dict[int, tuple[int, np.ndarray]]:
    """VMA start -> (end, state slice) of a snapshot."""
    off = snap.vma_offsets()
    return {v.start: (v.end, snap.state[off[i]:off[i + 1]]) for i, v in enumerate(snap.vmas)}


def _advice(flags: frozenset[str]) -> str | None:
    if "hg" in flags:
        return "hugepage"
    if "nh" in flags:
        return "nohugepage"
    return None


def diff_events(prev: Snapshot | None, cur: Snapshot, t: float) -> list[Event]:
    """Events at time ``t`` that turn the state ``prev`` (None: empty) into ``cur``.

    VMAs are regions named by their start address (mapped at that address): new ones
    are mapped (with ``MADV_HUGEPAGE``/``NOHUGEPAGE`` from their ``hg``/``nh`` flags),
    vanished ones unmapped, a VMA whose end moved is remapped.  Per page: none ->
    present is a write, none -> zero page a read, present/zero -> none a
    ``MADV_DONTNEED``, -> swap a ``MADV_PAGEOUT``, swap -> present a write.  Content
    changes of present pages are not in snapshots and are not replayed; the folio
    sizes are the model's own (faults and khugepaged under the run's settings).
    """
    ps = cur.page_size
    old = _vma_pages(prev) if prev is not None else {}
    new = _vma_pages(cur)
    flags = {v.start: v.flag_set for v in cur.vmas}
    out: list[Event] = []
    for start, (end, _) in old.items():
        if start not in new or new[start][0] != end:
            out.append(Munmap(t=t, region=f"{start:#x}"))
    for start, (end, st) in new.items():
        region = f"{start:#x}"
        if start in old and old[start][0] == end:
            before = old[start][1]
        else:
            out.append(Mmap(t=t, region=region, length=end - start, addr=start,
                            advice=_advice(flags[start])))
            before = np.zeros(st.size, dtype=np.uint8)
        for a, b in _runs(np.flatnonzero((before != NONE) & (st == NONE))):
            out.append(Madvise(t=t, region=region, advice="dontneed", offset=a * ps,
                               length=(b - a) * ps))
        swap = np.flatnonzero((st == SWAP) & (before != SWAP))
        # a page must be present before it can be paged out
        write = np.flatnonzero(((st == PRESENT) & (before != PRESENT))
                               | ((st == SWAP) & (before == NONE)))
        if write.size:
            out.append(Touch(t=t, region=region, pages=write, write=True))
        read = np.flatnonzero(np.isin(st, (ZERO, HUGE_ZERO)) & (before == NONE))
        if read.size:
            out.append(Touch(t=t, region=region, pages=read, write=False))
        for a, b in _runs(swap):
            out.append(Pageout(t=t, region=region, offset=a * ps, length=(b - a) * ps))
    return out


class SnapshotReplay(Workload):
    """Snapshots of one process taken over time, replayed as the accesses and
    ``madvise`` calls that turn each state into the next (:func:`diff_events`), at the
    snapshots' times (relative to the first) or every ``interval_s``.
    """

    name = "replay"
    summary = "replay a series of snapshots of one process"
    models = ("A real process's anonymous memory as captured over time by "
              "`thpsim snapshot` (or synthetic snapshots): which pages appear, go and are "
              "swapped between captures, replayed under another policy or settings.")
    source = "Snapshots from the snapshot tool (docs/snapshot-format.md)."
    PARAMS: ClassVar[dict[str, Param]] = {
        "snapshots": Param([], "snapshot files (or Snapshot objects) in time order", "list"),
        "interval_s": Param(0.0, "seconds between snapshots (0: use their times)", "float"),
    }

    def __init__(self, **params: Any) -> None:
        snaps = params.get("snapshots", [])
        self._objects: list[Snapshot] | None = None
        if isinstance(snaps, Sequence) and not isinstance(snaps, str) and snaps and all(
                isinstance(s, Snapshot) for s in snaps):
            self._objects = list(snaps)
            params = dict(params, snapshots=[f"<snapshot pid={s.pid} t={s.time}>"
                                             for s in snaps])
        super().__init__(**params)

    def check(self) -> None:
        if not self.params["snapshots"]:
            raise self.error("needs snapshots=FILE[,FILE...]")
        if self.params["interval_s"] < 0:
            raise self.error("interval_s must be >= 0")

    def snapshots(self) -> list[Snapshot]:
        """The snapshots (loaded from files on first use, validated)."""
        if self._objects is None:
            from thpsim.snapshot.io import load_snapshot

            loaded = []
            for path in self.params["snapshots"]:
                if not os.path.exists(path):
                    raise self.error(f"{path}: no such snapshot file")
                loaded.append(load_snapshot(path))
            self._objects = loaded
        for i, s in enumerate(self._objects):
            try:
                s.validate(f"snapshot {i}")
            except SnapshotError as e:
                raise self.error(str(e)) from None
            if s.page_size != 4096:
                raise self.error(f"snapshot {i}: page size {s.page_size} (replay needs 4K)")
        return self._objects

    def _times(self, snaps: list[Snapshot]) -> list[float]:
        iv = self.params["interval_s"]
        times = [s.time - snaps[0].time for s in snaps]
        if iv > 0 or any(b <= a for a, b in itertools.pairwise(times)):
            iv = iv or 60.0
            times = [i * iv for i in range(len(snaps))]
        return times

    @property
    def default_duration_s(self) -> float:  # type: ignore[override]
        snaps = self.snapshots()
        times = self._times(snaps)
        return times[-1] + max(60.0, times[-1] / max(len(snaps) - 1, 1))

    def memory_bytes(self) -> int:
        need = max(int(((s.state == PRESENT) | (s.state == SWAP)).sum()) for s in
                   self.snapshots()) * 4096
        return max(1 << 30, 1 << int(4 * need - 1).bit_length())

    def swap_bytes(self) -> int | None:
        nswap = max(int((s.state == SWAP).sum()) for s in self.snapshots())
        return max(64 << 20, 2 * nswap * 4096) if nswap else None

    def events(self, rng: np.random.Generator) -> Iterator[Event]:
        snaps = self.snapshots()
        prev = None
        for s, t in zip(snaps, self._times(snaps), strict=True):
            yield from diff_events(prev, s, t)
            prev = s
