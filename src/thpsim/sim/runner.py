"""The simulation runner: a workload's events and khugepaged on one simulated clock.

The loop takes events in time order.  Before an event at time ``t`` is applied,
khugepaged runs every pass due at or before ``t`` (a pass is due at
``khugepaged.clock_ms``; after a pass the daemon sleeps ``scan_sleep_millisecs``, or
``alloc_sleep_millisecs`` after an allocation failure, as in the kernel), and the
metrics are sampled at every multiple of ``sample_s`` before ``t``: the sample at
``s`` shows the state after every event at or before ``s``.  An idle daemon
(nothing registered, or THP off) waits; the pass after a registration runs at the
first event after that instant (the kernel wakes khugepaged when an mm is added).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from thpsim.sim.metrics import CPU_MODEL, Sampler, layout_window
from thpsim.sim.result import RunResult
from thpsim.system import System
from thpsim.workloads.base import EventApplier, Mark, Workload, WorkloadError

__all__ = ["make_workload", "simulate"]


def make_workload(workload: str | Workload, params: dict | None = None) -> Workload:
    """A workload instance from a registry name and parameters (or pass one through)."""
    if isinstance(workload, Workload):
        if params:
            raise WorkloadError("pass params either to the workload or to simulate, not both")
        return workload
    from thpsim.workloads import WORKLOADS

    try:
        cls = WORKLOADS[workload]
    except KeyError:
        raise WorkloadError(f"unknown workload {workload!r} (one of "
                            f"{', '.join(sorted(WORKLOADS))})") from None
    return cls(**(params or {}))


class _Clock:
    """Advances khugepaged and takes samples up to a given simulated time."""

    def __init__(self, sys: System, sampler: Sampler, sample_s: float,
                 progress: Callable[[float], None] | None, duration_s: float) -> None:
        self.sys = sys
        self.sampler = sampler
        self.sample_s = sample_s
        self.next_sample = 0
        self.rows: list[dict[str, float]] = []
        self.times: list[float] = []
        self.progress = progress
        self.duration_s = duration_s

    def _run_until(self, t_s: float) -> None:
        kh = self.sys.khugepaged
        t_ms = t_s * 1000.0
        while kh.clock_ms <= t_ms:
            if kh.run(passes=1)["idle"]:
                # sleeping; a registration wakes it: its pass runs after the events of
                # this instant (1 µs later), not between two calls made back to back
                kh.clock_ms = t_ms + 1e-3
                break
            # khugepaged_wait_work; a pass takes real time, so at least 1 ms each even
            # with scan_sleep_millisecs 0
            kh.clock_ms += max(self.sys.settings.scan_sleep_millisecs, 1)

    def _sample(self, t_s: float) -> None:
        self.rows.append(self.sampler.sample())
        self.times.append(t_s)
        if self.progress is not None:
            self.progress(min(t_s / self.duration_s, 1.0) if self.duration_s else 1.0)

    def advance(self, t_s: float, inclusive: bool = False) -> None:
        """Run khugepaged up to ``t_s`` and take the samples due before it (at it too
        with ``inclusive``: a sample at ``s`` shows the state after the events at
        ``s``)."""
        eps = 1e-9
        while (self.next_sample * self.sample_s < t_s - eps
               or (inclusive and self.next_sample * self.sample_s <= t_s + eps)):
            ts = self.next_sample * self.sample_s
            self._run_until(ts)
            self._sample(ts)
            self.next_sample += 1
        self._run_until(t_s)

    def finish(self, t_s: float) -> None:
        self.advance(t_s, inclusive=True)
        if not self.times or self.times[-1] < t_s - 1e-9:
            self._sample(t_s)


def simulate(workload: str | Workload, *, params: dict | None = None, policy: str = "linux-7.2",
             settings: dict[str, str] | None = None, duration_s: float | None = 600.0,
             seed: int = 0, sample_s: float | None = None,
             progress: Callable[[float], None] | None = None) -> RunResult:
    """Run a workload on a fresh simulated machine and return its metrics.

    Parameters
    ----------
    workload : str or Workload
        A name of :data:`thpsim.workloads.WORKLOADS`, or an instance.
    params : dict, optional
        Workload parameters (with a name; strings are parsed).
    policy : {"v11", "linux-7.2", "legacy"}
    settings : dict of str to str, optional
        THP sysfs knobs (relative paths such as ``"khugepaged/max_ptes_none"``) applied
        before the first event.
    duration_s : float or None
        Simulated seconds; None uses the workload's ``default_duration_s``.
    seed : int
        Seed of the workload's random generator (same seed, same run).
    sample_s : float, optional
        Sampling period; default ``duration_s / 120``.
    progress : callable, optional
        Called with the completed fraction (0..1) after every sample.

    Returns
    -------
    RunResult

    Raises
    ------
    WorkloadError
        Unknown workload or bad parameters/events.
    OSError
        A setting the model rejects (the message names the knob).
    """
    wl = make_workload(workload, params)
    duration = float(wl.default_duration_s if duration_s is None else duration_s)
    if not duration > 0:
        raise WorkloadError(f"duration must be positive, got {duration}")
    step = duration / 120.0 if sample_s is None else float(sample_s)
    if not step > 0:
        raise WorkloadError(f"sample period must be positive, got {step}")
    settings = {str(k): str(v) for k, v in (settings or {}).items()}
    sys = System(memory=wl.memory_bytes(), swap=wl.swap_bytes(), policy=policy)
    if settings:
        sys.settings.apply(settings)
    rng = np.random.default_rng(seed)
    applier = EventApplier(sys)
    sampler = Sampler(sys)
    clock = _Clock(sys, sampler, step, progress, duration)
    layouts: dict[str, dict[str, np.ndarray]] = {}

    def record(label: str) -> None:
        p = applier.procs.get("main") or next(iter(applier.procs.values()), None)
        if p is not None:
            layouts[label] = layout_window(sys, p.mm)

    wall0 = time.perf_counter()
    marked = False
    last_t = 0.0
    for ev in wl.events(rng):
        if ev.t > duration:
            break
        if not ev.t >= last_t:  # also rejects NaN
            raise WorkloadError(f"workload {wl.name}: event {type(ev).__name__} at t={ev.t} "
                                f"comes after t={last_t} (events must be in time order)")
        last_t = ev.t
        if ev.t > 0 and not marked and "before" not in layouts:
            record("before")  # fallback: state after the events at t=0
        clock.advance(ev.t)
        if isinstance(ev, Mark):
            record(ev.label)
            marked = marked or ev.label == "before"
        applier.apply(ev)
    if "before" not in layouts:
        record("before")
    clock.finish(duration)
    record("after")
    wall = time.perf_counter() - wall0

    series: dict[str, np.ndarray] = {"t_s": np.asarray(clock.times, dtype=np.float64)}
    for name in clock.rows[0]:
        series[name] = np.array([r[name] for r in clock.rows], dtype=np.float64)
    summary = {k: float(v[-1]) for k, v in series.items()}
    summary.update(events=float(applier.events), touches=float(applier.touches),
                   wall_s=float(wall), events_per_s=applier.events / wall if wall else 0.0,
                   touches_per_s=applier.touches / wall if wall else 0.0)
    meta: dict[str, Any] = {
        "summary": wl.summary, "source": wl.source, "sample_s": step,
        "memory_bytes": wl.memory_bytes(), "page_size": sys.geometry.page_size,
        "syscall_errors": dict(applier.errors), "warnings": list(sys.khugepaged.warnings),
        "cpu_model_us": dict(CPU_MODEL),
    }
    return RunResult(workload=wl.name, params=dict(wl.params), policy=policy,
                     settings=settings, seed=seed, duration_s=duration, series=series,
                     summary=summary, layouts=layouts, meta=meta)
