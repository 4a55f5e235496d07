"""Every corpus scenario on the host kernel, diffed against the model's ``legacy`` policy.

The host's khugepaged is the pre-mTHP baseline (real-kernel.md §1-2), which is what
``legacy`` models, so every scenario is compared **in full** — also those that enable
mTHP sizes and run khugepaged: their mTHP collapses are 7.2-only behaviour, absent
from the host and from ``legacy`` alike (docs/scenarios.md, "Host executor").  The
whole corpus runs once (a module fixture), a summary of every disagreement is
printed (``pytest -s``), then each file is checked on its own.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.scenario_host.conftest import _host_reason, skip_or_fail
from thpsim.scenario import check_expectations, diff_scenario, load_scenario, run_scenario

CORPUS = Path(__file__).resolve().parents[1] / "scenarios"
FILES = sorted(CORPUS.glob("*.toml"))
#: at most 5 % of the corpus may carry expected_difference (docs/scenarios.md)
MAX_EXPECTED_FRACTION = 0.05


def _mthp_khugepaged(sc) -> bool:
    """The scenario enables an mTHP size (not 2048kB) and runs khugepaged."""
    settings = dict(sc.settings)
    for st in sc.steps:
        settings.update(st.settings)
    mthp = any(k.startswith("hugepages-") and not k.startswith("hugepages-2048kB")
               and k.endswith("/enabled") and v != "never" for k, v in settings.items())
    return mthp and any(st.op == "khugepaged" for st in sc.steps)


@pytest.fixture(scope="module")
def corpus_runs():
    """name -> (scenario, host result, model legacy result, differences)."""
    reason = _host_reason()
    if reason is not None:
        skip_or_fail(reason)
    out = {}
    t0 = time.monotonic()
    for f in FILES:
        sc = load_scenario(f)
        h = run_scenario(sc, "host")
        m = run_scenario(sc, "model", policy="legacy")
        out[sc.name] = (sc, h, m, diff_scenario(sc, h, m).differences)
    dt = time.monotonic() - t0
    differ = {k: v for k, v in out.items() if v[3]}
    lines = [f"host vs model:legacy: {len(out)} scenarios in {dt:.1f} s, "
             f"{len(differ)} differ"]
    for name, (sc, _, _, d) in differ.items():
        tag = f" (expected: {sc.expected_difference})" if sc.expected_difference else ""
        lines.append(f"  {name}: {len(d)} difference(s){tag}")
        lines += ["    " + ln for blk in d[:3] for ln in blk.splitlines()]
    print("\n" + "\n".join(lines))
    return out


def test_corpus_is_not_empty():
    assert len(FILES) >= 90


def test_expected_differences_are_rare():
    marked = [f.name for f in FILES if load_scenario(f).expected_difference]
    assert len(marked) <= MAX_EXPECTED_FRACTION * len(FILES), marked


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_host_equals_model_legacy(path, corpus_runs):
    sc, _h, _m, diffs = corpus_runs[path.stem]
    if sc.expected_difference:
        return  # reported by the summary; diff exits 0 for these
    assert not diffs, f"{sc.name}: host vs model:legacy:\n" + "\n".join(diffs)


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_host_meets_legacy_expectations(path, corpus_runs):
    """The [[expect]] entries whose sources describe the pre-mTHP kernel hold on the host."""
    sc, h, _m, _d = corpus_runs[path.stem]
    if sc.expected_difference:
        return
    rep = check_expectations(sc, h, "legacy")
    assert rep.ok, rep.failures


def test_host_sides_with_legacy_where_linux72_collapses_mthp(corpus_runs):
    """The rule of docs/scenarios.md: mTHP + khugepaged scenarios are compared in full
    with legacy.  Where the 7.2 model collapses mTHPs (so it differs from legacy) the
    host matches legacy, not 7.2."""
    seen = 0
    for sc, h, m, diffs in corpus_runs.values():
        if not _mthp_khugepaged(sc) or sc.expected_difference:
            continue
        m72 = run_scenario(sc, "model", policy="linux-7.2")
        if diff_scenario(sc, m, m72).equal:
            continue
        seen += 1
        assert not diffs, sc.name
        assert not diff_scenario(sc, h, m72).equal, sc.name
    assert seen >= 10
