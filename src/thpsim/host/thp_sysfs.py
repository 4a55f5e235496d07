"""The host's THP knobs: read, change, and always put back.

The knobs are the writable files under ``/sys/kernel/mm/transparent_hugepage/``
(``enabled``, ``defrag``, ``use_zero_page``, ``shrink_underused``,
``shmem_enabled``, every ``hugepages-<N>kB/enabled`` and ``.../shmem_enabled``,
the writable ``khugepaged/*`` files, and whatever vendor knobs the running
kernel adds, such as ``anon_beside_full``).  Paths are relative to that
directory, as in :class:`thpsim.mm.settings.Settings`; values are the selected
word (``"madvise"``) or the number (``"511"``).

Changing knobs is global to the machine, so every change goes through
:func:`host_thp_settings`:

1. take an exclusive lock (``flock`` on :data:`DEFAULT_LOCK_FILE`) so two runs
   never interleave;
2. record every knob in a JSON state file (temp file + rename) *before*
   writing anything;
3. apply the requested values and run the body;
4. restore and verify every knob on exit, on exceptions and on SIGINT/SIGTERM,
   then delete the state file.

If the process is killed outright (SIGKILL, power cut of the controlling
session), the state file stays and :func:`restore_from_state_file` (``thpsim
host restore``) puts the knobs back.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from thpsim.host.errors import HostBusy, HostUnavailable, SettingsMismatch

__all__ = [
    "DEFAULT_LOCK_FILE",
    "DEFAULT_STATE_FILE",
    "THP_DIR",
    "SysfsWriteError",
    "apply",
    "cli_restore",
    "host_lock",
    "host_thp_settings",
    "knob_paths",
    "model_defaults",
    "parse_value",
    "read_knob",
    "read_state_file",
    "require_host",
    "restore",
    "restore_from_state_file",
    "snapshot",
    "verify",
    "write_state_file",
]

THP_DIR = "/sys/kernel/mm/transparent_hugepage"
DEFAULT_LOCK_FILE = "/run/thpsim.lock"
DEFAULT_STATE_FILE = "/run/thpsim-thp-state.json"

STATE_FORMAT = "thpsim-thp-state"
STATE_VERSION = 1

_APPLY_PASSES = 3  # knobs that depend on each other (shmem "force"/"inherit") need a retry


class SysfsWriteError(OSError):
    """A knob could not be written; ``str()`` is one line naming the path and value."""

    def __init__(self, err: int, path: str, value: str) -> None:
        super().__init__(err, os.strerror(err), path)
        self.value = value

    def __str__(self) -> str:
        return f"cannot write {self.value!r} to {self.filename}: {self.strerror}"


# ---------------------------------------------------------------- host check


def require_host(thp_dir: str = THP_DIR) -> None:
    """Check that the real kernel's THP knobs can be driven from here.

    Raises
    ------
    HostUnavailable
        One line naming what is missing: Linux, root, the THP sysfs directory,
        or a writable sysfs.
    """
    if not sys.platform.startswith("linux"):
        raise HostUnavailable(f"the host bridge needs Linux (this is {sys.platform})")
    if os.geteuid() != 0:
        raise HostUnavailable("the host bridge needs root (THP sysfs writes, PFNs in pagemap, "
                              "/proc/kpageflags)")
    if not os.path.isfile(os.path.join(thp_dir, "enabled")):
        raise HostUnavailable(f"no THP sysfs at {thp_dir} "
                              "(kernel built without CONFIG_TRANSPARENT_HUGEPAGE?)")
    if not os.access(os.path.join(thp_dir, "enabled"), os.W_OK):
        raise HostUnavailable(f"{thp_dir} is not writable (read-only sysfs, e.g. in a container)")


# ---------------------------------------------------------------- reading


def parse_value(text: str) -> str:
    """The selected word of ``"always [madvise] never"``, or the stripped text."""
    lb = text.find("[")
    if lb >= 0:
        rb = text.find("]", lb)
        if rb > lb:
            return text[lb + 1 : rb]
    return text.strip()


def _sort_key(rel: str) -> tuple[int, int, str]:
    # top-level files, then hugepages-<N>kB by size, then khugepaged/*
    head, _, _tail = rel.partition("/")
    if "/" not in rel:
        return (0, 0, rel)
    if head.startswith("hugepages-") and head.endswith("kB"):
        try:
            return (1, int(head[len("hugepages-") : -2]), rel)
        except ValueError:
            pass
    return (2, 0, rel)


def knob_paths(thp_dir: str = THP_DIR) -> list[str]:
    """The writable files under the THP directory (relative paths; ``stats/`` skipped).

    Raises
    ------
    HostUnavailable
        If the directory does not exist.
    """
    if not os.path.isdir(thp_dir):
        raise HostUnavailable(f"no THP sysfs at {thp_dir}")
    out = []
    for root, dirs, files in os.walk(thp_dir):
        dirs[:] = [d for d in dirs if d != "stats"]
        for name in files:
            full = os.path.join(root, name)
            try:
                mode = os.stat(full).st_mode
            except OSError:
                continue
            if stat.S_ISREG(mode) and mode & 0o222 and mode & 0o444:
                out.append(os.path.relpath(full, thp_dir))
    return sorted(out, key=_sort_key)


def _rel(path: str, thp_dir: str) -> str:
    p = path.removeprefix(thp_dir.rstrip("/") + "/")
    if p.startswith("/") or ".." in p.split("/"):
        raise SysfsWriteError(errno.ENOENT, path, "")
    return p


def read_knob(rel: str, thp_dir: str = THP_DIR) -> str:
    """One knob's value word (``"madvise"``, ``"511"``)."""
    with open(os.path.join(thp_dir, _rel(rel, thp_dir))) as f:
        return parse_value(f.read())


def snapshot(thp_dir: str = THP_DIR) -> dict[str, str]:
    """Every knob's current value, in a stable order (top level, sizes, khugepaged).

    Read-only files (``hpage_pmd_size``, ``khugepaged/full_scans``, the
    ``stats/`` counters) are not knobs and are left out.
    """
    return {rel: read_knob(rel, thp_dir) for rel in knob_paths(thp_dir)}


# ---------------------------------------------------------------- writing


def _write(full: str, value: str) -> None:
    fd = os.open(full, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def apply(values: Mapping[str, Any], thp_dir: str = THP_DIR) -> list[str]:
    """Write knobs; those already at the value are not rewritten.

    Knobs that fail are retried after the others (some shmem values depend on
    each other), up to three passes.

    Parameters
    ----------
    values : Mapping of str to str
        Relative (or absolute) knob path to value word.

    Returns
    -------
    list of str
        The knobs actually written.

    Raises
    ------
    SysfsWriteError
        For a path that is not a knob on this host, or the kernel's error for
        the first value that still fails, naming path and value.
    """
    known = set(knob_paths(thp_dir))
    pending: list[tuple[str, str]] = []
    for path, value in values.items():
        rel = _rel(path, thp_dir)
        val = str(value).strip()
        if rel not in known:
            full = os.path.join(thp_dir, rel)
            err = errno.EACCES if os.path.exists(full) else errno.ENOENT
            raise SysfsWriteError(err, full, val)
        pending.append((rel, val))
    written: list[str] = []
    for _ in range(_APPLY_PASSES):
        failed: list[tuple[str, str, SysfsWriteError]] = []
        for rel, val in pending:
            full = os.path.join(thp_dir, rel)
            if read_knob(rel, thp_dir) == val:
                continue
            try:
                _write(full, val)
            except OSError as e:
                failed.append((rel, val, SysfsWriteError(e.errno or errno.EIO, full, val)))
                continue
            written.append(rel)
        if not failed:
            return written
        if len(failed) == len(pending):
            break
        pending = [(r, v) for r, v, _ in failed]
    raise failed[0][2]


def restore(saved: Mapping[str, str], thp_dir: str = THP_DIR) -> list[str]:
    """Put every knob of ``saved`` back (see :func:`apply`); returns the knobs written."""
    return apply(saved, thp_dir)


def verify(saved: Mapping[str, str], thp_dir: str = THP_DIR) -> None:
    """Re-read the knobs of ``saved`` and compare.

    Raises
    ------
    SettingsMismatch
        Listing every knob whose value differs (or that disappeared).
    """
    bad: dict[str, tuple[str | None, str | None]] = {}
    for rel, want in saved.items():
        try:
            got: str | None = read_knob(rel, thp_dir)
        except OSError:
            got = None
        if got != str(want).strip():
            bad[rel] = (str(want), got)
    if bad:
        raise SettingsMismatch(bad, f"THP settings under {thp_dir}")


def model_defaults(thp_dir: str = THP_DIR) -> dict[str, str]:
    """The model's upstream defaults, restricted to the knobs this host has.

    That is :meth:`thpsim.mm.settings.Settings.as_dict` (``enabled=always``,
    2048kB ``inherit``, other sizes ``never``, ``defrag=madvise``,
    ``use_zero_page=1``, khugepaged defaults).  Knobs the model does not know
    (``shmem_enabled``, vendor knobs such as ``anon_beside_full``) are not in
    the result, so applying it leaves them at their current values.
    """
    from thpsim.mm.settings import Settings

    host = set(knob_paths(thp_dir))
    return {k: v for k, v in Settings().as_dict().items() if k in host}


# ---------------------------------------------------------------- lock

_held_locks: dict[str, tuple[int, int, int]] = {}  # path -> (pid, fd, depth)
_held_guard = threading.Lock()


@contextmanager
def host_lock(lock_file: str = DEFAULT_LOCK_FILE, timeout: float | None = 60.0) -> Iterator[None]:
    """Exclusive machine-wide lock (``flock``) for runs that touch THP state.

    Re-entrant within one process.  The holder's pid is written into the file
    so a waiting run can name it.

    Parameters
    ----------
    lock_file : str
        The lock file (created if missing).
    timeout : float or None
        Seconds to wait for another holder; ``None`` waits forever.

    Raises
    ------
    HostBusy
        If the lock is still held after ``timeout`` seconds.
    HostUnavailable
        If the lock file cannot be created.
    """
    path = os.path.abspath(lock_file)
    pid = os.getpid()
    with _held_guard:
        held = _held_locks.get(path)
        if held is not None and held[0] == pid:
            _held_locks[path] = (pid, held[1], held[2] + 1)
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _held_guard:
                p, fd, depth = _held_locks[path]
                _held_locks[path] = (p, fd, depth - 1)
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise HostUnavailable(f"cannot open lock file {path}: {e.strerror}") from None
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    try:
                        holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
                    except OSError:
                        holder = ""
                    who = f" by pid {holder}" if holder else ""
                    raise HostBusy(f"{path} is held{who}: another thpsim run is using the "
                                   f"host (waited {timeout:g} s)") from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{pid}\n".encode(), 0)
        with _held_guard:
            _held_locks[path] = (pid, fd, 1)
        try:
            yield
        finally:
            with _held_guard:
                _held_locks.pop(path, None)
            if os.getpid() == pid:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- state file


def write_state_file(path: str, saved: Mapping[str, str], thp_dir: str = THP_DIR) -> None:
    """Record ``saved`` in ``path`` atomically (temp file in the same directory + rename)."""
    path = os.path.abspath(path)
    doc = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "thp_dir": thp_dir,
        "kernel": os.uname().release,
        "pid": os.getpid(),
        "created": time.time(),
        "values": dict(saved),
    }
    d = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=d, prefix="." + os.path.basename(path) + ".")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def read_state_file(path: str) -> dict[str, Any]:
    """Load and check a state file; returns the whole document (``values`` = the knobs).

    Raises
    ------
    ValueError
        If the file is not a thpsim THP state file.
    """
    with open(path) as f:
        doc = json.load(f)
    if (not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT
            or not isinstance(doc.get("values"), dict)):
        raise ValueError(f"{path} is not a thpsim THP state file")
    return doc


def restore_from_state_file(path: str = DEFAULT_STATE_FILE, *,
                            lock_file: str = DEFAULT_LOCK_FILE,
                            lock_timeout: float | None = 60.0,
                            missing_ok: bool = True) -> list[str]:
    """Undo a run that was killed before it could restore (``thpsim host restore``).

    Takes the host lock, writes back every recorded knob, verifies, and
    deletes the state file.

    Returns
    -------
    list of str
        The knobs that had to be written (empty if all were already right or
        there was no state file and ``missing_ok``).

    Raises
    ------
    FileNotFoundError
        No state file and not ``missing_ok``.
    SettingsMismatch, SysfsWriteError, HostBusy
        If the values cannot be put back; the state file is then kept.
    """
    with host_lock(lock_file, lock_timeout):
        if not os.path.exists(path):
            if missing_ok:
                return []
            raise FileNotFoundError(errno.ENOENT, "no THP state file", path)
        doc = read_state_file(path)
        thp_dir = doc.get("thp_dir") or THP_DIR
        saved = doc["values"]
        written = restore(saved, thp_dir)
        verify(saved, thp_dir)
        os.unlink(path)
        return written


# ---------------------------------------------------------------- the context manager

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Guard:
    """Restores once, from the owning process only; handles SIGINT/SIGTERM."""

    def __init__(self, saved: dict[str, str], state_file: str, thp_dir: str) -> None:
        self.saved = saved
        self.state_file = state_file
        self.thp_dir = thp_dir
        self.owner = os.getpid()
        self.done = False
        self.busy = False
        self.pending: list[int] = []
        self.prev: dict[int, Any] = {}

    def restore_once(self) -> None:
        if self.done or os.getpid() != self.owner:
            return
        self.busy = True
        try:
            restore(self.saved, self.thp_dir)
            verify(self.saved, self.thp_dir)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.state_file)
            self.done = True
        finally:
            self.busy = False

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for sig in _SIGNALS:
            prev = signal.getsignal(sig)
            if prev == signal.SIG_IGN:
                # the process ignores it (nohup, a background job's SIGINT): restoring on
                # it would change the knobs under a run that carries on
                continue
            self.prev[sig] = prev
            signal.signal(sig, self._handler)

    def uninstall(self) -> None:
        if os.getpid() != self.owner:
            return
        for sig, prev in self.prev.items():
            signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
        self.prev = {}

    def chain(self, signum: int, frame: Any, prev: Any) -> None:
        """Do what the handler we replaced would have done."""
        if callable(prev):
            prev(signum, frame)
            return
        if prev == signal.SIG_IGN:
            return
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    def _handler(self, signum: int, frame: Any) -> None:
        prev = self.prev.get(signum, signal.SIG_DFL)
        if os.getpid() != self.owner:  # a forked child inherited the handler
            self.chain(signum, frame, prev)
            return
        if self.busy:
            self.pending.append(signum)
            return
        self.restore_once()
        self.uninstall()
        self.chain(signum, frame, prev)


@contextmanager
def host_thp_settings(values: Mapping[str, Any] | None = None, *,
                      state_file: str = DEFAULT_STATE_FILE,
                      lock_file: str = DEFAULT_LOCK_FILE,
                      lock_timeout: float | None = 60.0,
                      thp_dir: str = THP_DIR,
                      handle_signals: bool = True) -> Iterator[dict[str, str]]:
    """Apply THP knobs for the duration of a block; always restore and verify them.

    Under the host lock: record every knob in ``state_file`` (atomically)
    before anything changes, apply ``values``, yield, then restore and verify
    every recorded knob and delete the state file.  The restore also happens
    when the body raises and on SIGINT/SIGTERM (the handlers restore first,
    then behave like the handler they replaced: ``KeyboardInterrupt`` for
    SIGINT, ``SystemExit(143)`` for SIGTERM).  Forked children inherit the
    handlers but never restore: only the process that entered the block does.

    Parameters
    ----------
    values : Mapping of str to str, optional
        Knobs to apply, e.g. ``model_defaults() | {"enabled": "madvise"}``.
    state_file : str
        Where the original values are recorded while the block runs.
    lock_file, lock_timeout
        See :func:`host_lock`.
    handle_signals : bool
        Install the SIGINT/SIGTERM handlers (main thread only).

    Yields
    ------
    dict of str to str
        The recorded original values.

    Raises
    ------
    HostUnavailable
        Not root / no THP sysfs, or ``state_file`` already exists (an earlier
        run was killed: run :func:`restore_from_state_file` first).
    HostBusy
        Another run holds the lock.
    """
    require_host(thp_dir)
    state_file = os.path.abspath(state_file)
    with host_lock(lock_file, lock_timeout):
        if os.path.exists(state_file):
            raise HostUnavailable(
                f"{state_file} exists: an earlier run did not restore the THP settings; "
                "run `thpsim host restore` first")
        saved = snapshot(thp_dir)
        guard = _Guard(saved, state_file, thp_dir)
        try:
            write_state_file(state_file, saved, thp_dir)
            if handle_signals:
                guard.install()
            if values:
                apply(values, thp_dir)
            yield dict(saved)
        finally:
            try:
                guard.restore_once()
            finally:
                prev = dict(guard.prev)
                guard.uninstall()
                if guard.pending and os.getpid() == guard.owner:
                    sig = guard.pending[0]
                    guard.chain(sig, None, prev.get(sig, signal.SIG_DFL))


# ---------------------------------------------------------------- command line


def cli_restore(state_file: str = DEFAULT_STATE_FILE, *,
                lock_file: str = DEFAULT_LOCK_FILE) -> int:
    """``thpsim host restore``: undo a killed run; returns the exit code.

    0 when restored (or there was nothing to restore), 2 when the host cannot
    be used (:class:`HostUnavailable`), 1 when the values could not be put back.
    """
    try:
        require_host()
        written = restore_from_state_file(state_file, lock_file=lock_file, missing_ok=False)
    except FileNotFoundError:
        print(f"no THP state file at {state_file}: nothing to restore")
        return 0
    except HostUnavailable as e:
        print(f"thpsim: {e}", file=sys.stderr)
        return e.exit_code
    except (SettingsMismatch, OSError, ValueError) as e:
        print(f"thpsim: restore failed: {e}", file=sys.stderr)
        return 1
    what = ", ".join(f"{k}" for k in written) if written else "all knobs were already right"
    print(f"restored THP settings from {state_file} ({what})")
    return 0


if __name__ == "__main__":  # python -m thpsim.host.thp_sysfs restore [STATE_FILE]
    if len(sys.argv) < 2 or sys.argv[1] != "restore":
        print("usage: python -m thpsim.host.thp_sysfs restore [STATE_FILE]", file=sys.stderr)
        sys.exit(2)
    sys.exit(cli_restore(*sys.argv[2:3]))
