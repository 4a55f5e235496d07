"""Find, verify and unpack the pinned Linux kernel packages for the VM oracle.

The kernel directory holds Debian's unmodified ``linux-{base,binary,modules}-*.deb``
and a ``SHA256SUMS`` file.  :func:`prepare_kernel` checks every listed file against
it, unpacks the packages once with ``dpkg-deb -x`` into a cache directory keyed by
the checksums (extract to a temporary directory, then rename, so a crash never
leaves a half-unpacked cache), and decompresses the modules zram needs for swap.

Location of the kernel directory, first match wins: the ``path`` argument, the
environment variable ``THPSIM_KERNEL_DIR``, ``../shared/kernels/linux-7.2.13-cloud-amd64``
next to the repository root (found from this file, or from the current directory
upwards when thpsim is installed into site-packages).

Cache directory: ``$THPSIM_CACHE_DIR``, else ``$XDG_CACHE_HOME/thpsim``, else
``~/.cache/thpsim``.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from thpsim.vm.errors import VmError, VmUnavailable

__all__ = [
    "DEFAULT_KERNEL_NAME",
    "SWAP_MODULES",
    "Kernel",
    "cache_root",
    "find_kernel_dir",
    "prepare_kernel",
    "verify_kernel_dir",
]

DEFAULT_KERNEL_NAME = "linux-7.2.13-cloud-amd64"
KERNEL_DIR_ENV = "THPSIM_KERNEL_DIR"
CACHE_DIR_ENV = "THPSIM_CACHE_DIR"

#: the modules needed for zram swap; their ``depends=`` are followed too
SWAP_MODULES = ("zram",)

_LAYOUT_VERSION = "1"  # bump when the unpacked cache layout changes


@dataclass(frozen=True)
class Kernel:
    """An unpacked, verified kernel.

    Attributes
    ----------
    version:
        ``uname -r`` of the kernel, e.g. ``7.2.13+deb14-cloud-amd64``.
    root:
        The cache directory holding the unpacked packages (``pkg/``) and the
        decompressed modules (``modules/``).
    vmlinuz:
        The bzImage.
    modules:
        Decompressed ``.ko`` files for swap, in load order (dependencies first).
    key:
        A short hash of ``SHA256SUMS``: the identity of this kernel.
    """

    version: str
    root: Path
    vmlinuz: Path
    config: Path | None
    modules: tuple[Path, ...]
    key: str

    def config_value(self, name: str) -> str | None:
        """``CONFIG_<name>`` from the kernel's config (``None`` if unset or no config)."""
        if self.config is None:
            return None
        want = f"CONFIG_{name}="
        for line in self.config.read_text().splitlines():
            if line.startswith(want):
                return line[len(want):]
        return None


def cache_root() -> Path:
    """The thpsim cache directory (not created)."""
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "thpsim"


def _repo_roots() -> list[Path]:
    roots: list[Path] = []
    here = Path(__file__).resolve()
    if len(here.parents) > 3 and (here.parents[3] / "pyproject.toml").is_file():
        roots.append(here.parents[3])  # src/thpsim/vm/kernel.py -> repo root
    cwd = Path.cwd().resolve()
    for d in (cwd, *cwd.parents):
        if (d / "pyproject.toml").is_file() and d not in roots:
            roots.append(d)
            break
    return roots


def find_kernel_dir(path: str | os.PathLike | None = None) -> Path:
    """The kernel package directory; :class:`VmUnavailable` if there is none."""
    if path is not None:
        cands = [Path(path)]
        how = "the given path"
    elif os.environ.get(KERNEL_DIR_ENV):
        cands = [Path(os.environ[KERNEL_DIR_ENV])]
        how = f"${KERNEL_DIR_ENV}"
    else:
        cands = [r.parent / "shared" / "kernels" / DEFAULT_KERNEL_NAME for r in _repo_roots()]
        how = "the default location"
    for c in cands:
        c = c.expanduser()
        if (c / "SHA256SUMS").is_file():
            return c.resolve()
    shown = ", ".join(str(c) for c in cands) or "(repository root not found)"
    raise VmUnavailable(f"no kernel package directory with SHA256SUMS at {how} ({shown}); "
                        f"set {KERNEL_DIR_ENV} to the {DEFAULT_KERNEL_NAME} directory")


def _read_sums(kdir: Path) -> list[tuple[str, str]]:
    out = []
    for n, line in enumerate((kdir / "SHA256SUMS").read_text().splitlines(), 1):
        if not line.strip():
            continue
        m = re.fullmatch(r"([0-9a-fA-F]{64}) [ *](.+)", line.strip())
        if m is None:
            raise VmError(f"{kdir / 'SHA256SUMS'}:{n}: malformed line")
        name = m.group(2)
        if "/" in name or name in (".", ".."):
            raise VmError(f"{kdir / 'SHA256SUMS'}:{n}: unexpected file name {name!r}")
        out.append((m.group(1).lower(), name))
    if not out:
        raise VmError(f"{kdir / 'SHA256SUMS'} lists no files")
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def verify_kernel_dir(kdir: str | os.PathLike) -> list[Path]:
    """Check every file listed in ``SHA256SUMS``; return the ``.deb`` files.

    Raises :class:`VmError` naming the first missing or mismatching file.
    """
    kdir = Path(kdir)
    debs = []
    for digest, name in _read_sums(kdir):
        p = kdir / name
        if not p.is_file():
            raise VmError(f"kernel package file missing: {p}")
        got = _sha256(p)
        if got != digest:
            raise VmError(f"SHA256 mismatch for {p} (expected {digest[:16]}..., "
                          f"got {got[:16]}...)")
        if name.endswith(".deb"):
            debs.append(p)
    if not debs:
        raise VmError(f"{kdir / 'SHA256SUMS'} lists no .deb packages")
    return debs


def _modinfo(ko: bytes) -> dict[str, str]:
    """The ``key=value`` strings of a module's ``.modinfo`` section (first of each key)."""
    info: dict[str, str] = {}
    for key in ("name", "depends", "vermagic"):
        m = re.search(rb"(?:^|\0)" + key.encode() + rb"=([^\0]*)\0", ko)
        if m:
            info[key] = m.group(1).decode(errors="replace")
    return info


def _unpack(debs: list[Path], dest: Path) -> None:
    dpkg = shutil.which("dpkg-deb")
    if dpkg is None:
        raise VmUnavailable("dpkg-deb not found; install it (apt-get install -y dpkg)")
    pkg = dest / "pkg"
    pkg.mkdir(parents=True)
    for deb in debs:
        r = subprocess.run([dpkg, "-x", str(deb), str(pkg)], capture_output=True, text=True)
        if r.returncode != 0:
            msg = (r.stderr.strip().splitlines() or ["?"])[-1]
            raise VmError(f"dpkg-deb -x {deb.name} failed: {msg}")
    mods = sorted((pkg / "usr/lib/modules").glob("*/vmlinuz"))
    if len(mods) != 1:
        names = ", ".join(d.name for d in debs)
        raise VmError(f"expected one usr/lib/modules/<version>/vmlinuz in {names}, "
                      f"found {len(mods)}")
    mdir = mods[0].parent
    # name -> compressed module path (module names treat '-' and '_' alike)
    index = {}
    for ko in mdir.glob("kernel/**/*.ko*"):
        index[ko.name.split(".ko")[0].replace("-", "_")] = ko
    order: list[str] = []
    blobs: dict[str, bytes] = {}

    def visit(name: str, stack: tuple[str, ...]) -> None:
        name = name.replace("-", "_")
        if name in order:
            return
        if name in stack:
            raise VmError(f"module dependency cycle: {' -> '.join((*stack, name))}")
        src = index.get(name)
        if src is None:
            raise VmError(f"module {name}.ko not found in the kernel packages")
        raw = src.read_bytes()
        data = lzma.decompress(raw) if src.name.endswith(".xz") else raw
        info = _modinfo(data)
        for dep in filter(None, info.get("depends", "").split(",")):
            visit(dep, (*stack, name))
        order.append(name)
        blobs[name] = data

    for name in SWAP_MODULES:
        visit(name, ())
    out = dest / "modules"
    out.mkdir()
    for i, name in enumerate(order):
        (out / f"{i:02d}-{name}.ko").write_bytes(blobs[name])


def prepare_kernel(path: str | os.PathLike | None = None, *, verify: bool = True) -> Kernel:
    """Locate, verify and (once) unpack the kernel; see the module docstring."""
    kdir = find_kernel_dir(path)
    debs = verify_kernel_dir(kdir) if verify else [
        kdir / n for _, n in _read_sums(kdir) if n.endswith(".deb")]
    sums = (kdir / "SHA256SUMS").read_bytes()
    key = hashlib.sha256(sums + _LAYOUT_VERSION.encode()).hexdigest()[:16]
    root = cache_root() / "kernels" / key
    if not (root / "modules").is_dir():
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root.parent))
        try:
            _unpack(debs, tmp)
            try:
                tmp.rename(root)
            except OSError:
                if not (root / "modules").is_dir():  # not a concurrent winner: real error
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    vmlinuz = next((root / "pkg/usr/lib/modules").glob("*/vmlinuz"))
    config = vmlinuz.parent / "config"
    modules = tuple(sorted((root / "modules").glob("*.ko")))
    return Kernel(version=vmlinuz.parent.name, root=root, vmlinuz=vmlinuz,
                  config=config if config.is_file() else None, modules=modules, key=key)
