"""Golden results: scenario result documents recorded on a real kernel, kept in the repo.

Layout of a golden directory (``tests/scenarios/golden/`` for the corpus)::

    golden/
      <uname -r>/            one directory per recorded kernel
        KERNEL.json          {"kernel", "executor", "policy", "recorded", "thpsim", "note"}
        <scenario>.json      the executor's result document for that scenario

``policy`` names the model policy the kernel is compared with (``legacy`` for the
pre-mTHP-collapse host kernel, ``linux-7.2`` for 7.2.13).  The documents are the
executors' own output (trace lines and dmesg dropped), so that the model can be
checked against real kernels on machines without root, QEMU or the kernels
(``tests/scenario/test_golden.py``); ``thpsim scenario record`` re-records them.
Every file is written atomically.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

from thpsim import __version__
from thpsim.commands import write_atomic
from thpsim.mm.policies import policy_for_kernel

__all__ = ["GoldenKernel", "load_golden", "record_golden"]

class GoldenKernel:
    """The golden documents of one kernel (see the module docstring)."""

    def __init__(self, directory: Path, meta: dict, docs: dict[str, dict]) -> None:
        self.directory = directory
        self.meta = meta
        self.docs = docs

    @property
    def kernel(self) -> str:
        return self.meta["kernel"]

    @property
    def policy(self) -> str:
        return self.meta["policy"]


def _clean(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k not in ("dmesg", "trace")}


def record_golden(docs: list[dict], directory: str | Path, note: str = "") -> Path:
    """Store result documents of one real kernel under ``directory/<kernel>/``.

    Parameters
    ----------
    docs : list of dict
        Result documents of the ``host`` or ``vm`` executor, all from one kernel.
    directory : path
        The golden root.
    note : str
        Free text kept in ``KERNEL.json`` (how and where it was recorded).

    Returns
    -------
    Path
        The kernel's directory.

    Raises
    ------
    ValueError
        A document is an error, comes from the model, or the kernels differ.
    """
    kernels = {d.get("kernel_or_policy") for d in docs}
    if len(kernels) != 1:
        raise ValueError(f"golden documents must come from one kernel, got {sorted(kernels)}")
    bad = [d.get("scenario") for d in docs if "error" in d or d.get("executor") == "model"]
    if bad:
        raise ValueError(f"not real-kernel results: {', '.join(map(str, bad))}")
    kernel = kernels.pop()
    kdir = Path(directory) / kernel
    kdir.mkdir(parents=True, exist_ok=True)
    meta = {"kernel": kernel, "executor": docs[0]["executor"], "policy": policy_for_kernel(kernel),
            "recorded": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "thpsim": __version__, "note": note}
    for d in docs:
        text = json.dumps(_clean(d), separators=(",", ":")) + "\n"
        write_atomic(str(kdir / f"{d['scenario']}.json"), text)
    write_atomic(str(kdir / "KERNEL.json"), json.dumps(meta, indent=1) + "\n")
    return kdir


def load_golden(directory: str | Path) -> list[GoldenKernel]:
    """Every recorded kernel under ``directory`` (sorted by kernel name).

    Raises
    ------
    ValueError
        A file is not valid JSON or a document names another scenario or kernel
        than its file and directory (one line saying which file).
    """
    out = []
    for kdir in sorted(p for p in Path(directory).iterdir() if p.is_dir()):
        def read(p: Path) -> dict:
            try:
                return json.loads(p.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise ValueError(f"{p}: not a golden document: {e}") from None

        meta = read(kdir / "KERNEL.json")
        if meta.get("kernel") != kdir.name:
            raise ValueError(f"{kdir / 'KERNEL.json'}: kernel {meta.get('kernel')!r} is not "
                             f"the directory name {kdir.name!r}")
        docs = {}
        for p in sorted(kdir.glob("*.json")):
            if p.name == "KERNEL.json":
                continue
            d = read(p)
            if d.get("scenario") != p.stem or d.get("kernel_or_policy") != kdir.name:
                raise ValueError(f"{p}: document of scenario {d.get('scenario')!r} on "
                                 f"{d.get('kernel_or_policy')!r}, not {p.stem!r} on {kdir.name!r}")
            docs[p.stem] = d
        out.append(GoldenKernel(kdir, meta, docs))
    return out
