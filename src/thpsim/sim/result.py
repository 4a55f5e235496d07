"""The result of one simulation run (:class:`RunResult`) and its files.

A run directory holds three files, each written atomically:

``series.parquet``
    The time series, one column per metric (equal length, one row per sample).
``result.json``
    Everything else: workload, params, policy, settings, seed, duration, summary,
    and the names of the layout labels.
``layouts.npz``
    The layout windows (``<label>/vpn0``, ``<label>/order``, ``<label>/pmd_mapped``).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["FORMAT_VERSION", "LAYOUT_NONE", "LAYOUT_SWAP", "LAYOUT_ZERO", "RunResult",
           "RunResultError"]

FORMAT_VERSION = 1

#: values of a layout ``order`` cell that are not a folio order
LAYOUT_NONE, LAYOUT_ZERO, LAYOUT_SWAP = -1, -2, -3


class RunResultError(ValueError):
    """A run directory is missing a file or is malformed (the message says which)."""


def _atomic(path: str, data: bytes) -> None:
    from thpsim.commands import write_atomic_bytes

    write_atomic_bytes(path, data)


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


@dataclass
class RunResult:
    """One run of a workload under one policy and settings.

    Attributes
    ----------
    workload : str
        Workload name (a key of :data:`thpsim.workloads.WORKLOADS`).
    params : dict
        Workload parameters (JSON-able), defaults filled in.
    policy : str
        ``"v11"``, ``"linux-7.2"`` or ``"legacy"``.
    settings : dict of str to str
        THP knob overrides applied (sysfs-relative path -> value).
    seed : int
        Seed of the workload's random generator.
    duration_s : float
        Simulated seconds.
    series : dict of str to ndarray
        Equal-length columns sampled every ``sample_s``; see docs/workloads.md
        ("Metrics") for the column list.
    summary : dict of str to float
        Final value of every series column plus ``events``, ``touches``, ``wall_s``
        and ``events_per_s``.
    layouts : dict of str to dict of str to ndarray
        Labelled layout windows (``"before"``, ``"after"``): ``vpn0`` int64[n_pmd]
        first vpn of each PMD window, ``order`` int8[n_pmd, PTRS_PER_PMD] folio order
        per page (-1 none, -2 zero page, -3 swap), ``pmd_mapped`` bool[n_pmd].
    """

    workload: str
    params: dict[str, Any]
    policy: str
    settings: dict[str, str]
    seed: int
    duration_s: float
    series: dict[str, np.ndarray]
    summary: dict[str, float]
    layouts: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def nr_samples(self) -> int:
        return len(self.series.get("t_s", ()))

    # --- files ---------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> None:
        """Write ``series.parquet``, ``layouts.npz`` and ``result.json`` into
        ``directory`` (created if needed; each file replaced atomically)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        d = os.fspath(directory)
        os.makedirs(d, exist_ok=True)
        table = pa.table({k: np.asarray(v) for k, v in self.series.items()})
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf)
        _atomic(os.path.join(d, "series.parquet"), buf.getvalue().to_pybytes())
        arrays = {f"{label}/{k}": np.asarray(v)
                  for label, lay in self.layouts.items() for k, v in lay.items()}
        bio = io.BytesIO()
        np.savez_compressed(bio, **arrays)
        _atomic(os.path.join(d, "layouts.npz"), bio.getvalue())
        doc = {
            "format_version": FORMAT_VERSION,
            "workload": self.workload,
            "params": _jsonable(self.params),
            "policy": self.policy,
            "settings": {str(k): str(v) for k, v in self.settings.items()},
            "seed": int(self.seed),
            "duration_s": float(self.duration_s),
            "summary": {k: float(v) for k, v in self.summary.items()},
            "layout_labels": list(self.layouts),
            "columns": list(self.series),
            "meta": _jsonable(self.meta),
        }
        # result.json last: its presence marks a complete directory
        _atomic(os.path.join(d, "result.json"),
                (json.dumps(doc, indent=1, sort_keys=False) + "\n").encode())

    @classmethod
    def load(cls, directory: str | os.PathLike) -> RunResult:
        """Read a directory written by :meth:`save`."""
        import pyarrow.parquet as pq

        d = os.fspath(directory)
        jpath = os.path.join(d, "result.json")
        try:
            with open(jpath, encoding="utf-8") as fh:
                doc = json.load(fh)
        except FileNotFoundError:
            raise RunResultError(f"{jpath}: no such file (not a run directory)") from None
        except json.JSONDecodeError as e:
            raise RunResultError(f"{jpath}: line {e.lineno}: {e.msg}") from None
        if not isinstance(doc, dict) or doc.get("format_version") != FORMAT_VERSION:
            raise RunResultError(f"{jpath}: not a thpsim run result (format_version "
                                 f"{FORMAT_VERSION} expected)")
        need = ("workload", "params", "policy", "settings", "seed", "duration_s", "summary")
        missing = [k for k in need if k not in doc]
        if missing:
            raise RunResultError(f"{jpath}: missing key {missing[0]!r}")
        ppath = os.path.join(d, "series.parquet")
        try:
            table = pq.read_table(ppath)
        except FileNotFoundError:
            raise RunResultError(f"{ppath}: no such file") from None
        except Exception as e:  # pyarrow raises several types for damaged files
            raise RunResultError(f"{ppath}: not a readable Parquet file ({e})") from None
        series = {name: table.column(name).to_numpy() for name in table.column_names}
        layouts: dict[str, dict[str, np.ndarray]] = {}
        npath = os.path.join(d, "layouts.npz")
        if os.path.exists(npath):
            try:
                with np.load(npath) as z:
                    for key in z.files:
                        label, _, col = key.partition("/")
                        layouts.setdefault(label, {})[col] = z[key]
            except Exception as e:  # zipfile/ValueError for damaged files
                raise RunResultError(f"{npath}: not a readable layouts file ({e})") from None
        return cls(workload=doc["workload"], params=doc["params"], policy=doc["policy"],
                   settings=doc["settings"], seed=int(doc["seed"]),
                   duration_s=float(doc["duration_s"]), series=series,
                   summary={k: float(v) for k, v in doc["summary"].items()},
                   layouts=layouts, meta=doc.get("meta", {}))
