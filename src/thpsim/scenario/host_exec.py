"""The host executor: run a :class:`~thpsim.scenario.spec.Scenario` on the machine's kernel.

Needs Linux, root and THP sysfs (:class:`~thpsim.host.errors.HostUnavailable`
otherwise; the CLI prints it as one line and exits 2).  The result is the
same JSON document as the model executor's (docs/scenarios.md, "Output") with
``executor = "host"`` and ``kernel_or_policy = uname -r``.

Processes
---------
* The **supervisor** (the calling process) takes the host lock and records
  every knob in the state file (:func:`thpsim.host.thp_sysfs.host_thp_settings`),
  applies :func:`host_run_settings` (the model's defaults overlaid with the
  scenario's ``[settings]``, and the executor's pace for khugepaged), sets up
  zram swap for ``swap_mb``, then drives the scenario step by step.  It writes
  the knobs of ``settings`` steps itself, runs ``khugepaged`` steps, and reads
  snapshots (``/proc/PID/pagemap`` etc.) while the process in question waits
  for its next command, so the picture is exact.
* The **worker** (process ``main``) is a freshly executed interpreter running
  :mod:`thpsim.scenario.host_worker`: a new mm that khugepaged does not know
  (a forked copy of the supervisor would inherit its registration).  It maps the
  regions at their fixed addresses (``MAP_FIXED_NOREPLACE``) and executes the
  memory steps sent over a ``SOCK_SEQPACKET`` socket.  A ``fork`` step forks a
  **holder** (process ``child``) that serves the steps addressed to it over its
  own socket (all sockets exist before the worker starts) and keeps its copy
  of the mappings until its ``exit`` step.  They exit when their socket
  reaches EOF, i.e. as soon as the supervisor is gone, even after SIGKILL.
* **khugepaged's pace**: ``scan_sleep_millisecs`` is an hour between steps and
  10 ms during a ``khugepaged`` step, which waits for ``full_scans`` to
  advance, puts the hour back and waits until the thread sleeps again; after
  the knob writes at the start and after ``settings`` steps (which may start
  a new thread that scans at once) the supervisor also waits for it to sleep.
  So khugepaged works on the scenario only inside ``khugepaged`` steps, as in
  the model.  The **anchor**, another fresh process, keeps an mm registered so
  that a first registration never wakes the thread (it does when the list of
  registered mms was empty).
* A **janitor** (only with ``swap_mb`` or ``trace``) is forked, in its own
  session, before anything is set up.  The supervisor tells it what to undo
  (the zram swap, the tracefs instance, a tracefs mount); if the supervisor
  dies without saying "done" (SIGKILL), the janitor undoes them.  It holds the
  inherited host lock while it does so, so ``thpsim host restore`` (which puts
  the knobs back from the state file) waits for it.

Every knob is restored and verified by ``host_thp_settings`` when the run
ends, also after exceptions, SIGINT and SIGTERM.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from thpsim.host.errors import HostUnavailable
from thpsim.scenario import host_worker
from thpsim.scenario.executors import ExecutorUnavailable, register
from thpsim.scenario.host_worker import _MSG_MAX
from thpsim.scenario.host_worker import errname as _errname
from thpsim.scenario.spec import PAGE_SIZE, Scenario, Step

__all__ = ["FAST_PAGES_TO_SCAN", "FAST_SCAN_SLEEP_MS", "IDLE_SCAN_SLEEP_MS", "PACE_KNOBS",
           "HostRunError", "host_run_settings", "run_on_host"]

THP_DIR = "/sys/kernel/mm/transparent_hugepage"
TRACEFS = "/sys/kernel/tracing"
#: khugepaged's pace is the executor's (see host_run_settings): it sleeps IDLE between
#: steps and FAST during khugepaged steps, with a per-wake budget of FAST_PAGES_TO_SCAN
FAST_SCAN_SLEEP_MS = 10
IDLE_SCAN_SLEEP_MS = 3_600_000
FAST_PAGES_TO_SCAN = 1 << 20
#: knobs the executor owns: a scenario's values are not written
PACE_KNOBS = ("khugepaged/scan_sleep_millisecs", "khugepaged/pages_to_scan")

ADVICE_NR = {"dontneed": 4, "free": 8, "hugepage": 14, "nohugepage": 15, "cold": 20,
             "pageout": 21, "collapse": 25}
PROT_NR = {"rw": 3, "r": 1, "none": 0}

_REPLY_TIMEOUT = 300.0  # seconds a single memory step may take
_EXIT_TIMEOUT = 10.0
_KH_POLL = 0.004
_SETTLE_QUIET = 0.03  # khugepaged must stay asleep this long (3 x FAST) to count as idle
_SETTLE_TIMEOUT = 10.0


class HostRunError(HostUnavailable):
    """The host run failed (a process died, a region could not be mapped, ...); one line."""


# ======================================================================== janitor


class _Janitor:
    """A process in its own session that undoes host changes if the supervisor dies.

    Messages (one JSON object a line): ``{"swap": dev}``, ``{"trace_instance":
    path}``, ``{"umount": path}``, and ``{"done": true}`` when the supervisor
    has cleaned up itself.  On EOF without "done" it undoes what it was told,
    in reverse order of setup (trace instance, mount, swap).
    """

    def __init__(self) -> None:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(w)
                self._run(r)
            except BaseException:
                pass
            os._exit(0)
        os.close(r)
        self.pid = pid
        self.fd = w

    @staticmethod
    def _run(r: int) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        data = b""
        while True:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            data += chunk
        todo = [json.loads(x) for x in data.decode().splitlines() if x.strip()]
        if any(t.get("done") for t in todo):
            return
        for t in reversed(todo):
            with contextlib.suppress(Exception):
                if "trace_instance" in t:
                    _remove_instance(t["trace_instance"])
                elif "umount" in t:
                    subprocess.run(["umount", t["umount"]], capture_output=True, check=False)
                elif "swap" in t:
                    _swap_cleanup(t["swap"])

    def note(self, **what: Any) -> None:
        os.write(self.fd, (json.dumps(what) + "\n").encode())

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            self.note(done=True)
        with contextlib.suppress(OSError):
            os.close(self.fd)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def _swap_cleanup(device: str) -> None:
    from thpsim.host.swap import active_swaps

    dev = f"/dev/{device}"
    if dev in active_swaps():
        subprocess.run(["swapoff", dev], capture_output=True, check=False)
    with open(f"/sys/block/{device}/reset", "w") as f:
        f.write("1")


# ======================================================================== tracing


def _remove_instance(path: str) -> None:
    with contextlib.suppress(OSError), open(os.path.join(path, "events/huge_memory/enable"),
                                            "w") as f:
        f.write("0")
    for _ in range(50):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:  # EBUSY while a reader still has it open
            time.sleep(0.02)


def _tracefs_mounted(path: str = TRACEFS) -> bool:
    with open("/proc/mounts") as f:
        return any(ln.split()[1:3] == [path, "tracefs"] for ln in f if len(ln.split()) > 2)


_TASK_RE = re.compile(r"^\s*(.*?)-(\d+)\s+\[\d+\]")
_MM_RE = re.compile(r"\bmm=(\w+)")


class _Tracer:
    """A private tracefs instance with ``events/huge_memory`` enabled."""

    def __init__(self, janitor: _Janitor | None) -> None:
        self.mounted_here = False
        if not _tracefs_mounted():
            r = subprocess.run(["mount", "-t", "tracefs", "nodev", TRACEFS],
                               capture_output=True, text=True, check=False)
            if r.returncode != 0:
                raise HostUnavailable(f"cannot mount tracefs at {TRACEFS}: "
                                      f"{(r.stderr or r.stdout).strip()}")
            self.mounted_here = True
            if janitor:
                janitor.note(umount=TRACEFS)
        self.inst = os.path.join(TRACEFS, "instances", f"thpsim-{os.getpid()}")
        self.fd = -1
        try:
            os.mkdir(self.inst)
            if janitor:
                janitor.note(trace_instance=self.inst)
            with contextlib.suppress(OSError), \
                    open(os.path.join(self.inst, "buffer_size_kb"), "w") as f:
                f.write("8192")
            with open(os.path.join(self.inst, "events/huge_memory/enable"), "w") as f:
                f.write("1")
            self.fd = os.open(os.path.join(self.inst, "trace_pipe"),
                              os.O_RDONLY | os.O_NONBLOCK)
        except BaseException:
            self.close()
            raise
        self.partial = b""
        #: hashed mm pointers of the scenario's processes, learnt by probes
        self.mms: set[str] = set()
        self.pending: list[str] = []

    def read_raw(self) -> list[str]:
        """Every complete line written since the last read (all tasks)."""
        data = b""
        while True:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            data += chunk
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        return [ln.decode(errors="replace") for ln in lines if ln.strip()]

    def learn_mm(self, lines: list[str], pid: int) -> list[str]:
        """Record the ``mm=`` of ``pid``'s lines (a probe); returns the other lines."""
        rest = []
        for line in lines:
            m = _TASK_RE.match(line)
            mm = _MM_RE.search(line)
            if m and int(m.group(2)) == pid and mm:
                self.mms.add(mm.group(1))
            else:
                rest.append(line)
        return rest

    def filter(self, lines: list[str], pids: set[int]) -> list[str]:
        """Lines of the scenario's processes, and khugepaged's lines about their mms.

        A khugepaged line without ``mm=`` (``mm_collapse_huge_page_isolate``) belongs
        to the next khugepaged line that has one.  If no mm could be learnt, every
        khugepaged line is kept.
        """
        out = []
        for line in lines:
            m = _TASK_RE.match(line)
            if not m:
                continue
            if int(m.group(2)) in pids:
                out.append(line)
                continue
            if m.group(1) != "khugepaged":
                continue
            mm = _MM_RE.search(line)
            if not self.mms:
                out.append(line)
            elif mm is None:
                self.pending.append(line)
            else:
                if mm.group(1) in self.mms:
                    out += self.pending
                    out.append(line)
                self.pending = []
        return out

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if os.path.isdir(self.inst):
            _remove_instance(self.inst)
        if self.mounted_here:
            subprocess.run(["umount", TRACEFS], capture_output=True, check=False)
            self.mounted_here = False


# ======================================================================== host readings


def _read_int(path: str) -> int:
    with open(path) as f:
        return int(f.read().split()[0])


def _full_scans() -> int:
    return _read_int(f"{THP_DIR}/khugepaged/full_scans")


def host_counters() -> dict:
    """``/proc/vmstat`` ``thp_*``/``pswp*``, every ``hugepages-*/stats/*`` and khugepaged's."""
    vm: dict[str, int] = {}
    with open("/proc/vmstat") as f:
        for line in f:
            k, v = line.split()
            if k.startswith("thp_") or k in ("pswpin", "pswpout"):
                vm[k] = int(v)
    mthp: dict[str, dict[str, int]] = {}
    for d in os.listdir(THP_DIR):
        sd = os.path.join(THP_DIR, d, "stats")
        if d.startswith("hugepages-") and os.path.isdir(sd):
            vals = {}
            for name in os.listdir(sd):
                with contextlib.suppress(OSError, ValueError):
                    vals[name] = _read_int(os.path.join(sd, name))
            mthp[d.removeprefix("hugepages-")] = vals
    kh = {k: _read_int(f"{THP_DIR}/khugepaged/{k}") for k in ("pages_collapsed", "full_scans")}
    return {"vmstat": vm, "mthp": mthp, "khugepaged": kh}


def _khugepaged_pid() -> int | None:
    """The ``khugepaged`` kernel thread (none while no PMD size is enabled)."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.find("(") + 1 : stat.rfind(")")]
        if comm == "khugepaged" and stat.rpartition(")")[2].split()[1] == "2":  # kthreadd's
            return int(d)
    return None


def _thread_state(pid: int) -> tuple[str, str, int] | None:
    """``(state, wchan, voluntary context switches)`` of a task, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
        with open(f"/proc/{pid}/wchan") as f:
            wchan = f.read().strip()
        with open(f"/proc/{pid}/status") as f:
            nvcsw = next(int(ln.split()[1]) for ln in f
                         if ln.startswith("voluntary_ctxt_switches:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return state, wchan, nvcsw


def _asleep(st: tuple[str, str, int] | None) -> bool:
    # asleep in its own wait between wakes (wchan: the kthread function, into which
    # the wait is inlined), not on a lock in the middle of a scan
    return st is not None and st[0] == "S" and st[1] in ("khugepaged", "khugepaged_wait_work",
                                                            "0", "")


def settle_khugepaged(timeout: float = _SETTLE_TIMEOUT) -> bool:
    """Wait until khugepaged sleeps between wakes and stays asleep for a while.

    Returns False if it did not within ``timeout`` (informational).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = _khugepaged_pid()
        if pid is None:
            return True
        st = _thread_state(pid)
        if _asleep(st):
            time.sleep(_SETTLE_QUIET)
            st2 = _thread_state(pid)
            if _asleep(st2) and st2[2] == st[2]:
                return True
        else:
            time.sleep(_KH_POLL)
    return False


def _write_knob(rel: str, value: int | str) -> None:
    with open(f"{THP_DIR}/{rel}", "w") as f:
        f.write(str(value))


class _Kmsg:
    """Kernel log records of priority warning or higher logged during the run."""

    def __init__(self) -> None:
        try:
            self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
            os.lseek(self.fd, 0, os.SEEK_END)
        except OSError:
            self.fd = -1

    def read(self) -> list[str]:
        out: list[str] = []
        if self.fd < 0:
            return out
        try:
            while True:
                try:
                    rec = os.read(self.fd, 8192).decode(errors="replace")
                except BrokenPipeError:  # records were overwritten; go on
                    continue
                except BlockingIOError:
                    break
                if not rec:
                    break
                head, _, msg = rec.partition(";")
                with contextlib.suppress(ValueError):
                    if int(head.split(",")[0]) & 7 <= 4:
                        out.append(msg.split("\n")[0])
        finally:
            os.close(self.fd)
            self.fd = -1
        return out


# ======================================================================== anchor


class _Anchor:
    """A process whose mm stays registered with khugepaged during the run.

    A first registration into an empty khugepaged list wakes the thread at once; with
    another mm always registered, the scenario's registration (``MADV_HUGEPAGE``, a
    fault) never makes khugepaged scan outside a ``khugepaged`` step.  The anchor's
    ``MADV_HUGEPAGE`` region holds no pages; it is re-advised after ``settings`` steps
    (registration needs a PMD size enabled).  A fresh process (exec), so its mm holds
    nothing else khugepaged could work on.
    """

    def __init__(self) -> None:
        sup, mine = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.popen = subprocess.Popen(
                [sys.executable, "-I", "-S", host_worker.__file__, "anchor",
                 str(os.getpid()), str(mine.fileno())],
                pass_fds=[mine.fileno()], stdin=subprocess.DEVNULL)
        finally:
            mine.close()
        self.sock = sup
        self.sock.settimeout(_REPLY_TIMEOUT)
        self.sock.recv(16)

    def register(self) -> None:
        self.sock.send(b"r")
        self.sock.recv(16)

    def close(self) -> None:
        self.sock.close()
        self.popen.kill()
        self.popen.wait()


# ======================================================================== supervisor


def host_run_settings(scenario: Scenario) -> dict[str, str]:
    """The knobs a host run starts with: the model's defaults known to this host, the
    scenario's ``[settings]``, and the executor's pace (:data:`PACE_KNOBS`):
    ``scan_sleep_millisecs`` :data:`IDLE_SCAN_SLEEP_MS` (lowered to
    :data:`FAST_SCAN_SLEEP_MS` during ``khugepaged`` steps) and ``pages_to_scan``
    :data:`FAST_PAGES_TO_SCAN`, whatever the scenario says: on the model they only set
    the pace of the simulated clock."""
    from thpsim.host.thp_sysfs import model_defaults

    values = model_defaults() | dict(scenario.settings)
    # khugepaged sleeps between steps (the model runs it only in khugepaged steps) and
    # makes full passes quickly when asked: other registered mms (a VM's guest RAM under
    # MADV_HUGEPAGE) would make 4096 pages per wake take seconds per pass
    values["khugepaged/scan_sleep_millisecs"] = str(IDLE_SCAN_SLEEP_MS)
    values["khugepaged/pages_to_scan"] = str(FAST_PAGES_TO_SCAN)
    return values


def _process_slots(scenario: Scenario) -> dict[str, int]:
    """Process name -> socket slot (``main`` 0, then one per ``fork`` step)."""
    slots = {"main": 0}
    for st in scenario.steps:
        if st.op == "fork":
            slots[st.child] = len(slots)
    return slots


def _wait_pidfd(pidfd: int, timeout: float) -> bool:
    r, _, _ = select.select([pidfd], [], [], timeout)
    return bool(r)


class _Run:
    def __init__(self, scenario: Scenario, trace: bool, zram_device: str) -> None:
        self.sc = scenario
        self.trace = trace
        self.zram_device = zram_device
        self.slots = _process_slots(scenario)
        self.socks: list[socket.socket] = []
        self.pids: dict[str, int] = {}
        self.pidfds: dict[str, int] = {}
        self.all_pids: set[int] = set()
        self.worker = -1
        self.tracer: _Tracer | None = None
        self.anchor: _Anchor | None = None
        self.lines: list[str] = []
        self.lines_reported = 0
        self.snapshots: dict[str, dict] = {}

    # --- processes ---
    def _start_worker(self) -> None:
        """Execute a fresh worker (``main``): a new mm, not registered with khugepaged."""
        pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                 for _ in self.slots]
        fds = [c.fileno() for _, c in pairs]
        try:
            self.popen = subprocess.Popen(
                [sys.executable, "-I", "-S", host_worker.__file__, str(os.getpid()),
                 *map(str, fds)], pass_fds=fds, stdin=subprocess.DEVNULL)
        finally:
            for _, c in pairs:
                c.close()
        self.socks = [s for s, _ in pairs]
        for s in self.socks:
            s.settimeout(_REPLY_TIMEOUT)
        self.worker = self.popen.pid
        self._adopt("main", self.popen.pid)
        regions = [[r.addr, r.length] for r in self.sc.regions]
        self._call("main", {"op": "map", "regions": regions})

    def _adopt(self, name: str, pid: int) -> None:
        self.pids[name] = pid
        self.all_pids.add(pid)
        self.pidfds[name] = os.pidfd_open(pid)

    def _call(self, name: str, msg: dict) -> dict:
        sock = self.socks[self.slots[name]]
        try:
            sock.send(json.dumps(msg).encode())
            data = sock.recv(_MSG_MAX)
        except (OSError, TimeoutError) as e:
            raise HostRunError(f"process {name!r} did not answer {msg['op']!r}: {e}") from None
        if not data:
            raise HostRunError(f"process {name!r} died during {msg['op']!r}")
        out = json.loads(data)
        if "error" in out:
            raise HostRunError(f"process {name!r}: {msg['op']}: {out['error']}")
        return out

    def _wait_gone(self, name: str) -> None:
        fd = self.pidfds.pop(name)
        try:
            if not _wait_pidfd(fd, _EXIT_TIMEOUT):
                raise HostRunError(f"process {name!r} did not exit")
        finally:
            os.close(fd)
        pid = self.pids.pop(name)
        if pid == self.worker:
            self.popen.wait()

    def _kill_all(self) -> None:
        for pid in list(self.pids.values()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for name in list(self.pids):
            with contextlib.suppress(HostRunError):
                self._wait_gone(name)
        for s in self.socks:
            s.close()

    # --- steps ---
    def step(self, step: Step) -> dict:
        out: dict[str, Any] = {"op": step.op, "process": step.process}
        out.update(getattr(self, f"op_{step.op}")(step))
        self._collect_trace()
        return out

    def _collect_trace(self) -> None:
        if self.tracer is not None:
            self.lines += self.tracer.filter(self.tracer.read_raw(), self.all_pids)

    def _probe(self, name: str) -> None:
        """Learn the hashed mm pointer of process ``name`` for the trace filter."""
        if self.tracer is None:
            return
        self._collect_trace()
        self._call(name, {"op": "probe"})
        rest = self.tracer.learn_mm(self.tracer.read_raw(), self.pids[name])
        self.lines += self.tracer.filter(rest, self.all_pids)

    def _addr(self, step: Step) -> int:
        return self.sc.region(step.region).addr

    def op_write(self, step: Step) -> dict:
        return self._call(step.process, {"op": "touch", "addr": self._addr(step),
                                         "runs": step.runs, "write": True})

    def op_read(self, step: Step) -> dict:
        return self._call(step.process, {"op": "touch", "addr": self._addr(step),
                                         "runs": step.runs, "write": False})

    def op_madvise(self, step: Step) -> dict:
        out = self._call(step.process, {"op": "madvise", "addr": self._addr(step),
                                        "runs": step.runs, "advice": ADVICE_NR[step.advice]})
        return {**out, "advice": step.advice}

    def _range(self, step: Step) -> tuple[int, int]:
        a, b = step.runs[0]
        return self._addr(step) + a * PAGE_SIZE, (b - a) * PAGE_SIZE

    def op_mprotect(self, step: Step) -> dict:
        addr, length = self._range(step)
        return self._call(step.process, {"op": "mprotect", "addr": addr, "len": length,
                                         "prot": PROT_NR[step.prot]})

    def op_munmap(self, step: Step) -> dict:
        addr, length = self._range(step)
        return self._call(step.process, {"op": "munmap", "addr": addr, "len": length})

    def op_fork(self, step: Step) -> dict:
        out = self._call(step.process, {"op": "fork", "slot": self.slots[step.child],
                                        "name": step.child})
        self._adopt(step.child, out["pid"])
        self._probe(step.child)
        return {"ret": 0, "errno": None, "child": step.child}

    def op_exit(self, step: Step) -> dict:
        self._call(step.process, {"op": "exit"})
        self._wait_gone(step.process)
        return {"ret": 0, "errno": None}

    def op_settings(self, step: Step) -> dict:
        from thpsim.host.thp_sysfs import apply

        try:
            apply({k: v for k, v in step.settings.items() if k not in PACE_KNOBS})
            out = {"ret": 0, "errno": None}
        except OSError as e:
            out = {"ret": -1, "errno": _errname(e.errno or errno_mod.EIO)}
        self._quiet()  # enabling a PMD size starts a khugepaged thread, which scans at once
        return out

    def _quiet(self) -> None:
        """Keep the anchor registered and wait for khugepaged to sleep."""
        if self.anchor is not None:
            self.anchor.register()
        settle_khugepaged()

    def op_khugepaged(self, step: Step) -> dict:
        start = _full_scans()
        seen = 0
        if _khugepaged_pid() is not None:  # no thread (no PMD size): full_scans stays
            # no try/finally: after an exception or a signal the knobs are restored
            # by host_thp_settings, and nothing may write them after that
            _write_knob("khugepaged/scan_sleep_millisecs", FAST_SCAN_SLEEP_MS)  # wakes it
            deadline = time.monotonic() + step.timeout_s
            while True:
                seen = _full_scans() - start
                if seen >= step.full_scans or time.monotonic() >= deadline:
                    break
                time.sleep(_KH_POLL)
            # back to sleep: the write wakes it once more; let that wake end
            _write_knob("khugepaged/scan_sleep_millisecs", IDLE_SCAN_SLEEP_MS)
            settle_khugepaged()
        return {"ret": None, "errno": None, "full_scans": seen,
                "timed_out": seen < step.full_scans}

    def op_snapshot(self, step: Step) -> dict:
        from thpsim.host.pagemap import host_layout
        from thpsim.mm.counters import counter_delta

        pid = self.pids[step.process]
        regions = {}
        for reg in self.sc.regions:
            lay = host_layout(pid, reg.addr, reg.addr + reg.length)
            regions[reg.name] = {"pmds": [{"picture": p.picture, "shared": p.shared,
                                           "folios": [list(f) for f in p.folios]}
                                          for p in lay.pmds]}
        now = host_counters()
        delta = counter_delta(now, self.start)
        kh = {k: now["khugepaged"][k] - self.start["khugepaged"][k]
              for k in ("pages_collapsed", "full_scans")}
        snap: dict[str, Any] = {"process": step.process, "regions": regions,
                                "counters": {"vmstat": delta["vmstat"], "mthp": delta["mthp"],
                                             "khugepaged": kh}}
        if self.tracer is not None:
            self._collect_trace()
            snap["trace"] = self.lines[self.lines_reported:]
            self.lines_reported = len(self.lines)
        self.snapshots[step.label] = snap
        return {"ret": None, "errno": None, "label": step.label}

    # --- the whole scenario ---
    def run(self) -> dict:
        from thpsim.host.swap import active_swaps, zram_swap

        with ExitStack() as stack:
            janitor = None
            if self.sc.swap_mb or self.trace:
                janitor = _Janitor()
                stack.callback(janitor.finish)
            if self.sc.swap_mb:
                dev = f"/dev/{self.zram_device}"
                # zram_swap refuses a device in use; check first so that the janitor
                # is never told to tear down somebody else's swap
                if dev in active_swaps():
                    raise HostUnavailable(f"{dev} is already used as swap")
                with contextlib.suppress(OSError), \
                        open(f"/sys/block/{self.zram_device}/disksize") as f:
                    if f.read().strip() != "0":
                        raise HostUnavailable(f"{dev} is already initialised "
                                              "(disksize is not 0)")
                if janitor:
                    janitor.note(swap=self.zram_device)
                stack.enter_context(zram_swap(f"{self.sc.swap_mb}M", self.zram_device))
            if self.trace:
                self.tracer = _Tracer(janitor)
                stack.callback(self.tracer.close)
            kmsg = _Kmsg()
            stack.callback(kmsg.read)  # closes it on errors
            stack.callback(self._kill_all)
            self.anchor = _Anchor()
            stack.callback(self.anchor.close)
            self._quiet()  # the knob writes woke khugepaged
            self._start_worker()
            self._probe("main")
            self._collect_trace()
            self.lines = []  # the scenario starts here
            self.start = host_counters()
            steps = [self.step(s) for s in self.sc.steps]
            self._collect_trace()
            dmesg = kmsg.read()
            out = {"scenario": self.sc.name, "executor": "host",
                   "kernel_or_policy": os.uname().release, "steps": steps,
                   "snapshots": self.snapshots, "dmesg": dmesg}
            if self.tracer is not None:
                out["trace"] = self.lines
            return out


def run_on_host(scenario: Scenario, trace: bool = False, *,
                state_file: str | None = None, lock_file: str | None = None,
                lock_timeout: float | None = 60.0, zram_device: str = "zram0") -> dict:
    """Run ``scenario`` on the machine's kernel; returns the result document.

    Parameters
    ----------
    scenario : Scenario
        A loaded scenario.
    trace : bool
        Record the ``huge_memory`` tracepoint lines (a private tracefs instance)
        of the scenario's processes and of khugepaged.
    state_file, lock_file, lock_timeout
        See :func:`thpsim.host.thp_sysfs.host_thp_settings` (defaults: its own).
    zram_device : str
        The zram device used for ``swap_mb``.

    Raises
    ------
    HostUnavailable
        Not Linux / not root / no THP sysfs, the lock is held, a state file of a
        killed run exists, zram is busy; :class:`HostRunError` when the run itself
        fails.  The knobs are restored and verified in every case.
    """
    from thpsim.host import thp_sysfs

    thp_sysfs.require_host()
    kw: dict[str, Any] = {"lock_timeout": lock_timeout}
    if state_file is not None:
        kw["state_file"] = state_file
    if lock_file is not None:
        kw["lock_file"] = lock_file
    values = host_run_settings(scenario)
    with _interruptible(), thp_sysfs.host_thp_settings(values, **kw):
        return _Run(scenario, trace, zram_device).run()


def _raise_interrupt(signum: int, frame: Any) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


@contextmanager
def _interruptible() -> Iterator[None]:
    """SIGINT/SIGTERM abort the run even where they were ignored (a background job).

    ``host_thp_settings`` restores the knobs on these signals and then does what
    the replaced handler did; were that "ignore", the run would go on under the
    original knobs and report a wrong result.
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) == signal.SIG_IGN:
            saved[sig] = signal.signal(sig, _raise_interrupt)
    try:
        yield
    finally:
        for sig, prev in saved.items():
            signal.signal(sig, prev)


@contextmanager
def _as_executor_error() -> Iterator[None]:
    try:
        yield
    except HostUnavailable as e:
        raise ExecutorUnavailable(str(e)) from None


def _host(scenario: Scenario, *, policy: str | None = None, trace: bool = False,
          **options) -> dict:
    """The ``host`` entry of the executor table (``policy`` is meaningless here)."""
    with _as_executor_error():
        return run_on_host(scenario, trace, **options)


register("host", _host)
