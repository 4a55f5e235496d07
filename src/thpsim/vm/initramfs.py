"""The guest initramfs: a pure-Python newc cpio writer and the guest image builder.

The image is two gzip'd newc archives, concatenated (Linux unpacks them in turn;
later entries overwrite earlier ones):

* the **base** (large, built once and cached by a hash of its inputs' manifest):
  busybox at ``/bin/busybox``, the decompressed zram modules in ``/lib/modules``,
  and the host's Python runtime -- the interpreter at ``/opt/py/bin/python3``, its
  standard library (minus test suites, GUI and packaging tools), NumPy in
  ``/opt/py/lib/python3.X/site-packages``, and every shared library they need
  (resolved with ``ldd``; flat in ``/lib``, the ELF loader at its own path);
* the **overlay** (small, built per run): ``/init``, the thpsim package in
  ``/opt/thpsim``, the run script and the caller's files in ``/files``.

Keeping thpsim out of the base means editing thpsim never rebuilds the large part.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from thpsim.vm.errors import VmError, VmUnavailable
from thpsim.vm.kernel import Kernel, cache_root

__all__ = [
    "GUEST_LIB",
    "GUEST_PYHOME",
    "GUEST_THPSIM",
    "CpioWriter",
    "Tree",
    "base_image",
    "build_overlay",
    "find_busybox",
    "guest_python_version",
]

GUEST_PYHOME = "/opt/py"
GUEST_LIB = "/lib"
GUEST_THPSIM = "/opt/thpsim"
BUSYBOX_ENV = "THPSIM_BUSYBOX"
#: compression of the base archive: 0 = none.  Measured (TCG, 2 busy cores): 98 MB plain
#: boots to /init in ~4.9 s; gzip -1 (36 MB) ~6.3 s (the guest inflates it slowly);
#: gzip -6 (33 MB) is no faster to boot and takes ~5 s longer to build.
GZIP_LEVEL = 0

_BUILDER_VERSION = "1"  # bump when the base layout changes

#: stdlib top-level entries never copied into the guest
STDLIB_EXCLUDE = frozenset({
    "test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "site-packages",
    "dist-packages", "pydoc_data", "turtle.py", "__phello__",
})
#: lib-dynload modules not copied (GUI, test helpers)
#: lib-dynload modules not copied: GUI, terminal, databases, TLS, NIS, test helpers
#: (each pulls in system libraries the guest programs do not need)
DYNLOAD_EXCLUDE = re.compile(
    r"^(_tkinter|_test\w*|_xxtestfuzz|xxlimited\w*|xxsubtype|_ctypes_test|_curses\w*|readline"
    r"|_sqlite3|_ssl|_dbm|_gdbm|nis|_crypt|spwd|ossaudiodev|audioop)\.")


# --------------------------------------------------------------------------- cpio


def _pad4(n: int) -> int:
    return (4 - n % 4) % 4


class CpioWriter:
    """Write a newc ("070701") cpio archive to a binary stream.

    Parent directories are created implicitly (mode 0755); adding a path twice
    is an error.  Entries get increasing inode numbers; ``uid``/``gid`` are 0.
    """

    MAGIC = b"070701"

    def __init__(self, out: BinaryIO):
        self._out = out
        self._ino = 0
        self._seen: set[str] = set()
        self._closed = False

    @staticmethod
    def _norm(path: str) -> str:
        p = PurePosixPath("/" + str(path).lstrip("/"))
        if ".." in p.parts:
            raise ValueError(f"cpio path must not contain '..': {path!r}")
        rel = str(p)[1:]
        if not rel:
            raise ValueError("cpio path must not be the root")
        return rel

    def _header(self, name: str, mode: int, size: int, mtime: int, nlink: int) -> None:
        self._ino += 1
        bname = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, nlink, max(0, int(mtime)) & 0xFFFFFFFF, size,
                  0, 0, 0, 0, len(bname), 0)
        hdr = self.MAGIC + b"".join(b"%08X" % f for f in fields)
        self._out.write(hdr + bname + b"\0" * _pad4(len(hdr) + len(bname)))

    def _parents(self, rel: str) -> None:
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self._seen:
                self._seen.add(d)
                self._header(d, stat.S_IFDIR | 0o755, 0, 0, 2)

    def _claim(self, path: str) -> str:
        if self._closed:
            raise ValueError("archive already finished")
        rel = self._norm(path)
        if rel in self._seen:
            raise ValueError(f"duplicate cpio entry {rel!r}")
        self._parents(rel)
        self._seen.add(rel)
        return rel

    def add_dir(self, path: str, mode: int = 0o755, mtime: int = 0) -> None:
        rel = self._norm(path)
        if rel in self._seen:
            return
        rel = self._claim(path)
        self._header(rel, stat.S_IFDIR | (mode & 0o7777), 0, mtime, 2)

    def add_file(self, path: str, data: bytes, mode: int = 0o644, mtime: int = 0) -> None:
        rel = self._claim(path)
        self._header(rel, stat.S_IFREG | (mode & 0o7777), len(data), mtime, 1)
        self._out.write(data)
        self._out.write(b"\0" * _pad4(len(data)))

    def add_symlink(self, path: str, target: str, mtime: int = 0) -> None:
        rel = self._claim(path)
        t = target.encode()
        self._header(rel, stat.S_IFLNK | 0o777, len(t), mtime, 1)
        self._out.write(t + b"\0" * _pad4(len(t)))

    def finish(self) -> None:
        """Write the trailer; the stream stays open."""
        if not self._closed:
            self._header("TRAILER!!!", 0, 0, 0, 1)
            self._closed = True


# --------------------------------------------------------------------------- trees


def _has_debug_info(path: Path) -> bool:
    """True for a 64-bit little-endian ELF file with ``.debug_*`` sections."""
    try:
        with path.open("rb") as f:
            eh = f.read(64)
            if len(eh) < 64 or eh[:6] != b"\x7fELF\x02\x01":
                return False
            shoff = int.from_bytes(eh[0x28:0x30], "little")
            shentsize = int.from_bytes(eh[0x3A:0x3C], "little")
            shnum = int.from_bytes(eh[0x3C:0x3E], "little")
            shstrndx = int.from_bytes(eh[0x3E:0x40], "little")
            if not shoff or shentsize < 64 or shstrndx >= shnum:
                return False
            f.seek(shoff)
            shdrs = f.read(shentsize * shnum)
            sh = shdrs[shstrndx * shentsize:(shstrndx + 1) * shentsize]
            f.seek(int.from_bytes(sh[0x18:0x20], "little"))
            names = f.read(int.from_bytes(sh[0x20:0x28], "little"))
    except OSError:
        return False
    for i in range(shnum):
        off = int.from_bytes(shdrs[i * shentsize:i * shentsize + 4], "little")
        if names[off:off + 7] == b".debug_":
            return True
    return False


def _stripped(path: Path) -> bytes:
    """The file with debug sections removed (``strip --strip-debug``), or as is."""
    tool = shutil.which("strip")
    if tool is None or not _has_debug_info(path):
        return path.read_bytes()
    with tempfile.TemporaryDirectory(prefix="thpsim-strip-") as td:
        out = Path(td) / path.name
        r = subprocess.run([tool, "--strip-debug", "-o", str(out), str(path)],
                           capture_output=True)
        return out.read_bytes() if r.returncode == 0 else path.read_bytes()


@dataclass
class Tree:
    """A planned archive: guest path -> source (host file, bytes, or symlink target)."""

    files: dict[str, tuple[Path | bytes, int, int]] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)
    #: host ELF files are written without debug sections (needs binutils' ``strip``)
    strip: bool = False

    def add_host_file(self, guest: str, host: Path, mode: int | None = None) -> None:
        st = host.stat()
        self.files[guest] = (host, st.st_mode & 0o7777 if mode is None else mode,
                             int(st.st_mtime))

    def add_bytes(self, guest: str, data: bytes, mode: int = 0o644) -> None:
        self.files[guest] = (data, mode, 0)

    def add_tree(self, guest: str, host: Path, skip_dir=lambda rel: False,
                 skip_file=lambda rel: False) -> None:
        """Copy the regular files and symlinks under ``host`` to ``guest``."""
        for dirpath, dirnames, filenames in os.walk(host):
            rel_dir = Path(dirpath).relative_to(host)
            dirnames[:] = sorted(d for d in dirnames if not skip_dir(rel_dir / d))
            for fn in sorted(filenames):
                rel = rel_dir / fn
                if skip_file(rel):
                    continue
                src = Path(dirpath) / fn
                g = f"{guest}/{rel.as_posix()}"
                if src.is_symlink():
                    target = os.readlink(src)
                    if target.startswith("/"):
                        self.add_host_file(g, src.resolve())
                    else:
                        self.links[g] = target
                elif src.is_file():
                    self.add_host_file(g, src)

    def manifest_hash(self) -> str:
        """A hash of paths, modes, and host (path, size, mtime) or bytes content."""
        strip = self.strip and shutil.which("strip") is not None
        h = hashlib.sha256(f"{_BUILDER_VERSION} strip={strip}".encode())
        for g in sorted(self.files):
            src, mode, _ = self.files[g]
            if isinstance(src, bytes):
                ident = hashlib.sha256(src).hexdigest()
            else:
                st = src.stat()
                ident = f"{src}:{st.st_size}:{st.st_mtime_ns}"
            h.update(f"F {g} {mode:o} {ident}\n".encode())
        for g in sorted(self.links):
            h.update(f"L {g} {self.links[g]}\n".encode())
        for g in sorted(self.dirs):
            h.update(f"D {g}\n".encode())
        return h.hexdigest()

    def content_size(self) -> int:
        return sum(len(s) if isinstance(s, bytes) else s.stat().st_size
                   for s, _, _ in self.files.values())

    def write(self, out: BinaryIO) -> int:
        """Write as a newc archive (sorted, so parents come first); return its size."""
        out = _Counting(out)
        w = CpioWriter(out)  # type: ignore[arg-type]
        for d in sorted(self.dirs):
            w.add_dir(d)
        for g in sorted({*self.files, *self.links}):
            if g in self.links:
                w.add_symlink(g, self.links[g])
                continue
            src, mode, mtime = self.files[g]
            if isinstance(src, bytes):
                data = src
            else:
                data = _stripped(src) if self.strip else src.read_bytes()
            w.add_file(g, data, mode, mtime)
        w.finish()
        return out.n

    def write_gz(self, out: BinaryIO, level: int = GZIP_LEVEL) -> int:
        """Write gzip'd at ``level`` (0: a plain archive); return the uncompressed size."""
        if level == 0:
            return self.write(out)
        with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=level, mtime=0) as gz:
            return self.write(gz)  # type: ignore[arg-type]


class _Counting:
    def __init__(self, out: BinaryIO):
        self._out = out
        self.n = 0

    def write(self, b: bytes) -> int:
        self.n += len(b)
        return self._out.write(b)


# --------------------------------------------------------------------------- host lookups


def find_busybox() -> Path:
    """The host's busybox (``$THPSIM_BUSYBOX``, else ``busybox`` on PATH, /bin, /usr/bin)."""
    env = os.environ.get(BUSYBOX_ENV)
    cands = [env] if env else [shutil.which("busybox"), "/bin/busybox", "/usr/bin/busybox"]
    for c in cands:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return Path(c).resolve()
    raise VmUnavailable("busybox not found; install it: apt-get install -y busybox-static"
                        + (f" (or fix ${BUSYBOX_ENV}={env})" if env else ""))


_LDD_LINE = re.compile(r"^\s*(\S+)\s+=>\s+(\S+)\s+\(0x[0-9a-f]+\)|^\s*(/\S+)\s+\(0x[0-9a-f]+\)")


def ldd(paths: Iterable[Path]) -> tuple[dict[str, Path], set[Path]]:
    """Shared-library dependencies of ELF files: ``({soname: host path}, {loaders})``.

    One ``ldd`` call for all files; static executables contribute nothing.
    """
    exe = shutil.which("ldd")
    if exe is None:
        raise VmUnavailable("ldd not found; install it: apt-get install -y libc-bin")
    args = [str(p) for p in paths]
    libs: dict[str, Path] = {}
    loaders: set[Path] = set()
    if not args:
        return libs, loaders
    r = subprocess.run([exe, *args], capture_output=True, text=True)
    for line in r.stdout.splitlines():
        if "not found" in line:
            raise VmError(f"ldd: a library the guest runtime needs is missing: {line.strip()}")
        m = _LDD_LINE.match(line)
        if not m:
            continue
        if m.group(1):
            libs.setdefault(m.group(1), Path(m.group(2)))
        else:
            loaders.add(Path(m.group(3)))
    bad = [ln for ln in r.stderr.splitlines()
           if ln.strip() and "not a dynamic executable" not in ln]
    if r.returncode != 0 and bad:
        raise VmError(f"ldd failed: {bad[-1].strip()}")
    return libs, loaders


def guest_python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _is_elf(p: Path) -> bool:
    with p.open("rb") as f:
        return f.read(4) == b"\x7fELF"


def _pyc_ok(rel: Path) -> bool:
    """Keep only this interpreter's plain ``.pyc`` files (no opt-1/opt-2)."""
    return rel.name.endswith(f".{sys.implementation.cache_tag}.pyc")


def plan_base(kernel: Kernel, *, with_pyc: bool = True, strip: bool = True) -> Tree:
    """Plan the base archive (see the module docstring)."""
    t = Tree(strip=strip)
    t.dirs |= {"bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "root",
               "etc", "run", "files", "lib/modules"}
    busybox = find_busybox()
    t.add_host_file("bin/busybox", busybox, 0o755)
    for ko in kernel.modules:
        t.add_host_file(f"lib/modules/{ko.name}", ko, 0o644)

    ver = guest_python_version()
    home = GUEST_PYHOME.strip("/")
    exe = Path(os.path.realpath(sys.executable))
    t.add_host_file(f"{home}/bin/python{ver}", exe, 0o755)
    t.links[f"{home}/bin/python3"] = f"python{ver}"
    t.links[f"{home}/bin/python"] = f"python{ver}"

    stdlib = Path(os.__file__).resolve().parent
    dynload = stdlib / "lib-dynload"

    def skip_std_dir(rel: Path) -> bool:
        if len(rel.parts) == 1 and (rel.name in STDLIB_EXCLUDE or rel.name.startswith("config-")):
            return True
        if rel.name == "__pycache__":
            return not with_pyc
        return rel.name in ("test", "tests", "idle_test")

    def skip_std_file(rel: Path) -> bool:
        if rel.parent.name == "__pycache__":
            return not _pyc_ok(rel)
        if len(rel.parts) == 1 and rel.name in STDLIB_EXCLUDE:
            return True
        if rel.parts[0] == "lib-dynload":
            return bool(DYNLOAD_EXCLUDE.match(rel.name))
        return rel.suffix in (".exe", ".pyo")

    t.add_tree(f"{home}/lib/python{ver}", stdlib, skip_std_dir, skip_std_file)
    if not dynload.is_dir():
        raise VmUnavailable(f"no lib-dynload next to the stdlib {stdlib}: unsupported Python")

    import numpy

    np_dir = Path(numpy.__file__).resolve().parent
    site = f"{home}/lib/python{ver}/site-packages"

    def skip_np_dir(rel: Path) -> bool:
        return rel.name in ("tests", "_pyinstaller", "f2py", "typing") or (
            rel.name == "__pycache__" and not with_pyc)

    def skip_np_file(rel: Path) -> bool:
        if rel.parent.name == "__pycache__":
            return not _pyc_ok(rel)
        return rel.suffix in (".pyi", ".h", ".c", ".pxd", ".a") or rel.name == "py.typed"

    t.add_tree(f"{site}/numpy", np_dir, skip_np_dir, skip_np_file)
    in_tree_libs: set[Path] = set()
    for extra in sorted(np_dir.parent.glob("numpy.libs")):
        t.add_tree(f"{site}/{extra.name}", extra)
        in_tree_libs |= {p.resolve() for p in extra.iterdir()}

    # shared libraries: everything the interpreter, busybox and every extension needs
    elves = [exe, busybox] + [
        src for g, (src, _, _) in t.files.items()
        if isinstance(src, Path) and g.endswith(".so") and _is_elf(src)]
    libs, loaders = ldd(elves)
    for soname, host in sorted(libs.items()):
        if host.resolve() in in_tree_libs:
            continue  # found through $ORIGIN rpaths inside the copied tree
        t.add_host_file(f"{GUEST_LIB.strip('/')}/{soname}", host.resolve(), 0o755)
    for loader in loaders:
        t.add_host_file(str(loader).lstrip("/"), loader.resolve(), 0o755)
    return t


@dataclass(frozen=True)
class BaseImage:
    """The cached base archive; ``size_raw`` is its uncompressed size."""

    path: Path
    key: str
    size_file: int
    size_raw: int
    built: bool  # False when taken from the cache
    build_s: float


def base_image(kernel: Kernel, *, level: int | None = None, with_pyc: bool = True) -> BaseImage:
    """Build (or take from the cache) the base archive for ``kernel``."""
    import time

    level = GZIP_LEVEL if level is None else level
    t0 = time.monotonic()
    tree = plan_base(kernel, with_pyc=with_pyc)
    key = hashlib.sha256(f"{tree.manifest_hash()} {kernel.key} {level}".encode()).hexdigest()[:20]
    d = cache_root() / "initramfs"
    path = d / f"base-{key}.cpio{'.gz' if level else ''}"
    sizes = path.with_name(path.name + ".size")
    if path.is_file() and sizes.is_file():
        return BaseImage(path, key, path.stat().st_size, int(sizes.read_text()), False,
                         time.monotonic() - t0)
    d.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".base-", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            raw = tree.write_gz(f, level)
            f.write(b"\0" * _pad4(f.tell()))  # the next archive starts 4-aligned
        os.replace(tmp, path)
        sizes.write_text(str(raw))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    for old in d.glob("base-*.cpio*"):  # keep the cache from growing without bound
        if old not in (path, sizes):
            old.unlink(missing_ok=True)
    return BaseImage(path, key, path.stat().st_size, raw, True, time.monotonic() - t0)


def _compiled(src: Path, guest_path: str) -> bytes | None:
    """Hash-checked ``.pyc`` bytes for ``src`` (cached by content), or ``None`` on error.

    Hash-based pycs stay valid whatever the guest file's mtime is; saves the guest
    (TCG: slow) about a second of compiling per Python process.
    """
    import py_compile

    data = src.read_bytes()
    key = hashlib.sha256(f"{sys.version}\0{guest_path}\0".encode() + data).hexdigest()[:24]
    d = cache_root() / "pyc"
    out = d / f"{key}.pyc"
    if out.is_file():
        return out.read_bytes()
    d.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".pyc-", dir=d)
    os.close(fd)
    try:
        py_compile.compile(str(src), cfile=tmp, dfile=guest_path, doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
        os.replace(tmp, out)
    except (py_compile.PyCompileError, OSError):
        return None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out.read_bytes()


def build_overlay(init_script: str, files: dict[str, bytes], extra: dict[str, bytes]) -> bytes:
    """The per-run gzip'd archive: ``/init``, thpsim, ``extra`` (guest path -> bytes), files."""
    import thpsim

    t = Tree()
    t.add_bytes("init", init_script.encode(), 0o755)
    pkg = Path(thpsim.__file__).resolve().parent
    gpkg = f"{GUEST_THPSIM.strip('/')}/thpsim"
    t.add_tree(gpkg, pkg, skip_dir=lambda rel: rel.name == "__pycache__",
               skip_file=lambda rel: rel.suffix not in (".py", ".json", ".toml", ".txt"))
    for g, (src, _, _) in list(t.files.items()):
        if g.endswith(".py") and isinstance(src, Path):
            gp = PurePosixPath(g)
            pyc = gp.parent / "__pycache__" / f"{gp.stem}.{sys.implementation.cache_tag}.pyc"
            data = _compiled(src, "/" + g)
            if data is not None:
                t.add_bytes(str(pyc), data)
    for g, data in extra.items():
        t.add_bytes(g.lstrip("/"), data, 0o755)
    for name, data in files.items():
        rel = PurePosixPath(name)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise ValueError(f"guest file name must be relative without '..': {name!r}")
        t.add_bytes(f"files/{rel}", bytes(data), 0o644)
    buf = io.BytesIO()
    t.write_gz(buf, 6)
    return buf.getvalue()
