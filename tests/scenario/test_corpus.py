"""The scenario corpus (tests/scenarios/*.toml): every file loads, validates against
docs/scenario.schema.json, runs on the model under all three policies, and its
expectations hold for the policies they name."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from tests.mm.test_real_72_layouts import SCENARIOS as REAL_72_COLUMNS
from tests.scenario.schema_lite import errors as schema_errors
from thpsim.mm.settings import POLICIES
from thpsim.scenario.expect import check_expectations
from thpsim.scenario.model_exec import run_on_model
from thpsim.scenario.spec import load_scenario

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "scenarios"
FILES = sorted(CORPUS.glob("*.toml"))
SCHEMA = json.loads((ROOT / "docs" / "scenario.schema.json").read_text())


def test_corpus_size_and_coverage():
    names = {f.stem for f in FILES}
    assert len(FILES) >= 60
    # every column of real-kernel.md §3.1 and its two MADV_COLLAPSE scenarios
    assert set(REAL_72_COLUMNS) | {"madv_collapse_allnever",
                                   "madv_collapse_over_64k_faults"} <= names
    for prefix, least in (("selftest_", 20), ("fault_", 6), ("madv_collapse_", 8),
                          ("fork_", 2), ("swap", 4), ("fixpoint_", 2), ("split_", 5),
                          ("e", 10)):
        assert sum(n.startswith(prefix) for n in names) >= least, prefix
    # expected_difference stays rare (the issue: at most 5 % of the corpus)
    marked = [f for f in FILES if "expected_difference" in tomllib.loads(f.read_text())]
    assert len(marked) <= len(FILES) // 20


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_loads_and_matches_schema(path):
    sc = load_scenario(path)
    assert sc.name == path.stem
    assert sc.description
    assert schema_errors(tomllib.loads(path.read_text()), SCHEMA) == []


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_runs_and_expectations_hold(path, policy):
    sc = load_scenario(path)
    res = run_on_model(sc, policy)
    assert res["scenario"] == sc.name and res["kernel_or_policy"] == policy
    assert len(res["steps"]) == len(sc.steps)
    labels = [s.label for s in sc.steps if s.op == "snapshot"]
    assert list(res["snapshots"]) == labels
    rep = check_expectations(sc, res)
    assert rep.failures == []
    json.dumps(res)  # the document is plain JSON


def test_every_file_has_expectations_or_says_why():
    """Expectations come only from stated facts; a file without any says so."""
    for f in FILES:
        sc = load_scenario(f)
        if not sc.expectations:
            assert "no expectations" in f.read_text(), f.name


def test_expectations_are_checked(tmp_path):
    """A wrong expectation is caught (the corpus test is not vacuous)."""
    text = (CORPUS / "selftest_collapse_full_K.toml").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("huge = 4", "huge = 3"))
    sc = load_scenario(bad)
    rep = check_expectations(sc, run_on_model(sc, "linux-7.2"))
    assert rep.checked > 0
    assert rep.failures == ["expect 2 (snapshot 'after', region 'area'): expected 3 "
                            "PMD-mapped THP(s), got 4"]
