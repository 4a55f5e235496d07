"""``thpsim scenario run|diff``: output, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from thpsim.cli import main

CORPUS = Path(__file__).resolve().parents[1] / "scenarios"
EX = str(CORPUS / "64k_only_mpn511.toml")


def _one_line_error(capsys, msg: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("thpsim: error: ") and msg in err, err
    assert "\n" not in err and "Traceback" not in err
    return err


def test_run_human(capsys):
    assert main(["scenario", "run", EX, "--policy", "linux-7.2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("scenario 64k_only_mpn511 on model:linux-7.2: 64K only")
    assert "snapshot after (process main)" in out
    assert "    PMD 1: 0-511:o4x32" in out and "    PMD 6: 288-303:o4" in out
    assert "khugepaged/full_scans +2" in out
    assert "2 full scan(s)" in out
    assert "expectations: 3 checked, all hold" in out


def test_run_json_and_trace(tmp_path, capsys):
    trace = tmp_path / "trace.txt"
    assert main(["scenario", "run", EX, "--on", "model", "--policy", "linux-7.2", "--json",
                 "--trace", str(trace)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert (res["executor"], res["kernel_or_policy"]) == ("model", "linux-7.2")
    assert res["snapshots"]["after"]["regions"]["r"]["pmds"][1]["picture"] == "4" * 512
    lines = trace.read_text().splitlines()
    assert lines == res["trace"] and any("order=4" in ln for ln in lines)


def test_run_trace_unwritable(capsys):
    assert main(["scenario", "run", EX, "--trace", "/nonexistent/dir/t.txt"]) == 2
    _one_line_error(capsys, "is not writable")


def test_run_failing_expectation_exit_1(tmp_path, capsys):
    p = tmp_path / "x.toml"
    p.write_text((CORPUS / "selftest_collapse_full_K.toml").read_text()
                 .replace("huge = 4", "huge = 3"))
    assert main(["scenario", "run", str(p), "--policy", "legacy"]) == 1
    out = capsys.readouterr().out
    assert "1 failed:" in out and "expected 3 PMD-mapped THP(s), got 4" in out


@pytest.mark.parametrize("on", ["vm"])  # host: tests/scenario_host/test_host_exec.py
def test_run_executor_not_available(on, capsys, monkeypatch):
    from thpsim.scenario.executors import EXECUTORS

    monkeypatch.setitem(EXECUTORS, on, None)  # known, not available (vm: tests/vm)
    assert main(["scenario", "run", EX, "--on", on]) == 2
    _one_line_error(capsys, f"--on {on}: executor '{on}' is not available yet")


def test_run_malformed_file(tmp_path, capsys):
    p = tmp_path / "foo.toml"
    p.write_text('name = "x"\n[[region]]\nname = "r"\npmds = 1\n'
                 '[[step]]\nop = "madvise"\nregion = "r"\nadvice = "hugepages"\n')
    assert main(["scenario", "run", str(p)]) == 2
    _one_line_error(capsys, f"{p}: step 1 (madvise): unknown advice 'hugepages'")


def test_run_missing_file(capsys):
    assert main(["scenario", "run", "/nonexistent/s.toml"]) == 2
    _one_line_error(capsys, "/nonexistent/s.toml: No such file or directory")


def test_diff_equal_exit_0(capsys):
    assert main(["scenario", "diff", EX, "--on", "model", "--policy", "v11",
                 "--vs", "model", "--policy-vs", "v11"]) == 0
    assert capsys.readouterr().out.strip() == \
        "scenario 64k_only_mpn511: model:v11 vs model:v11: equal"


def test_diff_different_exit_1(capsys):
    assert main(["scenario", "diff", EX, "--policy", "linux-7.2",
                 "--policy-vs", "legacy"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("scenario 64k_only_mpn511: model:linux-7.2 vs model:legacy: "
                          "16 differences")
    assert "snapshot 'after', region 'r', PMD 6 (region pages 3072-3583):" in out


def test_diff_expected_difference_exit_0(tmp_path, capsys):
    p = tmp_path / "x.toml"
    p.write_text('expected_difference = "policies differ"\n' + Path(EX).read_text())
    assert main(["scenario", "diff", str(p), "--policy", "linux-7.2",
                 "--policy-vs", "legacy"]) == 0
    out = capsys.readouterr().out
    assert "16 differences" in out and "(expected: policies differ)" in out


@pytest.mark.parametrize("flag,on", [("--on", "vm"), ("--vs", "vm")])
def test_diff_could_not_run_exit_2(flag, on, capsys, monkeypatch):
    from thpsim.scenario.executors import EXECUTORS

    monkeypatch.setitem(EXECUTORS, on, None)  # known, not available (vm: tests/vm)
    assert main(["scenario", "diff", EX, flag, on]) == 2
    _one_line_error(capsys, f"{flag} {on}: executor '{on}' is not available yet")


def test_diff_malformed_exit_2(tmp_path, capsys):
    p = tmp_path / "foo.toml"
    p.write_text('name = "x"\n')
    assert main(["scenario", "diff", str(p)]) == 2
    _one_line_error(capsys, f"{p}: missing field 'region'")


def test_console_no_traceback(tmp_path):
    p = tmp_path / "foo.toml"
    p.write_text('name = "x"\n[[region]]\nname = "r"\npmds = 1\n'
                 '[[step]]\nop = "write"\nregion = "r"\npages = "0-600"\n')
    r = subprocess.run([sys.executable, "-m", "thpsim.cli", "scenario", "run", str(p)],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 2
    assert r.stderr.strip() == (f"thpsim: error: {p}: step 1 (write): field 'pages': "
                                "page 600 is outside region 'r' (512 pages)")
