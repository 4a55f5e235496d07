"""The VM oracle: kernel verification, the cpio writer, and real boots of Linux 7.2.13."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import textwrap

import pytest

from thpsim.vm.errors import VmError
from thpsim.vm.initramfs import CpioWriter, Tree
from thpsim.vm.kernel import verify_kernel_dir

# ---------------------------------------------------------------- kernel packages


def test_sha256_verification_accepts_pristine_copy(kernel_dir, tmp_path):
    copy = tmp_path / "k"
    shutil.copytree(kernel_dir, copy)
    debs = verify_kernel_dir(copy)
    assert {d.name.split("-")[1] for d in debs} == {"base", "binary", "modules"}


def test_sha256_verification_detects_a_flipped_byte(kernel_dir, tmp_path):
    copy = tmp_path / "k"
    shutil.copytree(kernel_dir, copy)
    victim = sorted(copy.glob("linux-binary-*.deb"))[0]
    victim.chmod(0o644)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    with pytest.raises(VmError, match="SHA256 mismatch") as ei:
        verify_kernel_dir(copy)
    msg = str(ei.value)
    assert victim.name in msg and "\n" not in msg


def test_sha256_verification_names_a_missing_file(kernel_dir, tmp_path):
    copy = tmp_path / "k"
    shutil.copytree(kernel_dir, copy)
    victim = sorted(copy.glob("linux-base-*.deb"))[0]
    victim.unlink()
    with pytest.raises(VmError, match="missing") as ei:
        verify_kernel_dir(copy)
    assert victim.name in str(ei.value)


def test_kernel_unpacked(vm_kernel):
    assert vm_kernel.version.startswith("7.2.13")
    assert vm_kernel.vmlinuz.is_file()
    assert vm_kernel.config_value("TRANSPARENT_HUGEPAGE_ALWAYS") == "y"
    names = [m.name for m in vm_kernel.modules]
    assert names == ["00-lz4hc_compress.ko", "01-zram.ko"]  # dependency first
    assert all(m.read_bytes()[:4] == b"\x7fELF" for m in vm_kernel.modules)


# ---------------------------------------------------------------- cpio writer


def _read_newc(data: bytes) -> list[tuple[str, int, bytes]]:
    """A minimal independent newc reader: [(name, mode, data)] up to the trailer."""
    out, off = [], 0
    while True:
        assert data[off:off + 6] == b"070701", f"bad magic at {off}"
        f = [int(data[off + 6 + 8 * i: off + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = f[1], f[6], f[11]
        name = data[off + 110: off + 110 + namesize - 1].decode()
        off = (off + 110 + namesize + 3) & ~3
        body = data[off: off + size]
        off = (off + size + 3) & ~3
        if name == "TRAILER!!!":
            return out
        out.append((name, mode, body))


def test_cpio_round_trip():
    buf = io.BytesIO()
    w = CpioWriter(buf)
    w.add_file("a/b/c.txt", b"hello", 0o640, mtime=1234)
    w.add_file("/top", b"", 0o755)
    w.add_file("odd", b"xyz")  # sizes not a multiple of 4 exercise the padding
    w.add_symlink("a/link", "b/c.txt")
    w.add_dir("empty")
    w.finish()
    entries = {n: (m, d) for n, m, d in _read_newc(buf.getvalue())}
    assert list(entries)[:2] == ["a", "a/b"]  # parents come before their children
    assert entries["a/b/c.txt"] == (stat.S_IFREG | 0o640, b"hello")
    assert entries["top"] == (stat.S_IFREG | 0o755, b"")
    assert entries["odd"][1] == b"xyz"
    assert entries["a/link"] == (stat.S_IFLNK | 0o777, b"b/c.txt")
    assert stat.S_ISDIR(entries["empty"][0])
    assert len(buf.getvalue()) % 4 == 0


def test_cpio_rejects_bad_paths():
    w = CpioWriter(io.BytesIO())
    w.add_file("x", b"1")
    with pytest.raises(ValueError, match="duplicate"):
        w.add_file("x", b"2")
    with pytest.raises(ValueError, match=r"\.\."):
        w.add_file("../etc/passwd", b"")


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio(1) not installed")
def test_cpio_readable_by_gnu_cpio(tmp_path):
    import subprocess

    t = Tree()
    t.add_bytes("d/f", b"data\n", 0o600)
    t.links["d/l"] = "f"
    p = tmp_path / "x.cpio"
    with p.open("wb") as f:
        t.write_gz(f, 0)
    r = subprocess.run(["cpio", "-t", "--quiet"], stdin=p.open("rb"), capture_output=True,
                       text=True, check=True)
    assert r.stdout.split() == ["d", "d/f", "d/l"]


def test_gzip_tree_round_trip():
    import gzip

    t = Tree()
    t.add_bytes("init", b"#!/bin/sh\n", 0o755)
    buf = io.BytesIO()
    size = t.write_gz(buf, 6)
    raw = gzip.decompress(buf.getvalue())
    assert size == len(raw)
    assert [(n, m & 0o777, d) for n, m, d in _read_newc(raw)] == [("init", 0o755, b"#!/bin/sh\n")]


# ---------------------------------------------------------------- real boots

GUEST = textwrap.dedent("""
    import json, platform, sys, time
    t0 = time.monotonic()
    import numpy
    from thpsim.system import System
    t1 = time.monotonic()
    s = System(memory="256M", swap="16M", policy="linux-7.2")
    s.settings.write("enabled", "madvise")
    s.settings.write("hugepages-64kB/enabled", "always")
    p = s.spawn("main")
    a = p.mmap(2 << 20)
    p.touch(a, pages=range(0, 64))
    before = p.layout(a).pmds[0].summary()
    p.madvise(a, 2 << 20, "hugepage")
    s.khugepaged.run(full_scans=2)
    print(json.dumps({
        "release": platform.release(),
        "enabled": open("/sys/kernel/mm/transparent_hugepage/enabled").read().strip(),
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "swaps": open("/proc/swaps").read(),
        "tracing": sorted(__import__("os").listdir("/sys/kernel/tracing"))[:50],
        "input": json.load(open("input.json")),
        "model": [before, p.layout(a).pmds[0].summary()],
        "import_s": t1 - t0,
    }))
    print("bye from the guest", file=sys.stderr)
    sys.exit(7)
""")


@pytest.fixture(scope="module")
def booted(vm_kernel):
    from thpsim.vm.qemu import run_in_vm

    return run_in_vm(["python3", "-c", GUEST], {"input.json": b'{"k": [1, 2]}'},
                     timeout_s=240, swap_mb=64)


@pytest.fixture(scope="module")
def guest(booted):
    if booted.exit_code is None:
        pytest.fail(f"guest did not report (timed_out={booted.timed_out}); console tail:\n"
                    + booted.console[-3000:])
    lines = booted.stdout.strip().splitlines()
    assert lines, f"no guest stdout; stderr:\n{booted.stderr[-3000:]}"
    return json.loads(lines[-1])


def test_guest_exit_code_and_streams(booted, guest):
    assert booted.exit_code == 7
    assert not booted.timed_out
    assert booted.stderr.strip().endswith("bye from the guest")
    assert booted.warnings == []
    print(f"\nVM: image {booted.image_s:.2f}s, boot to /init {booted.boot_s:.2f}s "
          f"(guest uptime {booted.guest_init_uptime_s}s), program {booted.run_s:.2f}s "
          f"(python+numpy+thpsim import {guest['import_s']:.2f}s), total {booted.total_s:.2f}s, "
          f"initrd {booted.initrd_bytes / 1e6:.1f} MB")


def test_guest_runs_linux_7_2_13(booted, guest, vm_kernel):
    assert guest["release"].startswith("7.2.13")
    assert guest["release"] == vm_kernel.version == booted.kernel_version


def test_guest_thp_default_is_always(guest):
    assert "[always]" in guest["enabled"]


def test_guest_python_numpy_thpsim(guest):
    import platform

    import numpy

    assert guest["numpy"] == numpy.__version__
    assert guest["python"] == platform.python_version()
    assert guest["model"] == ["0-63:o4x4", "0-511:o9"]
    assert guest["input"] == {"k": [1, 2]}


def test_guest_has_zram_swap_and_tracefs(guest):
    swaps = guest["swaps"].splitlines()[1:]
    assert any(line.split()[0] == "/dev/zram0" for line in swaps), guest["swaps"]
    size_kb = int(next(line.split()[2] for line in swaps if "zram0" in line))
    assert 60 * 1024 <= size_kb <= 64 * 1024
    assert "trace" in guest["tracing"] and "events" in guest["tracing"]


def test_hung_guest_program_is_killed_at_the_timeout(vm_kernel):
    from thpsim.vm.qemu import run_in_vm

    r = run_in_vm(["sh", "-c", "echo guest-is-hanging > /dev/console; sleep 1000"],
                  timeout_s=20, swap_mb=0)
    assert r.timed_out
    assert r.exit_code is None
    assert r.total_s < 20 + 5
    assert "guest-is-hanging" in r.console  # it did hang in the program, not in boot
    with pytest.raises(VmError, match="timed out"):
        r.check()


def test_vm_unavailable_without_qemu(monkeypatch):
    from thpsim.vm.errors import VmUnavailable
    from thpsim.vm.qemu import run_in_vm

    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(VmUnavailable, match="apt-get install") as ei:
        run_in_vm(["true"])
    assert "\n" not in str(ei.value)


def test_vm_unavailable_without_kernel_dir(monkeypatch, tmp_path):
    from thpsim.vm.errors import VmUnavailable
    from thpsim.vm.kernel import find_kernel_dir

    monkeypatch.setenv("THPSIM_KERNEL_DIR", os.fspath(tmp_path / "nope"))
    with pytest.raises(VmUnavailable, match="THPSIM_KERNEL_DIR"):
        find_kernel_dir()
