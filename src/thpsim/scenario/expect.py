"""Check a scenario's ``[[expect]]`` entries against a result document.

An expectation states what a named source (a spec section, a kernel selftest)
says the kernel does.  It applies to the model policies listed in its
``policies`` (all three by default); results of other executors are checked
against the policy the caller names (e.g. ``linux-7.2`` for the VM).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from thpsim.layout import PMDLayout
from thpsim.scenario.spec import (
    PAGES_PER_PMD,
    PICTURE_CHARS,
    SHARED_CHARS,
    Expectation,
    Scenario,
    expand_pattern,
)

__all__ = ["ExpectReport", "check_expectations"]


@dataclass
class ExpectReport:
    """How many expectations applied and which failed (one line each)."""

    checked: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def _summary(pmd: dict) -> str:
    return PMDLayout(0, pmd["picture"], pmd["shared"], pmd["folios"]).summary()


def _layout_failures(e: Expectation, pmds: list[dict]) -> list[str]:
    out = []
    where = f"expect {e.index} (snapshot {e.snapshot!r}, region {e.region!r})"
    for key, get, alphabet in (("pmds", _summary, None),
                               ("pictures", lambda p: p["picture"], PICTURE_CHARS),
                               ("shared", lambda p: p["shared"], SHARED_CHARS)):
        want = getattr(e, key)
        if want is None:
            continue
        for j, (w, pmd) in enumerate(zip(want, pmds, strict=True)):
            if w == "*":
                continue
            got = get(pmd)
            w_full = w if alphabet is None else expand_pattern(w, alphabet)
            if got != w_full:
                shown = got if alphabet is None else _runs(got)
                out.append(f"{where}: PMD {j} {key}: expected {w!r}, got {shown!r}")
    if e.huge is not None:
        huge = sum(1 for p in pmds if p["picture"] == "H" * PAGES_PER_PMD)
        if huge != e.huge:
            out.append(f"{where}: expected {e.huge} PMD-mapped THP(s), got {huge}")
    if e.swap is not None:
        swap = sum(p["picture"].count("s") for p in pmds)
        if swap != e.swap:
            out.append(f"{where}: expected {e.swap} swap entries, got {swap}")
    return out


def _runs(s: str) -> str:
    """``"9....."`` -> ``"9 .*5"``: a picture in the expectation notation."""
    out = []
    i = 0
    while i < len(s):
        j = i
        while j < len(s) and s[j] == s[i]:
            j += 1
        out.append(s[i] if j - i == 1 else f"{s[i]}*{j - i}")
        i = j
    return " ".join(out)


def check_expectations(scenario: Scenario, result: dict, policy: str | None = None
                       ) -> ExpectReport:
    """Check the expectations that apply to ``policy`` (default: the result's
    ``kernel_or_policy`` for a model result; none apply otherwise)."""
    if policy is None and result.get("executor") == "model":
        policy = result.get("kernel_or_policy")
    rep = ExpectReport()
    snaps = result.get("snapshots", {})
    for e in scenario.expectations:
        if policy not in e.policies:
            continue
        rep.checked += 1
        if e.step is not None:
            st = result["steps"][e.step - 1]
            where = f"expect {e.index} (step {e.step}, {st.get('op')})"
            if e.ret is not None and st.get("ret") != e.ret:
                rep.failures.append(f"{where}: expected ret {e.ret}, got {st.get('ret')} "
                                    f"{st.get('errno') or ''}".rstrip())
            if e.errno is not None and st.get("errno") != e.errno:
                rep.failures.append(f"{where}: expected errno {e.errno}, got {st.get('errno')}")
            continue
        snap = snaps[e.snapshot]
        if e.same_as is not None:
            other = snaps[e.same_as]
            for reg, data in snap["regions"].items():
                if data != other["regions"].get(reg):
                    rep.failures.append(f"expect {e.index}: snapshot {e.snapshot!r} region "
                                        f"{reg!r} differs from snapshot {e.same_as!r}")
            continue
        rep.failures += _layout_failures(e, snap["regions"][e.region]["pmds"])
    return rep
