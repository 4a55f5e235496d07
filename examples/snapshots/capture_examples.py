"""Capture the example snapshots of examples/snapshots/ (root; see README.md there).

Usage::

    sudo .venv/bin/python examples/snapshots/capture_examples.py [--only NAME] [--out DIR]

Each program runs twice: under the machine's THP settings as they are (``NAME``) and
with ``enabled=always`` + ``hugepages-64kB/enabled=always`` (``NAME-mthp64k``), applied
with :func:`thpsim.host.thp_sysfs.host_thp_settings`, which restores and verifies the
knobs afterwards.  A program does its work, says it is ready and waits; it is then
captured (read-only, it keeps running) and stopped.  Every process started here is
stopped here, also on errors.

Programs:

* ``redis``: Debian's ``redis-server`` (jemalloc) on a private unix socket in a
  temporary directory (no TCP port, no persistence); ``redis-benchmark`` writes
  200000 random keys with 512-byte values (SET), then a Lua script deletes two keys
  in three (every key whose number is not a multiple of 3).  ``disable-thp no``: by
  default Redis turns THP off for itself (``PR_SET_THP_DISABLE``) when
  ``enabled=always``, which would hide what mTHP does to its heap.
* ``numpy``: CPython with NumPy: 2000 small arrays (1-64 KiB), 40 medium (256 KiB-4
  MiB), 3 large (64 MiB, NumPy madvises them MADV_HUGEPAGE), some arithmetic, then
  half of the small/medium arrays and one large one are freed.
* ``malloc-churn``: malloc_churn.c (glibc malloc, 4 threads = 4 arenas, 20000 random
  blocks per thread, 60% freed, a third of those reallocated).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

HERE = os.path.dirname(os.path.abspath(__file__))
MTHP = {"enabled": "always", "hugepages-64kB/enabled": "always"}
SETTLE_S = 1.0  # let the target go idle before the capture

NUMPY_PROG = r"""
import sys, numpy as np
rng = np.random.default_rng(1)
small = [np.full(int(rng.integers(128, 8192)), 1.0) for _ in range(2000)]
medium = [np.ones(int(rng.integers(32 << 10, 512 << 10))) for _ in range(40)]
large = [np.ones(8 << 20) for _ in range(3)]          # 64 MiB each
for a in large:
    a *= 2.0
    a += np.arange(a.size) % 7
total = sum(float(a.sum()) for a in small + medium + large)
del small[::2], medium[::2], large[1]                  # free half of them, one large
print("ready", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def _proc(argv: list[str], **kw) -> Iterator[subprocess.Popen]:
    """Start ``argv``; always stop it (SIGTERM, then SIGKILL) and reap it."""
    p = subprocess.Popen(argv, **kw)
    try:
        yield p
    finally:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _wait_ready(p: subprocess.Popen) -> None:
    line = p.stdout.readline()
    if line.strip() != b"ready":
        raise RuntimeError(f"{p.args[0]} did not become ready: {line!r}")


def run_numpy(capture: Callable[[int], None]) -> str:
    with _proc([sys.executable, "-c", NUMPY_PROG], stdin=subprocess.PIPE,
               stdout=subprocess.PIPE) as p:
        _wait_ready(p)
        time.sleep(SETTLE_S)
        capture(p.pid)
        p.stdin.close()
        p.wait(30)
    return "CPython + NumPy workload (see capture_examples.py)"


def run_malloc(capture: Callable[[int], None]) -> str:
    with tempfile.TemporaryDirectory(prefix="thpsim-churn-") as d:
        exe = os.path.join(d, "malloc_churn")
        subprocess.run(["cc", "-O2", "-pthread", os.path.join(HERE, "malloc_churn.c"), "-o",
                        exe], check=True)
        with _proc([exe], stdin=subprocess.PIPE, stdout=subprocess.PIPE) as p:
            _wait_ready(p)
            time.sleep(SETTLE_S)
            capture(p.pid)
            p.stdin.close()
            p.wait(30)
    return "glibc malloc churn (malloc_churn.c)"


def run_redis(capture: Callable[[int], None]) -> str:
    for tool in ("redis-server", "redis-benchmark", "redis-cli"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is missing: apt-get install redis-server redis-tools")
    with tempfile.TemporaryDirectory(prefix="thpsim-redis-") as d:
        sock = os.path.join(d, "redis.sock")
        conf = os.path.join(d, "redis.conf")
        with open(conf, "w") as f:
            f.write(f"port 0\nunixsocket {sock}\nunixsocketperm 700\ndir {d}\nsave \"\"\n"
                    "appendonly no\ndaemonize no\nlogfile \"\"\nloglevel warning\ndisable-thp no\n")
        with _proc(["redis-server", conf], stdout=subprocess.DEVNULL) as p:
            for _ in range(100):
                if os.path.exists(sock):
                    break
                time.sleep(0.05)
            cli = ["redis-cli", "-s", sock]
            subprocess.run(["redis-benchmark", "-s", sock, "-t", "set", "-n", "400000",
                            "-r", "200000", "-d", "512", "-q"], check=True,
                           stdout=subprocess.DEVNULL)
            lua = ("local n = 0 for i = 0, 199999 do if i % 3 ~= 0 then "
                   "n = n + redis.call('DEL', string.format('key:%012d', i)) end end return n")
            subprocess.run([*cli, "EVAL", lua, "0"], check=True, stdout=subprocess.DEVNULL)
            dbsize = subprocess.run([*cli, "DBSIZE"], check=True, capture_output=True,
                                    text=True).stdout.strip()
            time.sleep(SETTLE_S)
            capture(p.pid)
            subprocess.run([*cli, "SHUTDOWN", "NOSAVE"], stdout=subprocess.DEVNULL)
            p.wait(30)
    return (f"redis-server after 400000 SETs (-r 200000, 512 B) and 2/3 deleted; "
            f"{dbsize} keys left")


PROGRAMS = {"redis": run_redis, "numpy": run_numpy, "malloc-churn": run_malloc}


def main() -> int:
    from thpsim.host.thp_sysfs import host_thp_settings
    from thpsim.snapshot.capture import capture
    from thpsim.snapshot.io import save_snapshot

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=sorted(PROGRAMS), action="append")
    ap.add_argument("--out", default=HERE)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for name in args.only or PROGRAMS:
        for variant, knobs in (("", None), ("-mthp64k", MTHP)):
            out = os.path.join(args.out, f"{name}{variant}.thpsnap")

            applied = ",".join(f"{k}={v}" for k, v in (knobs or {}).items()) or "host as is"

            def cap(pid: int, out: str = out, name: str = name, applied: str = applied) -> None:
                snap = capture(pid)
                snap.meta["program"] = name
                snap.meta["settings_applied"] = applied
                save_snapshot(snap, out)
                c = snap.state_counts()
                print(f"{out}: {snap.nr_pages} pages, {c['present']} present, "
                      f"{os.path.getsize(out)} bytes")

            with host_thp_settings(knobs) if knobs else contextlib.nullcontext():
                what = PROGRAMS[name](cap)
            print(f"  {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
