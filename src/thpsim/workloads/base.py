"""The workload interface: timed events on the simulated clock, and how they are applied.

A :class:`Workload` is a parameterised generator of :class:`Event` objects in time
order (``Event.t``, simulated seconds from the start of the run; khugepaged runs on
the same clock between events, see :func:`thpsim.sim.runner.simulate`).  Events name
memory by *region* (a label given at :class:`Mmap`) and byte offsets inside it, and
processes by label (``"main"`` first; :class:`Fork` adds one), so a workload never
needs the addresses the model picks.  :class:`EventApplier` turns the events into
calls of the :class:`~thpsim.process.Process` API.

Touches are batched: one :class:`Touch` covers a byte range or an array of page
offsets and is applied with one vectorised ``Process.touch``; the number of pages it
touches counts as that many *touch events* in the statistics.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from thpsim.units import parse_size

if TYPE_CHECKING:
    from thpsim.process import Process
    from thpsim.system import System

__all__ = [
    "Brk",
    "Event",
    "EventApplier",
    "Exit",
    "Fork",
    "Madvise",
    "Mark",
    "Mmap",
    "Mprotect",
    "Munmap",
    "Pageout",
    "Param",
    "RangeEvent",
    "Touch",
    "Workload",
    "WorkloadError",
]


class WorkloadError(ValueError):
    """Bad workload parameters or an event that cannot be applied (one-line message)."""


# --- events ---------------------------------------------------------------------------
@dataclass(kw_only=True, slots=True)
class Event:
    """Base of every event.

    Attributes
    ----------
    t : float
        Simulated time in seconds (non-decreasing along a workload's stream).
    proc : str
        Label of the process that performs it.
    """

    t: float
    proc: str = "main"


@dataclass(kw_only=True, slots=True)
class Mmap(Event):
    """``mmap`` of private anonymous memory, named ``region``; ``advice`` (e.g.
    ``"hugepage"``, ``"nohugepage"``) is applied to the whole mapping right after;
    ``addr`` places it there (``MAP_FIXED``), else the model picks the address."""

    region: str
    length: int
    prot: str = "rw"
    advice: str | None = None
    addr: int | None = None


@dataclass(kw_only=True, slots=True)
class Brk(Event):
    """Grow a region by ``length`` bytes in place, as ``brk`` grows a heap: anonymous
    memory is mapped right after the region's end and merges into its VMA (the range
    must be free)."""

    region: str
    length: int


@dataclass(kw_only=True, slots=True)
class RangeEvent(Event):
    """Base of the events on ``[offset, offset+length)`` of a region (``length`` None: to
    the region's end)."""

    region: str
    offset: int = 0
    length: int | None = None


@dataclass(kw_only=True, slots=True)
class Munmap(RangeEvent):
    """``munmap`` of part of a region (unmapping the whole region forgets it)."""


@dataclass(kw_only=True, slots=True)
class Mprotect(RangeEvent):
    """``mprotect`` of part of a region (e.g. a guard page with ``prot="none"``)."""

    prot: str = "none"


@dataclass(kw_only=True, slots=True)
class Touch(RangeEvent):
    """Accesses: every page of the range, or the pages at the page offsets ``pages``
    (relative to ``offset``), read or write."""

    pages: np.ndarray | None = None
    write: bool = True


@dataclass(kw_only=True, slots=True)
class Madvise(RangeEvent):
    """``madvise(advice)`` over part of a region (``"dontneed"``, ``"free"``, ...)."""

    advice: str


@dataclass(kw_only=True, slots=True)
class Pageout(RangeEvent):
    """Reclaim of part of a region (``MADV_PAGEOUT``; needs swap for anon pages)."""


@dataclass(kw_only=True, slots=True)
class Fork(Event):
    """``fork()`` of ``proc``; the child is labelled ``child`` and inherits the regions."""

    child: str


@dataclass(kw_only=True, slots=True)
class Exit(Event):
    """The process ``proc`` exits."""


@dataclass(kw_only=True, slots=True)
class Mark(Event):
    """Record the layout under ``label`` (``"before"`` marks the start of the steady phase)."""

    label: str = "before"


# --- parameters -------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """One workload parameter: default, meaning and kind.

    ``kind`` is ``"int"``, ``"float"``, ``"size"`` (bytes; ``"64M"`` accepted), ``"bool"``,
    ``"str"`` or ``"list"`` (of strings; a comma-separated string is accepted).
    """

    default: Any
    doc: str
    kind: str = "int"
    choices: tuple[str, ...] | None = None

    def parse(self, name: str, value: Any) -> Any:
        """Convert ``value`` (a string from the command line, or a Python value)."""
        try:
            if self.kind == "size":
                out: Any = parse_size(value) if isinstance(value, str) else int(value)
            elif self.kind == "int":
                out = int(value)
            elif self.kind == "float":
                out = float(value)
            elif self.kind == "bool":
                if isinstance(value, str):
                    if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on",
                                             "off"):
                        raise ValueError(value)
                    out = value.lower() in ("1", "true", "yes", "on")
                else:
                    out = bool(value)
            elif self.kind == "list":
                out = ([s for s in value.split(",") if s] if isinstance(value, str)
                       else [str(s) for s in value])
            else:
                out = str(value)
        except (TypeError, ValueError):
            raise WorkloadError(f"parameter {name}: {value!r} is not a valid {self.kind}") \
                from None
        if self.choices is not None and out not in self.choices:
            raise WorkloadError(f"parameter {name}: {out!r} is not one of "
                                f"{', '.join(self.choices)}")
        return out


class Workload:
    """A parameterised generator of timed events.

    Subclasses set :attr:`name`, :attr:`summary`, :attr:`models` (what real behaviour
    the workload models), :attr:`source` (where that behaviour is described),
    :attr:`PARAMS` and implement :meth:`events`.

    Parameters
    ----------
    **params
        Overrides of :attr:`PARAMS` defaults (strings are parsed by kind).
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    models: ClassVar[str] = ""
    source: ClassVar[str] = ""
    PARAMS: ClassVar[dict[str, Param]] = {}
    #: default simulated duration (seconds) for the CLI when ``--duration`` is not given
    default_duration_s: ClassVar[float] = 600.0

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.PARAMS))
        if unknown:
            raise WorkloadError(f"workload {self.name}: unknown parameter {unknown[0]!r} "
                                f"(known: {', '.join(self.PARAMS) or 'none'})")
        self.params: dict[str, Any] = {}
        for key, p in self.PARAMS.items():
            self.params[key] = p.parse(key, params[key]) if key in params else p.default
        self.check()

    def check(self) -> None:
        """Validate parameter combinations (raise :class:`WorkloadError`)."""

    def error(self, text: str) -> WorkloadError:
        """A :class:`WorkloadError` naming this workload."""
        return WorkloadError(f"workload {self.name}: {text}")

    def positive(self, *names: str) -> None:
        """Raise unless each named parameter is > 0."""
        for n in names:
            if not self.params[n] > 0:
                raise WorkloadError(f"workload {self.name}: parameter {n} must be positive, "
                                    f"got {self.params[n]!r}")

    def memory_bytes(self) -> int:
        """Physical memory the simulated machine needs for this workload."""
        return 1 << 30

    def swap_bytes(self) -> int | None:
        """Swap the machine needs (None: no swap device)."""
        return None

    def events(self, rng: np.random.Generator) -> Iterator[Event]:
        """The event stream, in non-decreasing ``t`` (may be longer than a run)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params})"


# --- applying events ----------------------------------------------------------------------
@dataclass
class _Region:
    addr: int
    length: int
    advice: str | None = None


@dataclass
class EventApplier:
    """Applies events to a :class:`~thpsim.system.System` through the Process API.

    Attributes
    ----------
    events, touches : int
        Events applied and pages touched so far.
    errors : dict of str to int
        Count of syscalls that returned a negative errno, by event kind.
    """

    sys: System
    procs: dict[str, Process] = field(default_factory=dict)
    regions: dict[str, dict[str, _Region]] = field(default_factory=dict)
    events: int = 0
    touches: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if "main" not in self.procs:
            self.procs["main"] = self.sys.spawn("main")
            self.regions["main"] = {}

    def process(self, label: str) -> Process:
        try:
            return self.procs[label]
        except KeyError:
            raise WorkloadError(f"event for unknown process {label!r}") from None

    def region(self, proc: str, name: str) -> _Region:
        self.process(proc)  # an unknown process is reported as such
        try:
            return self.regions[proc][name]
        except KeyError:
            raise WorkloadError(f"event for unknown region {name!r} of process {proc!r}") \
                from None

    def _span(self, ev: Any) -> tuple[Process, int, int]:
        r = self.region(ev.proc, ev.region)
        length = r.length - ev.offset if ev.length is None else ev.length
        if ev.offset < 0 or length < 0 or ev.offset + length > r.length:
            raise WorkloadError(f"{type(ev).__name__} at t={ev.t}: [{ev.offset}, "
                                f"{ev.offset + length}) outside region {ev.region!r} "
                                f"({r.length} bytes)")
        return self.process(ev.proc), r.addr + ev.offset, length

    def _errno(self, kind: str, ret: int) -> None:
        if ret < 0:
            self.errors[kind] = self.errors.get(kind, 0) + 1

    def apply(self, ev: Event) -> None:
        """Apply one event."""
        self.events += 1
        if isinstance(ev, Touch):
            p, addr, length = self._span(ev)
            if ev.pages is not None:
                pages = np.asarray(ev.pages, dtype=np.int64)
                if pages.size == 0:
                    return
                if pages.min() < 0 or (int(pages.max()) + 1) * self.sys.geometry.page_size \
                        > length:
                    raise WorkloadError(f"Touch at t={ev.t}: page offset outside region "
                                        f"{ev.region!r}")
                self.touches += p.touch(addr, write=ev.write, pages=pages)
            elif length:
                self.touches += p.touch(addr, length, write=ev.write)
        elif isinstance(ev, Mmap):
            p = self.process(ev.proc)
            if ev.region in self.regions[ev.proc]:
                raise WorkloadError(f"Mmap at t={ev.t}: region {ev.region!r} already mapped")
            addr = p.mmap(ev.length, addr=ev.addr, prot=ev.prot, name=ev.region)
            self.regions[ev.proc][ev.region] = _Region(addr, ev.length, ev.advice)
            if ev.advice:
                self._errno("madvise", p.madvise(addr, ev.length, ev.advice))
        elif isinstance(ev, Brk):
            p = self.process(ev.proc)
            r = self.region(ev.proc, ev.region)
            end = r.addr + r.length
            ps = self.sys.geometry.page_size
            if ev.length <= 0 or ev.length % ps or end % ps:
                raise WorkloadError(f"Brk at t={ev.t}: length {ev.length} is not a positive "
                                    f"multiple of the page size")
            if p.mm.vmas.overlapping(end // ps, (end + ev.length) // ps):
                raise WorkloadError(f"Brk at t={ev.t}: the range after region "
                                    f"{ev.region!r} is not free")
            p.mmap(ev.length, addr=end, name=ev.region)
            if r.advice:  # same flags as the heap, so that the VMAs merge
                self._errno("madvise", p.madvise(end, ev.length, r.advice))
            r.length += ev.length
        elif isinstance(ev, Madvise):
            p, addr, length = self._span(ev)
            if length:
                self._errno("madvise", p.madvise(addr, length, ev.advice))
        elif isinstance(ev, Pageout):
            p, addr, length = self._span(ev)
            if length:
                self._errno("pageout", p.madvise(addr, length, "pageout"))
        elif isinstance(ev, Mprotect):
            p, addr, length = self._span(ev)
            if length:
                self._errno("mprotect", p.mprotect(addr, length, ev.prot))
        elif isinstance(ev, Munmap):
            p, addr, length = self._span(ev)
            if length:
                self._errno("munmap", p.munmap(addr, length))
                if ev.offset == 0 and length == self.regions[ev.proc][ev.region].length:
                    del self.regions[ev.proc][ev.region]
        elif isinstance(ev, Fork):
            p = self.process(ev.proc)
            if ev.child in self.procs:
                raise WorkloadError(f"Fork at t={ev.t}: process {ev.child!r} exists")
            self.procs[ev.child] = p.fork(ev.child)
            self.regions[ev.child] = {k: _Region(r.addr, r.length, r.advice)
                                      for k, r in self.regions[ev.proc].items()}
        elif isinstance(ev, Exit):
            self.process(ev.proc).exit()
            del self.procs[ev.proc]
            del self.regions[ev.proc]
        elif isinstance(ev, Mark):
            pass  # the runner records the layout
        else:
            raise WorkloadError(f"unknown event type {type(ev).__name__}")
