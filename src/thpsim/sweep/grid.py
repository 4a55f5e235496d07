"""Sweep grids (``GRID.toml``): workloads x policies x settings sets x seeds.

Format (docs/sweeps.md)::

    [sweep]
    duration_s = 60              # simulated seconds per cell (required)
    sample_s = 5                 # optional sampling interval of the series
    seeds = [0, 1]               # a list of ints, or an int n meaning 0..n-1
    policies = ["legacy", "v11", "linux-7.2"]

    [workloads.alloc]            # label -> workload
    workload = "allocator"       # registered workload name (default: the label)
    params = { arena_mb = 64 }   # optional workload parameters

    [settings.default]           # named settings sets (no table: one set "defaults")
    [settings.none0]
    "khugepaged/max_ptes_none" = 0

Every cell is one ``simulate`` call; its id is a hash of exactly the parameters that
determine its result, so a cell keeps its id when the grid around it changes.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thpsim.mm.settings import POLICIES

__all__ = ["Cell", "Grid", "GridError", "load_grid", "parse_grid"]

_TOP = {"sweep", "workloads", "settings"}
_SWEEP = {"duration_s", "sample_s", "seeds", "policies"}
_WORKLOAD = {"workload", "params"}


class GridError(ValueError):
    """A malformed grid file; the message names the file and the field."""


@dataclass(frozen=True)
class Cell:
    """One run of a sweep.

    Attributes
    ----------
    workload_label, settings_name : str
        Names from the grid (for tables and plots).
    workload : str
        Registered workload name passed to ``simulate``.
    params : dict
    policy : str
    settings : dict of str to str
    seed : int
    duration_s : float
    sample_s : float or None
    """

    workload_label: str
    workload: str
    params: dict[str, Any]
    policy: str
    settings_name: str
    settings: dict[str, str]
    seed: int
    duration_s: float
    sample_s: float | None = None
    cell_id: str = field(init=False)

    def __post_init__(self) -> None:
        key = {"workload": self.workload, "params": self.params, "policy": self.policy,
               "settings": self.settings, "seed": self.seed, "duration_s": self.duration_s,
               "sample_s": self.sample_s}
        blob = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)
        object.__setattr__(self, "cell_id", hashlib.sha256(blob.encode()).hexdigest()[:16])

    def to_row(self) -> dict[str, Any]:
        """The cell's parameters as table columns (params and settings as JSON)."""
        return {"cell_id": self.cell_id, "workload_label": self.workload_label,
                "workload": self.workload, "params": json.dumps(self.params, sort_keys=True),
                "policy": self.policy, "settings_name": self.settings_name,
                "settings": json.dumps(self.settings, sort_keys=True), "seed": self.seed,
                "duration_s": self.duration_s}


@dataclass
class Grid:
    """A parsed grid: its source path and its cells in a stable order."""

    path: str
    cells: list[Cell]


def _err(path: str, fld: str, msg: str) -> GridError:
    return GridError(f"{path}: {fld}: {msg}")


def _unknown(path: str, where: str, table: dict, allowed: set[str]) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        prefix = f"{where}." if where else ""
        raise _err(path, f"{prefix}{extra[0]}", f"unknown key (expected one of "
                                                f"{', '.join(sorted(allowed))})")


def _number(path: str, fld: str, v: object, positive: bool = True) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _err(path, fld, f"expected a number, got {v!r}")
    if positive and not v > 0:
        raise _err(path, fld, f"must be > 0, got {v!r}")
    return float(v)


def _seeds(path: str, v: object) -> list[int]:
    if isinstance(v, int) and not isinstance(v, bool):
        if v < 1:
            raise _err(path, "sweep.seeds", f"a count must be >= 1, got {v}")
        return list(range(v))
    if (not isinstance(v, list) or not v
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in v)):
        raise _err(path, "sweep.seeds", "expected a non-empty list of non-negative integers "
                                        "or a count")
    if len(set(v)) != len(v):
        raise _err(path, "sweep.seeds", "repeated seed")
    return list(v)


def _policies(path: str, v: object) -> list[str]:
    if not isinstance(v, list) or not v or not all(isinstance(p, str) for p in v):
        raise _err(path, "sweep.policies", "expected a non-empty list of policy names")
    for p in v:
        if p not in POLICIES:
            raise _err(path, "sweep.policies", f"unknown policy {p!r} (one of "
                                               f"{', '.join(POLICIES)})")
    if len(set(v)) != len(v):
        raise _err(path, "sweep.policies", "repeated policy")
    return list(v)


def _workloads(path: str, v: object, known: set[str] | None) -> list[tuple[str, str, dict]]:
    if not isinstance(v, dict) or not v:
        raise _err(path, "workloads", "expected at least one [workloads.LABEL] table")
    out = []
    for label, w in v.items():
        where = f"workloads.{label}"
        if not isinstance(w, dict):
            raise _err(path, where, "expected a table")
        _unknown(path, where, w, _WORKLOAD)
        name = w.get("workload", label)
        if not isinstance(name, str):
            raise _err(path, f"{where}.workload", f"expected a string, got {name!r}")
        if known is not None and name not in known:
            raise _err(path, f"{where}.workload", f"unknown workload {name!r} (one of "
                                                  f"{', '.join(sorted(known))})")
        params = w.get("params", {})
        if not isinstance(params, dict):
            raise _err(path, f"{where}.params", "expected a table")
        out.append((label, name, dict(params)))
    return out


def _settings(path: str, v: object) -> list[tuple[str, dict[str, str]]]:
    if v is None:
        return [("defaults", {})]
    if not isinstance(v, dict) or not v:
        raise _err(path, "settings", "expected at least one [settings.NAME] table")
    out = []
    for name, knobs in v.items():
        if not isinstance(knobs, dict):
            raise _err(path, f"settings.{name}", "expected a table of knob = value")
        conv = {}
        for k, val in knobs.items():
            if isinstance(val, bool) or not isinstance(val, str | int):
                raise _err(path, f"settings.{name}.{k}",
                           f"expected a string or an integer, got {val!r}")
            conv[str(k)] = str(val)
        out.append((name, conv))
    return out


def _known_workloads() -> set[str] | None:
    try:
        from thpsim.workloads import WORKLOADS
    except ImportError:  # the workload registry is optional for parsing
        return None
    return set(WORKLOADS)


def parse_grid(doc: dict, path: str = "<grid>") -> Grid:
    """Validate a parsed TOML document and expand it into cells.

    Parameters
    ----------
    doc : dict
        The TOML document.
    path : str
        Named in error messages.

    Returns
    -------
    Grid

    Raises
    ------
    GridError
        For the first malformed field (message ``PATH: FIELD: problem``).
    """
    _unknown(path, "", doc, _TOP)
    sw = doc.get("sweep")
    if not isinstance(sw, dict):
        raise _err(path, "sweep", "missing [sweep] table")
    _unknown(path, "sweep", sw, _SWEEP)
    if "duration_s" not in sw:
        raise _err(path, "sweep.duration_s", "missing")
    duration = _number(path, "sweep.duration_s", sw["duration_s"])
    sample = _number(path, "sweep.sample_s", sw["sample_s"]) if "sample_s" in sw else None
    seeds = _seeds(path, sw.get("seeds", [0]))
    policies = _policies(path, sw.get("policies", list(POLICIES)))
    workloads = _workloads(path, doc.get("workloads"), _known_workloads())
    settings = _settings(path, doc.get("settings"))
    cells = [Cell(workload_label=label, workload=name, params=params, policy=pol,
                  settings_name=sname, settings=knobs, seed=seed, duration_s=duration,
                  sample_s=sample)
             for label, name, params in workloads for pol in policies
             for sname, knobs in settings for seed in seeds]
    ids = [c.cell_id for c in cells]
    if len(set(ids)) != len(ids):
        raise _err(path, "workloads/settings", "two cells are identical (same workload, "
                                               "params and settings under different names)")
    return Grid(path=path, cells=cells)


def load_grid(path: str | Path) -> Grid:
    """Read and validate ``GRID.toml`` (see the module docstring)."""
    p = str(path)
    try:
        with open(p, "rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise GridError(f"{p}: no such file") from None
    except OSError as e:
        raise GridError(f"{p}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise GridError(f"{p}: not valid TOML ({e})") from None
    return parse_grid(doc, p)
