"""Temporary zram swap (real-kernel.md §2): the host has no swap at boot."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

from thpsim.host.errors import HostBusy, HostUnavailable

__all__ = ["active_swaps", "zram_swap"]


def active_swaps() -> list[str]:
    """Device/file names listed in ``/proc/swaps``."""
    try:
        with open("/proc/swaps") as f:
            lines = f.read().splitlines()[1:]
    except FileNotFoundError:
        return []
    return [ln.split()[0] for ln in lines if ln.strip()]


def _run(*argv: str) -> None:
    r = subprocess.run(argv, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        msg = (r.stderr or r.stdout).strip().splitlines()
        raise HostUnavailable(f"{' '.join(argv)} failed: {msg[-1] if msg else r.returncode}")


@contextmanager
def zram_swap(size: str = "64M", device: str = "zram0") -> Iterator[str]:
    """Use ``/dev/<device>`` as swap for the duration of the block.

    ``disksize`` is set, ``mkswap`` + ``swapon`` run; on exit ``swapoff`` and
    ``reset`` undo it (also after errors).  Refuses a device that is already in
    use (non-zero ``disksize`` or listed in ``/proc/swaps``).

    Yields
    ------
    str
        The device path.

    Raises
    ------
    HostUnavailable
        No such zram device, not root, or the swap tools are missing.
    HostBusy
        The device is already in use.
    """
    if os.geteuid() != 0:
        raise HostUnavailable("zram swap needs root")
    sysdir = f"/sys/block/{device}"
    dev = f"/dev/{device}"
    if not os.path.isdir(sysdir) or not os.path.exists(dev):
        raise HostUnavailable(f"no {sysdir} / {dev} (zram not built in or not loaded)")
    for tool in ("mkswap", "swapon", "swapoff"):
        if shutil.which(tool) is None:
            raise HostUnavailable(f"{tool} not found (util-linux)")
    if dev in active_swaps():
        raise HostBusy(f"{dev} is already used as swap")
    with open(f"{sysdir}/disksize") as f:
        if f.read().strip() != "0":
            raise HostBusy(f"{dev} is already initialised (disksize is not 0)")
    try:
        with open(f"{sysdir}/disksize", "w") as f:
            f.write(size)
        _run("mkswap", dev)
        _run("swapon", dev)
        yield dev
    finally:
        try:
            if dev in active_swaps():
                _run("swapoff", dev)
        finally:
            with contextlib.suppress(OSError), open(f"{sysdir}/reset", "w") as f:
                f.write("1")
