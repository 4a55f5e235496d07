"""``thpsim simulate``: listing, running, saving, one-line errors."""

from __future__ import annotations

import json

from thpsim.cli import main
from thpsim.sim import RunResult


def test_list(capsys):
    assert main(["simulate", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("allocator", "forkserver", "stacks", "sparse", "dense", "replay", "trace"):
        assert f"{name}: " in out
    assert "live_fraction" in out


def test_run_json_and_report(tmp_path, capsys):
    d = tmp_path / "rep"
    rc = main(["simulate", "dense", "-p", "size=4M", "--policy", "legacy", "--settings",
               "khugepaged/max_ptes_none=0", "--duration", "60", "--seed", "3", "--json",
               "--report", str(d)])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["policy"] == "legacy" and doc["settings"] == {"khugepaged/max_ptes_none": "0"}
    assert doc["summary"]["rss_kb"] == 4096
    back = RunResult.load(d)
    assert back.summary == doc["summary"] and back.params["size"] == 4 << 20


def test_text_output(capsys):
    assert main(["simulate", "stacks", "-p", "threads=2", "--duration", "20"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("stacks under linux-7.2, 20 s simulated")
    assert "rss_kb" in out and "khugepaged_cpu_ms" in out


def test_errors_are_one_line(capsys, tmp_path):
    cases = [
        (["simulate"], "give a WORKLOAD"),
        (["simulate", "nope"], "unknown workload 'nope'"),
        (["simulate", "dense", "-p", "size"], "--param 'size': expected KEY=VALUE"),
        (["simulate", "dense", "-p", "size=lots"], "parameter size"),
        (["simulate", "dense", "-p", "colour=red"], "unknown parameter 'colour'"),
        (["simulate", "dense", "--settings", "khugepaged/max_ptes_none=512"],
         "khugepaged/max_ptes_none"),
        (["simulate", "dense", "--settings", "bogus/knob=1"], "bogus/knob"),
        (["simulate", "trace", "-p", f"path={tmp_path}/none.lackey"], "none.lackey"),
        (["simulate", "replay", "-p", f"snapshots={tmp_path}/x.thpsnap"], "x.thpsnap"),
    ]
    for argv, text in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("thpsim: error: ") and text in err, (argv, err)
        assert err.count("\n") == 1, err


def test_report_dir_not_writable(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["simulate", "dense", "-p", "size=4M", "--duration", "10", "--report",
                 str(f / "sub")]) == 2
    assert capsys.readouterr().err.startswith("thpsim: error: --report")
