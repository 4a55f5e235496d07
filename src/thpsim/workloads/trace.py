"""Import of Valgrind lackey memory traces (``valgrind --tool=lackey --trace-mem=yes``).

Format (one access per line; Valgrind's own messages start with ``==PID==``)::

    I  04000000,3      instruction fetch of 3 bytes at 0x4000000
     L 1ffefff7a0,8    data load
     S 1ffefff798,8    data store
     M 0421c7f0,4      modify (load and store)

Addresses are hexadecimal without ``0x``; the size is decimal.  A file ending in
``.gz`` is read through gzip.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from thpsim.workloads.base import Event, Mmap, Param, Touch, Workload, WorkloadError

__all__ = ["LackeyTrace", "TraceData", "read_lackey"]


@dataclass
class TraceData:
    """A parsed trace: per access the page number and whether it writes."""

    page: np.ndarray  # int64
    write: np.ndarray  # bool
    command: str = ""


def read_lackey(path: str | os.PathLike, instructions: bool = False,
                page_size: int = 4096) -> TraceData:
    """Parse a lackey ``--trace-mem=yes`` file.

    Parameters
    ----------
    path : str or PathLike
        The trace (``.gz`` is decompressed).
    instructions : bool
        Keep instruction fetches (``I``) as reads (default: drop them; they touch code,
        which is file-backed, not anonymous memory).
    page_size : int

    Raises
    ------
    WorkloadError
        Unreadable file or a malformed line (the message gives file and line).
    """
    p = os.fspath(path)
    opener = gzip.open if p.endswith(".gz") else open
    addrs: list[int] = []
    sizes: list[int] = []
    writes: list[bool] = []
    command = ""
    try:
        with opener(p, "rt", encoding="ascii", errors="replace") as fh:
            for lineno, line in enumerate(fh, 1):
                if line.startswith("=="):
                    if "Command:" in line:
                        command = line.split("Command:", 1)[1].strip()
                    continue
                s = line.strip()
                if not s:
                    continue
                kind, _, rest = s.partition(" ")
                a, comma, n = rest.strip().partition(",")
                if kind not in ("I", "L", "S", "M") or not comma:
                    raise WorkloadError(f"{p}:{lineno}: not a lackey trace line: {s[:40]!r}")
                try:
                    addr, size = int(a, 16), int(n)
                except ValueError:
                    raise WorkloadError(f"{p}:{lineno}: bad address or size: {s[:40]!r}") \
                        from None
                if kind == "I" and not instructions:
                    continue
                addrs.append(addr)
                sizes.append(max(size, 1))
                writes.append(kind in ("S", "M"))
    except OSError as e:
        raise WorkloadError(f"{p}: {e.strerror or e}") from None
    except (EOFError, gzip.BadGzipFile) as e:
        raise WorkloadError(f"{p}: damaged gzip file ({e})") from None
    a = np.array(addrs, dtype=np.int64)
    last = a + np.array(sizes, dtype=np.int64) - 1
    w = np.array(writes, dtype=bool)
    first_pg, last_pg = a // page_size, last // page_size
    # an access that crosses a page boundary touches both pages
    cross = np.flatnonzero(last_pg != first_pg)
    if cross.size:
        pos = np.sort(np.concatenate([np.arange(a.size), cross]))
        page = first_pg[pos].copy()
        dup = np.flatnonzero(np.diff(pos) == 0) + 1
        page[dup] = last_pg[pos[dup]]
        w = w[pos]
    else:
        page = first_pg
    return TraceData(page=page, write=w, command=command)


class LackeyTrace(Workload):
    """A Valgrind lackey memory trace replayed as touches.

    A trace has no time and no memory map: its accesses are spread evenly over
    ``spread_s`` simulated seconds (batched per ``tick_s``), and the touched pages are
    grouped into regions (a gap larger than ``gap`` starts a new one), each mapped as
    one private anonymous VMA at the trace's own addresses, from its first to its last
    touched page widened to ``align``.  Code, file mappings and the real VMA
    boundaries are not known; every touched page is treated as anonymous memory.
    """

    name = "trace"
    summary = "Valgrind lackey memory trace (--trace-mem=yes)"
    models = ("The real access stream of a program, recorded with Valgrind's lackey tool "
              "(examples/traces/ has a sample from the development machine).")
    source = ("Valgrind user manual, 'Lackey: an example tool', --trace-mem=yes output "
              "format (valgrind.org/docs/manual/lk-manual.html).")
    PARAMS: ClassVar[dict[str, Param]] = {
        "path": Param("examples/traces/hashfill.lackey.gz", "lackey trace file (.gz ok)",
                      "str"),
        "spread_s": Param(60.0, "simulated seconds the accesses are spread over", "float"),
        "tick_s": Param(1.0, "touch batching period", "float"),
        "gap": Param(2 << 20, "address gap that starts a new region", "size"),
        "align": Param(4096, "region boundaries are widened to this alignment", "size"),
        "instructions": Param(False, "include instruction fetches as reads", "bool"),
    }
    default_duration_s = 120.0

    def check(self) -> None:
        self.positive("spread_s", "tick_s", "gap", "align")
        if self.params["align"] % 4096 or self.params["align"] & (self.params["align"] - 1):
            raise self.error("align must be a power of two multiple of 4 KiB")
        self._data: TraceData | None = None

    def data(self) -> TraceData:
        if self._data is None:
            self._data = read_lackey(self._path(), self.params["instructions"])
            if self._data.page.size == 0:
                raise WorkloadError(f"{self.params['path']}: no memory accesses in the trace")
        return self._data

    def _path(self) -> str:
        """The trace path; a relative path missing from the working directory is looked
        up in the source tree (where the example traces live)."""
        path = self.params["path"]
        if not os.path.isabs(path) and not os.path.exists(path):
            root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
                os.path.abspath(__file__)))))
            alt = os.path.join(root, path)
            if os.path.exists(alt):
                return alt
        return path

    def regions(self) -> list[tuple[int, int]]:
        """``(first page, end page)`` of each region."""
        pages = np.unique(self.data().page)
        al = self.params["align"] // 4096
        gap = self.params["gap"] // 4096
        cuts = np.flatnonzero(np.diff(pages) > gap) + 1
        out = []
        for chunk in np.split(pages, cuts):
            lo = int(chunk[0]) // al * al
            hi = -(-(int(chunk[-1]) + 1) // al) * al
            if out and lo < out[-1][1]:
                out[-1] = (out[-1][0], max(hi, out[-1][1]))
            else:
                out.append((lo, hi))
        return out

    def memory_bytes(self) -> int:
        span = sum(e - s for s, e in self.regions()) * 4096
        return max(1 << 30, 1 << int(4 * span - 1).bit_length())

    def events(self, rng: np.random.Generator) -> Iterator[Event]:
        d = self.data()
        regs = self.regions()
        starts = np.array([s for s, _ in regs], dtype=np.int64)
        for s, e in regs:
            yield Mmap(t=0.0, region=f"{s * 4096:#x}", length=(e - s) * 4096, addr=s * 4096)
        n = d.page.size
        nticks = max(1, round(self.params["spread_s"] / self.params["tick_s"]))
        bounds = np.linspace(0, n, nticks + 1).astype(np.int64)
        for k in range(nticks):
            lo, hi = int(bounds[k]), int(bounds[k + 1])
            if lo == hi:
                continue
            t = k * self.params["tick_s"]
            pg, wr = d.page[lo:hi], d.write[lo:hi]
            reg = np.searchsorted(starts, pg, side="right") - 1
            for r in np.unique(reg).tolist():
                sel = reg == r
                base = int(starts[r])
                written = np.unique(pg[sel & wr])
                read = np.setdiff1d(np.unique(pg[sel & ~wr]), written)
                name = f"{base * 4096:#x}"
                if read.size:
                    yield Touch(t=t, region=name, pages=read - base, write=False)
                if written.size:
                    yield Touch(t=t, region=name, pages=written - base, write=True)
