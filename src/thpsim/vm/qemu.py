"""Boot the pinned kernel under QEMU (TCG), run one guest program, power off.

:func:`run_in_vm` is the whole interface.  The guest's ``/init`` mounts proc, sysfs,
devtmpfs and tracefs (``/sys/kernel/tracing``), loads the zram modules, sets up
zram swap, runs the program in ``/files`` with the guest Python on ``PATH`` and
thpsim on ``PYTHONPATH``, prints the program's stdout and stderr (base64, so the
serial line discipline and stray kernel messages cannot corrupt them) between
markers carrying a per-run nonce, and powers off with sysrq.  QEMU runs in its
own process group under a hard timeout; the whole group is killed on expiry.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from thpsim.vm.errors import VmError, VmUnavailable
from thpsim.vm.initramfs import (
    GUEST_LIB,
    GUEST_PYHOME,
    GUEST_THPSIM,
    base_image,
    build_overlay,
    find_busybox,
)
from thpsim.vm.kernel import Kernel, prepare_kernel

__all__ = ["QEMU", "VmResult", "qemu_command", "require_vm", "run_in_vm"]

QEMU = "qemu-system-x86_64"
QEMU_INSTALL = "apt-get install -y --no-install-recommends qemu-system-x86"
MARK = "@@THPSIM"


@dataclass
class VmResult:
    """What one VM run produced.

    ``exit_code`` is the guest program's exit status (``None`` when the run timed out
    or the guest never reported).  ``boot_s`` is host wall time from starting QEMU
    to ``/init`` running; ``guest_init_uptime_s`` the guest's own uptime then;
    ``run_s`` the guest program's run time (guest clock); ``total_s`` the host
    wall time of the whole call including the initramfs build.
    """

    stdout: str
    stderr: str
    exit_code: int | None
    kernel_version: str
    timed_out: bool = False
    boot_s: float | None = None
    guest_init_uptime_s: float | None = None
    run_s: float | None = None
    total_s: float = 0.0
    image_s: float = 0.0
    initrd_bytes: int = 0
    warnings: list[str] = field(default_factory=list)
    console: str = ""
    qemu_stderr: str = ""

    @property
    def ok(self) -> bool:
        return not self.timed_out and self.exit_code == 0

    def check(self) -> VmResult:
        """Return self if the program exited 0; else raise :class:`VmError` (one line)."""
        if self.timed_out:
            raise VmError(f"VM run timed out after {self.total_s:.0f}s")
        if self.exit_code is None:
            tail = self.console.strip().splitlines()[-1:] or ["(no console output)"]
            raise VmError(f"guest did not report a result; console ends: {tail[0]!r}")
        if self.exit_code != 0:
            last = self.stderr.strip().splitlines()[-1:] or [""]
            raise VmError(f"guest program exited {self.exit_code}: {last[0]}")
        return self


def require_vm(kernel_dir: str | os.PathLike | None = None) -> Kernel:
    """Check every prerequisite; return the prepared kernel or raise :class:`VmUnavailable`."""
    if shutil.which(QEMU) is None:
        raise VmUnavailable(f"{QEMU} not found; install it: {QEMU_INSTALL}")
    find_busybox()
    return prepare_kernel(kernel_dir)


#: QEMU 7.2's TCG emulation of AVX2 gives wrong results for NumPy's AVX2 ``argsort`` of
#: int64 (``np.unique(..., return_inverse=True)`` returned duplicates in the guest, which
#: made the layout reader attribute one folio to two heads: docs/vm.md).  The guest CPU
#: therefore has no AVX2/AVX-512, and NumPy there dispatches to its SSE/AVX paths.
QEMU_CPU = "max,avx2=off,avx512f=off"


def qemu_command(kernel: Kernel, initrd: Path, *, memory: str = "2G", smp: int = 2) -> list[str]:
    return [QEMU, "-accel", "tcg,thread=multi", "-cpu", QEMU_CPU, "-m", memory,
            "-smp", str(smp), "-nographic", "-no-reboot",
            "-kernel", str(kernel.vmlinuz), "-initrd", str(initrd),
            "-append", "console=ttyS0 panic=-1 quiet"]


def _init_script(nonce: str, swap_mb: int) -> str:
    m = f"{MARK}-{{}} {nonce}"
    return f"""#!/bin/busybox sh
/bin/busybox --install -s
export PATH={GUEST_PYHOME}/bin:/bin:/sbin:/usr/bin:/usr/sbin HOME=/root TERM=dumb
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tracefs tracefs /sys/kernel/tracing
echo 1 > /proc/sys/kernel/printk
warn() {{ echo "{m.format('WARN')} $*"; }}
echo "{m.format('INIT')} $(cut -d' ' -f1 /proc/uptime) $(uname -r)"
for ko in /lib/modules/*.ko; do insmod "$ko" || warn "insmod $ko failed"; done
if [ {swap_mb} -gt 0 ]; then
  if echo {swap_mb}M > /sys/block/zram0/disksize && mkswap /dev/zram0 >/dev/null \\
     && swapon /dev/zram0; then :; else warn "zram swap setup failed"; fi
fi
export LD_LIBRARY_PATH={GUEST_LIB} PYTHONHOME={GUEST_PYHOME} PYTHONPATH={GUEST_THPSIM}
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 LANG=C.UTF-8
cd /files
t0=$(cut -d' ' -f1 /proc/uptime)
echo "{m.format('START')} $t0"
sh /thpsim-vm/run.sh </dev/null >/tmp/stdout 2>/tmp/stderr
rc=$?
t1=$(cut -d' ' -f1 /proc/uptime)
echo "{m.format('BEGIN')}"
base64 /tmp/stdout
echo "{m.format('STDERR')}"
base64 /tmp/stderr
echo "{m.format('END')} rc=$rc t0=$t0 t1=$t1"
# let the serial port drain (the host stops QEMU as soon as it has the END line)
sleep 2
echo o > /proc/sysrq-trigger
sleep 30
"""


class _Console:
    """Collects QEMU's serial output; notes when /init started and when it reported."""

    def __init__(self, stream, nonce: str, t_start: float):
        self.buf = bytearray()
        self.t_init: float | None = None
        self.t_end: float | None = None
        self.ended = threading.Event()
        self._init = f"{MARK}-INIT {nonce}".encode()
        self._end = f"{MARK}-END {nonce}".encode()
        self._t0 = t_start
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream) -> None:
        scan = 0  # markers are searched only in what arrived since (plus an overlap)
        while chunk := stream.read1(65536):
            self.buf += chunk
            lo = max(0, scan - 128)
            if self.t_init is None and self.buf.find(self._init, lo) >= 0:
                self.t_init = time.monotonic() - self._t0
            if self.t_end is None:
                i = self.buf.find(self._end, lo)
                if i >= 0 and self.buf.find(b"\n", i) >= 0:
                    self.t_end = time.monotonic() - self._t0
                    self.ended.set()
                elif i >= 0:
                    scan = i  # the END line is still incomplete: look again from it
                    continue
            scan = len(self.buf)
        self.ended.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def _b64(lines: list[str]) -> str:
    try:
        return base64.b64decode("".join(lines), validate=False).decode(errors="replace")
    except (binascii.Error, ValueError) as e:
        raise VmError(f"guest output block is corrupt: {e}") from None


def _parse(console: str, nonce: str, res: VmResult) -> None:
    lines = console.replace("\r", "").split("\n")
    tag = {k: f"{MARK}-{k} {nonce}" for k in ("INIT", "WARN", "BEGIN", "STDERR", "END")}
    out: list[str] = []
    err: list[str] = []
    cur: list[str] | None = None
    for raw in lines:
        # a marker may follow terminal escapes on the same line (SeaBIOS clears the screen)
        i = raw.find(f"{MARK}-")
        line = raw[i:] if i > 0 and raw[i:].split(" ", 2)[1:2] == [nonce] else raw
        if line.startswith(tag["INIT"]):
            parts = line[len(tag["INIT"]):].split()
            if parts:
                res.guest_init_uptime_s = float(parts[0])
            if len(parts) > 1:
                res.kernel_version = parts[1]
        elif line.startswith(tag["WARN"]):
            res.warnings.append(line[len(tag["WARN"]):].strip())
        elif line.startswith(tag["BEGIN"]):
            cur = out
        elif line.startswith(tag["STDERR"]):
            cur = err
        elif line.startswith(tag["END"]):
            kv = dict(p.split("=", 1) for p in line[len(tag["END"]):].split() if "=" in p)
            try:
                rc, t0, t1 = int(kv["rc"]), float(kv["t0"]), float(kv["t1"])
            except (KeyError, ValueError):
                res.warnings.append(f"truncated result line: {line!r}")
                return
            res.stdout, res.stderr = _b64(out), _b64(err)
            res.exit_code, res.run_s = rc, t1 - t0
            return
        elif cur is not None and re.fullmatch(r"[A-Za-z0-9+/=]*", line):
            cur.append(line)
        # anything else inside a block is a stray kernel message: ignored


def run_in_vm(guest_argv: list[str], files: dict[str, bytes] | None = None, timeout_s: float = 120,
              swap_mb: int = 64, *, kernel_dir: str | os.PathLike | None = None,
              memory: str = "2G", smp: int = 2) -> VmResult:
    """Boot the pinned kernel, run ``guest_argv`` in ``/files`` (holding ``files``), power off.

    ``guest_argv[0]`` is looked up on the guest ``PATH`` (``python3`` is the host's
    interpreter, copied in).  A run longer than ``timeout_s`` (boot included) is
    killed and returned with ``timed_out=True``.

    Raises
    ------
    VmUnavailable
        QEMU, busybox or the kernel packages are missing (one line, what to install).
    VmError
        A verification or build step failed.
    """
    if not guest_argv:
        raise ValueError("guest_argv must not be empty")
    t_call = time.monotonic()
    kernel = require_vm(kernel_dir)
    base = base_image(kernel)
    nonce = secrets.token_hex(8)
    run_sh = "exec " + " ".join(shlex.quote(a) for a in guest_argv) + "\n"
    overlay = build_overlay(_init_script(nonce, int(swap_mb)), dict(files or {}),
                            {"thpsim-vm/run.sh": run_sh.encode()})
    res = VmResult(stdout="", stderr="", exit_code=None, kernel_version=kernel.version)
    with tempfile.TemporaryDirectory(prefix="thpsim-vm-") as td:
        initrd = Path(td) / "initrd.cpio.gz"
        with initrd.open("wb") as f, base.path.open("rb") as b:
            shutil.copyfileobj(b, f, 1 << 20)
            f.write(overlay)
        res.initrd_bytes = initrd.stat().st_size
        res.image_s = time.monotonic() - t_call
        cmd = qemu_command(kernel, initrd, memory=memory, smp=smp)
        t0 = time.monotonic()
        remaining = max(1.0, timeout_s - res.image_s)
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        try:
            con = _Console(proc.stdout, nonce, t0)
            errbuf: list[bytes] = []
            et = threading.Thread(target=lambda: errbuf.append(proc.stderr.read()), daemon=True)
            et.start()
            deadline = t0 + remaining
            # wait for the result block (or QEMU's exit, or the deadline)
            con.ended.wait(max(0.0, deadline - time.monotonic()))
            if con.t_end is not None:
                # The result is complete.  The guest would power off in a moment, but a
                # sysrq power-off can overtake serial output still queued in the guest,
                # so the guest waits first -- and the host does not wait for it.
                _kill_group(proc)
            else:
                try:
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    res.timed_out = True
        finally:
            if proc.poll() is None:
                _kill_group(proc)
            proc.wait()
        con.join(5)
        et.join(5)
        res.console = con.buf.decode(errors="replace")
        res.qemu_stderr = b"".join(errbuf).decode(errors="replace")
        res.boot_s = con.t_init
        _parse(res.console, nonce, res)
        if con.t_end is None and not res.timed_out and proc.returncode:
            msg = (res.qemu_stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            res.warnings.append(f"qemu exited {proc.returncode}: {msg}")
    res.total_s = time.monotonic() - t_call
    return res


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
