"""Human-readable rendering of scenario results and diffs (``thpsim scenario``)."""

from __future__ import annotations

from thpsim.layout import PMDLayout
from thpsim.scenario.diff import DiffReport, result_name
from thpsim.scenario.expect import ExpectReport
from thpsim.scenario.spec import Scenario

__all__ = ["render_diff", "render_result"]


def _step_outcome(res: dict) -> str:
    if res["op"] == "khugepaged":
        n = res.get("full_scans")
        return (f"timed out after {n} full scan(s)" if res.get("timed_out")
                else f"{n} full scan(s)")
    if res.get("ret") is None:
        return ""
    if res.get("errno"):
        return f"{res['ret']} {res['errno']}"
    if res["op"] in ("write", "read"):
        return f"{res['ret']} pages"
    return str(res["ret"])


def _counter_lines(c: dict) -> list[str]:
    out = [f"{k} {v:+d}" for k, v in c.get("vmstat", {}).items()]
    for size, vals in c.get("mthp", {}).items():
        out += [f"hugepages-{size}/stats/{k} {v:+d}" for k, v in vals.items()]
    out += [f"khugepaged/{k} {v:+d}" for k, v in c.get("khugepaged", {}).items()]
    return out


def render_result(sc: Scenario, res: dict, expect: ExpectReport | None = None) -> str:
    """Steps with their results; per snapshot, region and PMD the summary notation;
    counter deltas; expectations."""
    out = [f"scenario {sc.name} on {result_name(res)}"
           + (f": {sc.description}" if sc.description else "")]
    out.append("steps:")
    w = max(len(s.process) for s in sc.steps)
    for step, r in zip(sc.steps, res["steps"], strict=True):
        text = f"  {step.index:3d} {step.process:<{w}} {step.describe()}"
        outcome = _step_outcome(r)
        out.append(f"{text:<60} {outcome}".rstrip() if outcome else text)
    for label, snap in res["snapshots"].items():
        out.append(f"snapshot {label} (process {snap.get('process', 'main')})")
        for name, reg in snap["regions"].items():
            out.append(f"  region {name}")
            for j, pmd in enumerate(reg["pmds"]):
                lay = PMDLayout(0, pmd["picture"], pmd["shared"], pmd["folios"])
                shared = pmd["shared"].count("S")
                extra = f"  ({shared} shared)" if shared else ""
                out.append(f"    PMD {j}: {lay.summary()}{extra}")
        lines = _counter_lines(snap.get("counters", {}))
        out.append("  counters: " + (", ".join(lines) if lines else "none moved"))
    for w_ in res.get("dmesg", []):
        out.append(f"dmesg: {w_}")
    if expect is not None and expect.checked:
        if expect.ok:
            out.append(f"expectations: {expect.checked} checked, all hold")
        else:
            out.append(f"expectations: {expect.checked} checked, "
                       f"{len(expect.failures)} failed:")
            out += [f"  {f}" for f in expect.failures]
    return "\n".join(out)


def render_diff(sc: Scenario, a: dict, b: dict, rep: DiffReport) -> str:
    head = f"scenario {sc.name}: {result_name(a)} vs {result_name(b)}"
    if rep.equal:
        text = f"{head}: equal"
        if rep.expected_difference:
            text += f" (note: the scenario expects a difference: {rep.expected_difference})"
        return text
    n = len(rep.differences)
    lines = [f"{head}: {n} difference{'s' if n != 1 else ''}"]
    if rep.expected_difference:
        lines.append(f"(expected: {rep.expected_difference})")
    lines += rep.differences
    return "\n".join(lines)
