"""The model executor: run a :class:`~thpsim.scenario.spec.Scenario` on a fresh System.

The result is the JSON document every executor prints (docs/scenarios.md,
"Output").  Step results follow the C library convention: ``ret`` is the
system call's return value (``0``, or ``-1`` with ``errno`` the error's name);
a ``write``/``read`` step returns the number of pages it touched, or ``-1``
with ``errno`` ``"SIGSEGV"`` when an access faults (pages before the faulting
one stay touched, as in a real program with a SIGSEGV handler that skips the
rest of the step).
"""

from __future__ import annotations

import errno as errno_mod

from thpsim.mm.counters import counter_delta
from thpsim.mm.memory import SegvError
from thpsim.mm.trace import format_line
from thpsim.process import Process
from thpsim.scenario.spec import PAGE_SIZE, Scenario, Step, default_settings
from thpsim.system import DEFAULT_POLICY, System

__all__ = ["MODEL_MEMORY", "run_on_model"]

#: physical memory of the model machine a scenario runs on
MODEL_MEMORY = "1G"


def _errno_name(ret: int) -> str:
    return errno_mod.errorcode.get(-ret, f"E{-ret}")


def _syscall_result(ret: int) -> dict:
    if ret < 0:
        return {"ret": -1, "errno": _errno_name(ret)}
    return {"ret": ret, "errno": None}


class _Run:
    def __init__(self, scenario: Scenario, policy: str, trace: bool) -> None:
        self.sc = scenario
        self.policy = policy
        swap = f"{scenario.swap_mb}M" if scenario.swap_mb else None
        self.sys = sys = System(memory=MODEL_MEMORY, swap=swap, policy=policy)
        # every executor: all knobs to the model's defaults, then [settings]
        sys.settings.apply(default_settings())
        sys.settings.apply(scenario.settings)
        self.events = sys.khugepaged.enable_trace() if trace else None
        #: formatted trace lines, and how many were already given to a snapshot
        self.lines: list[str] = []
        self.lines_reported = 0
        main = sys.spawn("main")
        self.procs: dict[str, Process] = {"main": main}
        for reg in scenario.regions:
            addr = main.mmap(reg.length, addr=reg.addr)
            assert addr == reg.addr, f"region {reg.name} mapped at {addr:#x}"
        self.start = self._counters()

    # --- helpers ---------------------------------------------------------------------
    def _counters(self) -> dict:
        kh = self.sys.khugepaged
        snap = self.sys.counters.snapshot()
        snap["khugepaged"] = {"pages_collapsed": kh.pages_collapsed,
                              "full_scans": kh.full_scans}
        return snap

    def _collect_trace(self, task: str, pid: int) -> None:
        if self.events is None:
            return
        for ev in self.events:
            self.lines.append(format_line(ev, self.policy, task=task, pid=pid))
        self.events.clear()

    def _range(self, step: Step, run: tuple[int, int]) -> tuple[int, int]:
        reg = self.sc.region(step.region)
        return reg.addr + run[0] * PAGE_SIZE, (run[1] - run[0]) * PAGE_SIZE

    # --- ops --------------------------------------------------------------------------
    def step(self, step: Step) -> dict:
        proc = self.procs[step.process]
        out = {"op": step.op, "process": step.process}
        fn = getattr(self, f"op_{step.op}")
        out.update(fn(step, proc))
        # events of a system call come from the calling task, the rest from khugepaged
        if step.op == "khugepaged":
            self._collect_trace("khugepaged", 0)
        else:
            self._collect_trace(step.process, proc.pid)
        return out

    def op_madvise(self, step: Step, proc: Process) -> dict:
        ret = 0
        for run in step.runs:  # one call per contiguous run; the first failure is kept
            r = proc.madvise(*self._range(step, run), step.advice)
            if r < 0 and ret == 0:
                ret = r
        out = _syscall_result(ret)
        out["advice"] = step.advice
        return out

    def _touch(self, step: Step, proc: Process, write: bool) -> dict:
        reg = self.sc.region(step.region)
        done = 0
        for a, b in step.runs:
            try:
                done += proc.touch(reg.addr + a * PAGE_SIZE, (b - a) * PAGE_SIZE, write=write)
            except SegvError:
                return {"ret": -1, "errno": "SIGSEGV"}
        return {"ret": done, "errno": None}

    def op_write(self, step: Step, proc: Process) -> dict:
        return self._touch(step, proc, True)

    def op_read(self, step: Step, proc: Process) -> dict:
        return self._touch(step, proc, False)

    def op_mprotect(self, step: Step, proc: Process) -> dict:
        return _syscall_result(proc.mprotect(*self._range(step, step.runs[0]), step.prot))

    def op_munmap(self, step: Step, proc: Process) -> dict:
        return _syscall_result(proc.munmap(*self._range(step, step.runs[0])))

    def op_khugepaged(self, step: Step, proc: Process) -> dict:
        # the model runs N full scans on its simulated clock; it "times out" only
        # when the thread idles (nothing registered, or THP disabled)
        res = self.sys.khugepaged.run(full_scans=step.full_scans)
        return {"ret": None, "errno": None, "full_scans": res["full_scans"],
                "timed_out": res["full_scans"] < step.full_scans}

    def op_fork(self, step: Step, proc: Process) -> dict:
        self.procs[step.child] = proc.fork(step.child)
        return {"ret": 0, "errno": None, "child": step.child}

    def op_exit(self, step: Step, proc: Process) -> dict:
        proc.exit()
        del self.procs[step.process]
        return {"ret": 0, "errno": None}

    def op_settings(self, step: Step, proc: Process) -> dict:
        try:
            self.sys.settings.apply(step.settings)
        except OSError as e:
            return {"ret": -1, "errno": _errno_name(-e.errno)}
        return {"ret": 0, "errno": None}

    def op_snapshot(self, step: Step, proc: Process) -> dict:
        regions = {}
        for reg in self.sc.regions:
            lay = proc.layout(reg.addr, reg.length)
            regions[reg.name] = {"pmds": [{"picture": p.picture, "shared": p.shared,
                                           "folios": p.folios} for p in lay.pmds]}
        now = self._counters()
        delta = counter_delta(now, self.start)
        kh = {k: now["khugepaged"][k] - self.start["khugepaged"][k]
              for k in ("pages_collapsed", "full_scans")}
        snap = {"process": step.process, "regions": regions,
                "counters": {"vmstat": delta["vmstat"], "mthp": delta["mthp"],
                             "khugepaged": kh}}
        if self.events is not None:
            snap["trace"] = self.lines[self.lines_reported:]
            self.lines_reported = len(self.lines)
        self.snapshots[step.label] = snap
        return {"ret": None, "errno": None, "label": step.label}

    # --- the whole scenario -------------------------------------------------------------
    def run(self) -> dict:
        self.snapshots: dict[str, dict] = {}
        steps = [self.step(s) for s in self.sc.steps]
        out = {"scenario": self.sc.name, "executor": "model",
               "kernel_or_policy": self.policy, "steps": steps, "snapshots": self.snapshots,
               "dmesg": list(self.sys.khugepaged.warnings)}
        if self.events is not None:
            out["trace"] = self.lines
        return out


def run_on_model(scenario: Scenario, policy: str = DEFAULT_POLICY, trace: bool = False) -> dict:
    """Run ``scenario`` on a fresh model machine (1 GiB, ``swap_mb`` of swap) under ``policy``.

    Returns the result document (docs/scenarios.md, "Output"); with ``trace`` it
    holds the huge_memory tracepoint lines in ftrace format (all of them under
    ``"trace"``, and per snapshot those since the previous snapshot).
    """
    return _Run(scenario, policy, trace).run()
