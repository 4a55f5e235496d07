"""RunResult files: save/load round trip and damaged directories."""

from __future__ import annotations

import json

import numpy as np
import pytest

from thpsim.sim import RunResult, RunResultError, simulate


@pytest.fixture(scope="module")
def result():
    return simulate("stacks", params={"threads": 4}, policy="legacy",
                    settings={"khugepaged/max_ptes_none": "0"}, duration_s=30, seed=9)


def test_round_trip(tmp_path, result):
    result.save(tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "layouts.npz", "result.json", "series.parquet"]
    back = RunResult.load(tmp_path / "run")
    assert (back.workload, back.policy, back.seed, back.duration_s) == (
        "stacks", "legacy", 9, 30.0)
    assert back.settings == {"khugepaged/max_ptes_none": "0"}
    assert back.params == result.params
    assert back.summary == result.summary
    assert list(back.series) == list(result.series)
    for k, v in result.series.items():
        assert np.array_equal(back.series[k], v), k
    assert set(back.layouts) == set(result.layouts)
    for label, lay in result.layouts.items():
        for k, v in lay.items():
            assert np.array_equal(back.layouts[label][k], v)
            assert back.layouts[label][k].dtype == v.dtype


def test_overwrite_is_atomic_and_json_is_plain(tmp_path, result):
    d = tmp_path / "run"
    result.save(d)
    result.save(d)  # replaced in place
    doc = json.loads((d / "result.json").read_text())
    assert doc["workload"] == "stacks" and doc["format_version"] == 1
    assert not [p for p in d.iterdir() if p.name.startswith(".thpsim-")]


def test_load_errors(tmp_path, result):
    with pytest.raises(RunResultError, match="not a run directory"):
        RunResult.load(tmp_path)
    d = tmp_path / "run"
    result.save(d)
    (d / "result.json").write_text("{bad")
    with pytest.raises(RunResultError, match=r"result.json: line 1"):
        RunResult.load(d)
    result.save(d)
    (d / "series.parquet").write_bytes(b"junk")
    with pytest.raises(RunResultError, match=r"series\.parquet: not a readable Parquet"):
        RunResult.load(d)
    result.save(d)
    (d / "result.json").write_text(json.dumps({"format_version": 1, "workload": "x"}))
    with pytest.raises(RunResultError, match="missing key 'params'"):
        RunResult.load(d)
