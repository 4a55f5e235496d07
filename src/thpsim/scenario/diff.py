"""Compare two result documents of one scenario.

Always compared: every step's ``ret``/``errno``, and for every snapshot, region and
PMD the ``picture``, the ``shared`` string and the folio list.  Counters are
compared only where the scenario lists them in ``compare_counters``.  Never
compared: how many full scans a ``khugepaged`` step saw (and whether its wait
timed out), the counter ``khugepaged/full_scans``, trace lines and dmesg.
"""

from __future__ import annotations

from dataclasses import dataclass

from thpsim.layout import PMDLayout
from thpsim.scenario.spec import PAGES_PER_PMD, Scenario

__all__ = ["DiffReport", "counter_value", "diff_results", "diff_scenario", "result_name"]

_ROW = 64


def result_name(res: dict) -> str:
    """``model:linux-7.2`` / ``host:6.18.0-1-amd64``."""
    return f"{res.get('executor', '?')}:{res.get('kernel_or_policy', '?')}"


def counter_value(snapshot: dict, name: str) -> int:
    """A ``compare_counters`` name looked up in one snapshot's counter deltas (0 if absent)."""
    c = snapshot.get("counters", {})
    if name.startswith("hugepages-"):
        size, _, stat = name.removeprefix("hugepages-").partition("/stats/")
        return int(c.get("mthp", {}).get(size, {}).get(stat, 0))
    if name.startswith("khugepaged/"):
        return int(c.get("khugepaged", {}).get(name.removeprefix("khugepaged/"), 0))
    return int(c.get("vmstat", {}).get(name, 0))


def _summary(pmd: dict) -> str:
    return PMDLayout(0, pmd["picture"], pmd["shared"], pmd["folios"]).summary()


def _ret(step: dict) -> str:
    if step.get("ret") is None and step.get("errno") is None:
        return "no return value"
    text = f"ret {step.get('ret')}"
    return text + (f" {step['errno']}" if step.get("errno") else "")


def _string_diff(what: str, a: str, b: str, na: str, nb: str) -> list[str]:
    """Rows of ``_ROW`` characters that differ, both sides and a caret line."""
    w = max(len(na), len(nb))
    out = [f"  {what} (rows of {_ROW}, '^' marks differences):"]
    for i in range(0, max(len(a), len(b)), _ROW):
        ra, rb = a[i:i + _ROW], b[i:i + _ROW]
        if ra == rb:
            continue
        marks = "".join("^" if x != y else " " for x, y in zip(ra.ljust(_ROW), rb.ljust(_ROW),
                                                                 strict=True)).rstrip()
        out.append(f"    {i:4d} {na:<{w}} {ra}")
        out.append(f"         {nb:<{w}} {rb}")
        out.append(f"         {'':<{w}} {marks}")
    return out


def _folios(fs: list[tuple], limit: int = 8) -> str:
    if not fs:
        return "-"
    text = " ".join(str(list(f)) for f in fs[:limit])
    return text + (f" ... (+{len(fs) - limit} more)" if len(fs) > limit else "")


def _pmd_diff(where: str, j: int, pa: dict, pb: dict, na: str, nb: str) -> str | None:
    if (pa["picture"], pa["shared"], pa["folios"]) == (pb["picture"], pb["shared"],
                                                        pb["folios"]):
        return None
    w = max(len(na), len(nb))
    lines = [f"{where}, PMD {j} (region pages {j * PAGES_PER_PMD}-"
             f"{(j + 1) * PAGES_PER_PMD - 1}):",
             f"  {na:<{w}} {_summary(pa)}",
             f"  {nb:<{w}} {_summary(pb)}"]
    if pa["picture"] != pb["picture"]:
        lines += _string_diff("picture", pa["picture"], pb["picture"], na, nb)
    if pa["shared"] != pb["shared"]:
        lines += _string_diff("shared", pa["shared"], pb["shared"], na, nb)
    if pa["folios"] != pb["folios"] and pa["picture"] == pb["picture"]:
        # the same picture, different folios (boundaries, PMD- vs PTE-mapped)
        fa = {tuple(f) for f in pa["folios"]}
        fb = {tuple(f) for f in pb["folios"]}
        lines.append("  folios [first, order, nr_mapped, pmd_mapped]:")
        lines.append(f"    only {na}: {_folios(sorted(fa - fb))}")
        lines.append(f"    only {nb}: {_folios(sorted(fb - fa))}")
    return "\n".join(lines)


def diff_results(a: dict, b: dict, compare_counters=(), names: tuple[str, str] | None = None
                 ) -> list[str]:
    """Differences between result documents ``a`` and ``b`` (empty when equal).

    Each element is one difference; layout differences are multi-line blocks
    (summaries of both sides, then the differing picture/shared rows with
    carets, then the folios only one side has).
    """
    na, nb = names or (result_name(a), result_name(b))
    if na == nb:
        na, nb = f"A={na}", f"B={nb}"
    out: list[str] = []
    sa, sb = a.get("steps", []), b.get("steps", [])
    if len(sa) != len(sb):
        out.append(f"steps: {na} has {len(sa)}, {nb} has {len(sb)}")
    for i, (x, y) in enumerate(zip(sa, sb, strict=False), 1):
        what = f"step {i} ({x.get('op')}"
        what += f" {x['advice']}" if x.get("advice") else ""
        what += f", process {x.get('process')})"
        if x.get("op") != y.get("op"):
            out.append(f"{what}: op {x.get('op')!r} in {na}, {y.get('op')!r} in {nb}")
            continue
        if (x.get("ret"), x.get("errno")) != (y.get("ret"), y.get("errno")):
            out.append(f"{what}: {na} {_ret(x)}, {nb} {_ret(y)}")
    snaps_a, snaps_b = a.get("snapshots", {}), b.get("snapshots", {})
    for label in list(snaps_a) + [k for k in snaps_b if k not in snaps_a]:
        if label not in snaps_b or label not in snaps_a:
            has = na if label in snaps_a else nb
            out.append(f"snapshot {label!r}: only {has} has it")
            continue
        xa, xb = snaps_a[label], snaps_b[label]
        ra, rb = xa.get("regions", {}), xb.get("regions", {})
        for reg in list(ra) + [k for k in rb if k not in ra]:
            where = f"snapshot {label!r}, region {reg!r}"
            if reg not in ra or reg not in rb:
                out.append(f"{where}: only {na if reg in ra else nb} has it")
                continue
            pa, pb = ra[reg]["pmds"], rb[reg]["pmds"]
            if len(pa) != len(pb):
                out.append(f"{where}: {na} has {len(pa)} PMDs, {nb} has {len(pb)}")
            for j, (p, q) in enumerate(zip(pa, pb, strict=False)):
                d = _pmd_diff(where, j, p, q, na, nb)
                if d:
                    out.append(d)
        for name in compare_counters:
            va, vb = counter_value(xa, name), counter_value(xb, name)
            if va != vb:
                out.append(f"snapshot {label!r}, counter {name}: {na} {va:+d}, {nb} {vb:+d}")
    return out


@dataclass
class DiffReport:
    """The outcome of :func:`diff_scenario`."""

    differences: list[str]
    #: the scenario's ``expected_difference`` reason, if it has one
    expected_difference: str | None = None

    @property
    def equal(self) -> bool:
        return not self.differences

    @property
    def exit_code(self) -> int:
        """0 equal (or different as the scenario says it must be), 1 different."""
        return 0 if self.equal or self.expected_difference else 1


def diff_scenario(scenario: Scenario, a: dict, b: dict) -> DiffReport:
    """:func:`diff_results` with the scenario's ``compare_counters``, honouring
    ``expected_difference`` (differences are still reported, but do not fail)."""
    return DiffReport(diff_results(a, b, scenario.compare_counters),
                      scenario.expected_difference)
