"""Scenario files: the TOML format, its dataclasses and full validation.

:func:`load_scenario` reads a file and returns a :class:`Scenario`, or raises
:class:`ScenarioError` with one line naming the file, the place (``step 3
(madvise)``, ``region 2``, ``settings``, ``expect 1``) and the field::

    foo.toml: step 3 (madvise): unknown advice 'hugepages'

Everything that can be checked without running is checked here (unknown keys,
types, ops, advices, page lists, pages outside their region, regions and
processes that do not exist at that point, settings values as the kernel's
sysfs would reject them), so executors never meet a malformed scenario.
docs/scenarios.md describes the format; docs/scenario.schema.json is its
JSON Schema.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thpsim.mm.counters import MTHP_STATS, VMSTAT_EVENTS
from thpsim.mm.madvise import ADVICE
from thpsim.mm.settings import POLICIES, Settings
from thpsim.scenario_pages import parse_pages
from thpsim.units import parse_size

__all__ = [
    "ADVICES",
    "BASE_ADDR",
    "OPS",
    "PAGES_PER_PMD",
    "PAGE_SIZE",
    "PMD_SIZE",
    "PROTS",
    "Expectation",
    "Region",
    "Scenario",
    "ScenarioError",
    "Step",
    "counter_names",
    "default_settings",
    "expand_pattern",
    "load_scenario",
    "parse_scenario",
    "scenario_settings",
]

#: Scenarios are written for 4 KiB base pages (x86_64, the machines of real-kernel.md).
PAGE_SIZE = 4096
PAGES_PER_PMD = 512
PMD_SIZE = PAGE_SIZE * PAGES_PER_PMD
#: Region ``i`` is mapped at ``BASE_ADDR + sum of (pmds + 1) * PMD_SIZE`` of the regions before it.
BASE_ADDR = 1 << 30

OPS = ("madvise", "write", "read", "khugepaged", "snapshot", "fork", "exit", "mprotect",
       "munmap", "settings")
ADVICES = tuple(ADVICE)
PROTS = ("rw", "r", "none")

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")

_TOP_KEYS = ("name", "description", "swap_mb", "settings", "region", "step",
             "compare_counters", "expected_difference", "expect")
_REGION_KEYS = ("name", "pmds", "size")
_COMMON_STEP_KEYS = ("op", "process")
#: op -> (required keys, optional keys), besides op and process
_STEP_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "madvise": (("region", "advice"), ("pages",)),
    "write": (("region",), ("pages",)),
    "read": (("region",), ("pages",)),
    "mprotect": (("region", "prot"), ("pages",)),
    "munmap": (("region",), ("pages",)),
    "khugepaged": ((), ("full_scans", "timeout_s")),
    "snapshot": (("label",), ()),
    "fork": ((), ("child",)),
    "exit": ((), ()),
    "settings": (("settings",), ()),
}
_EXPECT_KEYS = ("source", "policies", "snapshot", "region", "pmds", "pictures", "shared",
                "huge", "swap", "same_as", "step", "ret", "errno")
_EXPECT_LAYOUT = ("pmds", "pictures", "shared", "huge", "swap")

PICTURE_CHARS = set(".zZs0123456789abcdHfx")
SHARED_CHARS = set("S-")
_RUN_TOKEN = re.compile(r"^(.)\*(\d+)$")
_SUMMARY_ITEM = re.compile(r"^\d+(-\d+)?:(o[0-9]+(x\d+)?|swap|zero|hugezero)$")

DEFAULT_FULL_SCANS = 2
DEFAULT_TIMEOUT_S = 10.0


class ScenarioError(ValueError):
    """A malformed scenario file; the message is one line naming file, place and field."""


# --- dataclasses ------------------------------------------------------------------------
@dataclass(frozen=True)
class Region:
    """A PMD-aligned private anonymous read/write mapping of the main process."""

    name: str
    index: int
    nr_pages: int
    addr: int

    @property
    def nr_pmds(self) -> int:
        """PMD windows the region covers (the last one may be partial)."""
        return -(-self.nr_pages // PAGES_PER_PMD)

    @property
    def length(self) -> int:
        return self.nr_pages * PAGE_SIZE


@dataclass(frozen=True)
class Step:
    """One ``[[step]]``; ``index`` is 1-based, as in error messages and docs."""

    index: int
    op: str
    process: str = "main"
    region: str | None = None
    pages: str | None = None
    #: the page list as contiguous runs ``(first, end)`` relative to the region, end exclusive
    runs: tuple[tuple[int, int], ...] = ()
    advice: str | None = None
    prot: str | None = None
    full_scans: int = DEFAULT_FULL_SCANS
    timeout_s: float = DEFAULT_TIMEOUT_S
    label: str | None = None
    child: str | None = None
    settings: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """``madvise collapse r[0-511]`` style, for human output and diffs."""
        parts = [self.op]
        if self.advice:
            parts.append(self.advice)
        if self.prot:
            parts.append(self.prot)
        if self.region:
            parts.append(self.region + (f"[{self.pages}]" if self.pages else ""))
        if self.op == "khugepaged":
            parts.append(f"full_scans={self.full_scans}")
        if self.label:
            parts.append(self.label)
        if self.child:
            parts.append(f"-> {self.child}")
        if self.settings:
            parts.append(" ".join(f"{k}={v}" for k, v in self.settings.items()))
        return " ".join(parts)


@dataclass(frozen=True)
class Expectation:
    """One ``[[expect]]`` entry (see docs/scenarios.md, "Expectations")."""

    index: int
    source: str
    policies: tuple[str, ...]
    snapshot: str | None = None
    region: str | None = None
    pmds: tuple[str, ...] | None = None
    pictures: tuple[str, ...] | None = None
    shared: tuple[str, ...] | None = None
    huge: int | None = None
    swap: int | None = None
    same_as: str | None = None
    step: int | None = None
    ret: int | None = None
    errno: str | None = None


@dataclass(frozen=True)
class Scenario:
    """A validated scenario file."""

    name: str
    path: str
    description: str = ""
    swap_mb: int | None = None
    settings: dict[str, str] = field(default_factory=dict)
    regions: tuple[Region, ...] = ()
    steps: tuple[Step, ...] = ()
    compare_counters: tuple[str, ...] = ()
    expected_difference: str | None = None
    expectations: tuple[Expectation, ...] = ()

    def region(self, name: str) -> Region:
        for r in self.regions:
            if r.name == name:
                return r
        raise KeyError(name)


# --- helpers shared with executors ----------------------------------------------------
def default_settings() -> dict[str, str]:
    """Every writable knob at the model's (upstream) default: what executors reset to."""
    return Settings().as_dict()


def scenario_settings(scenario: Scenario) -> dict[str, str]:
    """The complete knob set a scenario starts from: defaults, then its ``[settings]``."""
    return default_settings() | scenario.settings


def counter_names() -> list[str]:
    """Every name ``compare_counters`` accepts."""
    sizes = [f"{4 << o}kB" for o in range(2, 10)]
    return ([*VMSTAT_EVENTS]
            + [f"hugepages-{s}/stats/{st}" for s in sizes for st in MTHP_STATS]
            + ["khugepaged/pages_collapsed"])


def expand_pattern(text: str, alphabet: set[str], nr: int = PAGES_PER_PMD) -> str:
    """``"9 .*511"`` -> the 512-character string; ``ValueError`` says what is wrong."""
    out = []
    for tok in text.split():
        m = _RUN_TOKEN.match(tok)
        out.append(m.group(1) * int(m.group(2)) if m else tok)
    pat = "".join(out)
    bad = sorted(set(pat) - alphabet)
    if bad:
        raise ValueError(f"unknown character(s) {''.join(bad)!r}")
    if len(pat) != nr:
        raise ValueError(f"{len(pat)} characters, a PMD has {nr}")
    return pat


# --- the loader ---------------------------------------------------------------------------
class _Ctx:
    """Builds error messages: ``<file>: <where>: <text>``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def err(self, where: str, text: str) -> ScenarioError:
        return ScenarioError(f"{self.path}: {where + ': ' if where else ''}{text}")


def _type_name(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "a table"}.get(type(v), type(v).__name__)


def _check_keys(ctx: _Ctx, where: str, table: dict, allowed: tuple[str, ...],
                required: tuple[str, ...] = ()) -> None:
    for k in table:
        if k not in allowed:
            raise ctx.err(where, f"unknown key {k!r}")
    for k in required:
        if k not in table:
            raise ctx.err(where, f"missing field {k!r}")


def _get_str(ctx: _Ctx, where: str, table: dict, key: str, default: str | None = None,
             required: bool = False) -> str | None:
    if key not in table:
        if required:
            raise ctx.err(where, f"missing field {key!r}")
        return default
    v = table[key]
    if not isinstance(v, str):
        raise ctx.err(where, f"field {key!r} must be a string, not {_type_name(v)}")
    return v


def _get_int(ctx: _Ctx, where: str, table: dict, key: str, default: int | None = None,
             minimum: int | None = None, required: bool = False) -> int | None:
    if key not in table:
        if required:
            raise ctx.err(where, f"missing field {key!r}")
        return default
    v = table[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise ctx.err(where, f"field {key!r} must be an integer, not {_type_name(v)}")
    if minimum is not None and v < minimum:
        raise ctx.err(where, f"field {key!r} must be at least {minimum}, not {v}")
    return v


def _get_table(ctx: _Ctx, where: str, table: dict, key: str) -> dict:
    v = table.get(key, {})
    if not isinstance(v, dict):
        raise ctx.err(where, f"field {key!r} must be a table, not {_type_name(v)}")
    return v


def _get_str_list(ctx: _Ctx, where: str, table: dict, key: str) -> tuple[str, ...] | None:
    if key not in table:
        return None
    v = table[key]
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ctx.err(where, f"field {key!r} must be an array of strings")
    return tuple(v)


def _settings_table(ctx: _Ctx, where: str, raw: dict) -> dict[str, str]:
    """Validate knob names and values against the model's sysfs (in isolation)."""
    out: dict[str, str] = {}
    scratch = Settings()
    for path, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ctx.err(where, f"{path!r} must be a string or an integer, "
                                 f"not {_type_name(value)}")
        text = str(value)
        try:
            scratch.write(path, text)
        except OSError as e:
            raise ctx.err(where, f"{path!r} = {text!r}: {e.strerror}") from None
        out[path.removeprefix("/sys/kernel/mm/transparent_hugepage/")] = text
    return out


def _runs(pages) -> tuple[tuple[int, int], ...]:
    """Sorted unique page offsets -> contiguous ``(first, end)`` runs."""
    runs: list[list[int]] = []
    for p in pages.tolist():
        if runs and runs[-1][1] == p:
            runs[-1][1] = p + 1
        else:
            runs.append([p, p + 1])
    return tuple((a, b) for a, b in runs)


def _load_regions(ctx: _Ctx, raw: Any) -> tuple[Region, ...]:
    if not isinstance(raw, list) or not raw:
        raise ctx.err("", "missing field 'region' (at least one [[region]] table)")
    regions: list[Region] = []
    addr = BASE_ADDR
    for i, r in enumerate(raw, 1):
        where = f"region {i}"
        if not isinstance(r, dict):
            raise ctx.err(where, "must be a table")
        _check_keys(ctx, where, r, _REGION_KEYS, ("name",))
        name = _get_str(ctx, where, r, "name")
        if not _IDENT_RE.match(name):
            raise ctx.err(where, f"field 'name': {name!r} is not a valid name "
                                 "(letters, digits, _ and -, not starting with a digit)")
        if any(x.name == name for x in regions):
            raise ctx.err(where, f"field 'name': duplicate region {name!r}")
        where = f"region {i} ({name})"
        if ("pmds" in r) == ("size" in r):
            raise ctx.err(where, "give exactly one of 'pmds' and 'size'")
        if "pmds" in r:
            nr_pages = _get_int(ctx, where, r, "pmds", minimum=1) * PAGES_PER_PMD
        else:
            text = _get_str(ctx, where, r, "size")
            try:
                nbytes = parse_size(text)
            except ValueError as e:
                raise ctx.err(where, f"field 'size': {e}") from None
            if nbytes <= 0 or nbytes % PAGE_SIZE:
                raise ctx.err(where, f"field 'size': {text!r} is not a positive multiple of 4K")
            nr_pages = nbytes // PAGE_SIZE
        reg = Region(name, i, nr_pages, addr)
        regions.append(reg)
        addr += (reg.nr_pmds + 1) * PMD_SIZE
    return tuple(regions)


def _load_step(ctx: _Ctx, i: int, s: Any, regions: dict[str, Region],
               alive: set[str], labels: set[str]) -> Step:
    if not isinstance(s, dict):
        raise ctx.err(f"step {i}", "must be a table")
    if "op" not in s:
        raise ctx.err(f"step {i}", "missing field 'op'")
    op = s["op"]
    if not isinstance(op, str):
        raise ctx.err(f"step {i}", f"field 'op' must be a string, not {_type_name(op)}")
    if op not in OPS:
        raise ctx.err(f"step {i}", f"unknown op {op!r} (choose from {', '.join(OPS)})")
    where = f"step {i} ({op})"
    required, optional = _STEP_KEYS[op]
    _check_keys(ctx, where, s, _COMMON_STEP_KEYS + required + optional, required)
    process = _get_str(ctx, where, s, "process", "main")
    if process not in alive:
        raise ctx.err(where, f"field 'process': undefined process {process!r} "
                             f"(alive here: {', '.join(sorted(alive))})")
    kw: dict[str, Any] = {"index": i, "op": op, "process": process}
    if "region" in required:
        name = _get_str(ctx, where, s, "region")
        if name not in regions:
            raise ctx.err(where, f"field 'region': undefined region {name!r}")
        reg = regions[name]
        kw["region"] = name
        text = _get_str(ctx, where, s, "pages")
        if text is None:
            kw["runs"] = ((0, reg.nr_pages),)
        else:
            try:
                pages = parse_pages(text)
            except ValueError as e:
                raise ctx.err(where, f"field 'pages': {e}") from None
            if pages.size == 0:
                raise ctx.err(where, "field 'pages': no pages given")
            if pages[-1] >= reg.nr_pages:
                raise ctx.err(where, f"field 'pages': page {int(pages[-1])} is outside "
                                     f"region {name!r} ({reg.nr_pages} pages)")
            kw["pages"] = text
            kw["runs"] = _runs(pages)
            if op in ("mprotect", "munmap") and len(kw["runs"]) != 1:
                raise ctx.err(where, f"field 'pages': {op} needs one contiguous range")
    if op == "madvise":
        adv = _get_str(ctx, where, s, "advice")
        if adv not in ADVICES:
            raise ctx.err(where, f"unknown advice {adv!r} (choose from {'|'.join(ADVICES)})")
        kw["advice"] = adv
    elif op == "mprotect":
        prot = _get_str(ctx, where, s, "prot")
        if prot not in PROTS:
            raise ctx.err(where, f"field 'prot': unknown protection {prot!r} "
                                 f"(choose from {'|'.join(PROTS)})")
        kw["prot"] = prot
    elif op == "khugepaged":
        kw["full_scans"] = _get_int(ctx, where, s, "full_scans", DEFAULT_FULL_SCANS, minimum=1)
        t = s.get("timeout_s", DEFAULT_TIMEOUT_S)
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) \
                or t <= 0:
            raise ctx.err(where, "field 'timeout_s' must be a positive number")
        kw["timeout_s"] = float(t)
    elif op == "snapshot":
        label = _get_str(ctx, where, s, "label")
        if not _NAME_RE.match(label):
            raise ctx.err(where, f"field 'label': {label!r} is not a valid label")
        if label in labels:
            raise ctx.err(where, f"field 'label': duplicate snapshot label {label!r}")
        labels.add(label)
        kw["label"] = label
    elif op == "fork":
        child = _get_str(ctx, where, s, "child", "child")
        if not _IDENT_RE.match(child):
            raise ctx.err(where, f"field 'child': {child!r} is not a valid process name")
        if child in alive:
            raise ctx.err(where, f"field 'child': process {child!r} already exists")
        alive.add(child)
        kw["child"] = child
    elif op == "exit":
        alive.discard(process)
    elif op == "settings":
        raw = _get_table(ctx, where, s, "settings")
        if not raw:
            raise ctx.err(where, "field 'settings': empty table")
        kw["settings"] = _settings_table(ctx, f"{where}: settings", raw)
    return Step(**kw)


def _load_expect(ctx: _Ctx, i: int, e: Any, sc: dict[str, Any]) -> Expectation:
    where = f"expect {i}"
    if not isinstance(e, dict):
        raise ctx.err(where, "must be a table")
    _check_keys(ctx, where, e, _EXPECT_KEYS, ("source",))
    kw: dict[str, Any] = {"index": i, "source": _get_str(ctx, where, e, "source")}
    pols = _get_str_list(ctx, where, e, "policies")
    if pols is not None:
        bad = [p for p in pols if p not in POLICIES]
        if bad or not pols:
            raise ctx.err(where, f"field 'policies': unknown policy {bad[0] if bad else ''!r} "
                                 f"(choose from {', '.join(POLICIES)})")
    kw["policies"] = pols if pols is not None else POLICIES
    steps: tuple[Step, ...] = sc["steps"]
    snaps = {s.label: s for s in steps if s.op == "snapshot"}
    if "step" in e:
        for k in ("snapshot", "region", "same_as", *_EXPECT_LAYOUT):
            if k in e:
                raise ctx.err(where, f"field {k!r} cannot be combined with 'step'")
        n = _get_int(ctx, where, e, "step")
        if not 1 <= n <= len(steps):
            raise ctx.err(where, f"field 'step': no step {n} (the file has {len(steps)})")
        if "ret" not in e and "errno" not in e:
            raise ctx.err(where, "a step expectation needs 'ret' and/or 'errno'")
        kw["step"] = n
        kw["ret"] = _get_int(ctx, where, e, "ret")
        kw["errno"] = _get_str(ctx, where, e, "errno")
        return Expectation(**kw)
    for k in ("ret", "errno"):
        if k in e:
            raise ctx.err(where, f"field {k!r} needs 'step'")
    label = _get_str(ctx, where, e, "snapshot", required=True)
    if label not in snaps:
        raise ctx.err(where, f"field 'snapshot': undefined snapshot {label!r}")
    kw["snapshot"] = label
    if "same_as" in e:
        for k in ("region", *_EXPECT_LAYOUT):
            if k in e:
                raise ctx.err(where, f"field {k!r} cannot be combined with 'same_as'")
        other = _get_str(ctx, where, e, "same_as")
        if other not in snaps or other == label:
            raise ctx.err(where, f"field 'same_as': undefined snapshot {other!r}")
        kw["same_as"] = other
        return Expectation(**kw)
    name = _get_str(ctx, where, e, "region", required=True)
    regions: dict[str, Region] = sc["regions"]
    if name not in regions:
        raise ctx.err(where, f"field 'region': undefined region {name!r}")
    if not any(k in e for k in _EXPECT_LAYOUT):
        raise ctx.err(where, f"a layout expectation needs one of {', '.join(_EXPECT_LAYOUT)}")
    kw["region"] = name
    nr = regions[name].nr_pmds
    for key, check in (("pmds", _check_summary), ("pictures", _check_picture),
                       ("shared", _check_shared)):
        vals = _get_str_list(ctx, where, e, key)
        if vals is None:
            continue
        if len(vals) != nr:
            raise ctx.err(where, f"field {key!r}: {len(vals)} entries, region {name!r} "
                                 f"has {nr} PMDs")
        for j, v in enumerate(vals):
            if v == "*":
                continue
            try:
                check(v)
            except ValueError as ex:
                raise ctx.err(where, f"field {key!r}: PMD {j}: {ex}") from None
        kw[key] = vals
    for key in ("huge", "swap"):
        kw[key] = _get_int(ctx, where, e, key, minimum=0)
    return Expectation(**kw)


def _check_summary(text: str) -> None:
    if text == "empty":
        return
    for item in text.split():
        if not _SUMMARY_ITEM.match(item):
            raise ValueError(f"bad summary item {item!r} (e.g. '0-63:o4x4', '300:o0', "
                             "'0-7:swap')")


def _check_picture(text: str) -> None:
    expand_pattern(text, PICTURE_CHARS)


def _check_shared(text: str) -> None:
    expand_pattern(text, SHARED_CHARS)


def parse_scenario(data: dict, path: str = "<scenario>") -> Scenario:
    """Validate a parsed TOML document (see :func:`load_scenario`)."""
    ctx = _Ctx(path)
    _check_keys(ctx, "", data, _TOP_KEYS)
    name = _get_str(ctx, "", data, "name", required=True)
    if not _NAME_RE.match(name):
        raise ctx.err("", f"field 'name': {name!r} is not a valid name "
                          "(letters, digits, '_', '-', '.')")
    description = _get_str(ctx, "", data, "description", "")
    swap_mb = _get_int(ctx, "", data, "swap_mb", minimum=1)
    settings = _settings_table(ctx, "settings", _get_table(ctx, "", data, "settings"))
    regions = _load_regions(ctx, data.get("region"))
    by_name = {r.name: r for r in regions}
    raw_steps = data.get("step")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise ctx.err("", "missing field 'step' (at least one [[step]] table)")
    alive = {"main"}
    labels: set[str] = set()
    steps = tuple(_load_step(ctx, i, s, by_name, alive, labels)
                  for i, s in enumerate(raw_steps, 1))
    counters = _get_str_list(ctx, "", data, "compare_counters") or ()
    known = set(counter_names())
    for c in counters:
        if c == "khugepaged/full_scans":
            raise ctx.err("", "compare_counters: 'khugepaged/full_scans' is informational "
                              "and never compared")
        if c not in known:
            raise ctx.err("", f"compare_counters: unknown counter {c!r} (e.g. "
                              "'thp_collapse_alloc', 'hugepages-64kB/stats/collapse_alloc', "
                              "'khugepaged/pages_collapsed')")
    expected_difference = _get_str(ctx, "", data, "expected_difference")
    if expected_difference is not None and not expected_difference.strip():
        raise ctx.err("", "field 'expected_difference' must give the reason")
    raw_expect = data.get("expect", [])
    if not isinstance(raw_expect, list):
        raise ctx.err("", "field 'expect' must be an array of tables ([[expect]])")
    sc = {"steps": steps, "regions": by_name}
    expectations = tuple(_load_expect(ctx, i, e, sc) for i, e in enumerate(raw_expect, 1))
    return Scenario(name=name, path=path, description=description, swap_mb=swap_mb,
                    settings=settings, regions=regions, steps=steps,
                    compare_counters=tuple(counters),
                    expected_difference=expected_difference, expectations=expectations)


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file.

    Raises
    ------
    ScenarioError
        One line: ``<path>: <place>: <what is wrong>``; also for unreadable files
        and TOML syntax errors.
    """
    p = str(path)
    try:
        with open(p, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as e:
        raise ScenarioError(f"{p}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{p}: invalid TOML: {str(e).splitlines()[0]}") from None
    return parse_scenario(data, p)
