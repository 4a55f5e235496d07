"""`thpsim inspect` command line: errors, output files and rendering (no root needed)."""

from __future__ import annotations

import json

import pytest

import thpsim.host.inspect as hi
from thpsim.cli import main
from thpsim.commands.inspect import render
from thpsim.host.inspect import InspectReport, ProcessReport, VmaReport, cgroup_pids, rollup
from thpsim.layout import PMDLayout


def _report(with_rollup: bool = False) -> InspectReport:
    counters = {"anon-thp-pmd-aligned-2048kB": 2048, "anon-thp-pte-aligned-64kB": 0,
                "anon-thp-pte-partial": 60, "file-thp-pte-aligned-16kB": 16}
    occ = {"present": 527, "none": 497, "zero": 0, "swap": 0, "shared": 3}
    pic = "H" * 512
    v = VmaReport(0x200000, 0x600000, "rw-p", "", "rd wr mr mw me ac hg", True, 4096, 32,
                  counters, occ, 2, [PMDLayout(0x200000, pic, "-" * 512)])
    empty = VmaReport(0x700000, 0x701000, "---p", "", "mr mw me", False, 0, 0, {},
                      {"present": 0, "none": 1, "zero": 0, "swap": 0, "shared": 0}, 0, [])
    procs = [ProcessReport(42, "demo", [v, empty])]
    return InspectReport(procs, rollup(procs) if with_rollup else None,
                         {"policy": "legacy", "enabled": True})


def _one_line_error(capsys, argv, needle: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err


@pytest.mark.parametrize("size", ["3K", "48K", "4M", "big"])
def test_bad_cont_size(capsys, size):
    _one_line_error(capsys, ["inspect", "--cont", size], "--cont")


def test_bad_cgroup(capsys, tmp_path):
    _one_line_error(capsys, ["inspect", "--cgroup", str(tmp_path / "nope")],
                    "not a cgroup directory")


def test_not_root_says_what_is_needed(capsys, monkeypatch):
    monkeypatch.setattr(hi.os, "geteuid", lambda: 1000)
    _one_line_error(capsys, ["inspect", "--json"], "needs root")


def test_pid_and_cgroup_are_exclusive(capsys):
    with pytest.raises(SystemExit) as e:
        main(["inspect", "--pid", "1", "--cgroup", "/sys/fs/cgroup"])
    assert e.value.code == 2


def test_cgroup_pids_walks_children(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "cgroup.procs").write_text("10\n11\n")
    (tmp_path / "a" / "cgroup.procs").write_text("")
    (tmp_path / "a" / "b" / "cgroup.procs").write_text("11\n7\n")
    assert cgroup_pids(str(tmp_path)) == [7, 10, 11]


def test_json_output_file(monkeypatch, tmp_path, capsys):
    calls = {}

    def fake(pids, **kw):
        calls.update(kw, pids=pids)
        return _report(kw["with_rollup"])

    monkeypatch.setattr(hi, "inspect", fake)
    out = tmp_path / "r.json"
    assert main(["inspect", "--pid", "42", "--json", "--rollup", "--cont", "64K",
                 "--cont", "16K", "--pmds", "-o", str(out)]) == 0
    assert capsys.readouterr().out == ""
    assert calls == {"pids": [42], "cgroup": None, "cont_orders": (4, 2), "pmds": True,
                     "inc_smaps": False, "with_rollup": True}
    d = json.loads(out.read_text())
    (v, empty) = d["processes"][0]["vmas"]
    assert d["processes"][0]["pid"] == 42 and d["processes"][0]["comm"] == "demo"
    assert v["start"] == 0x200000 and v["end"] == 0x600000
    assert v["flags"] == "rd wr mr mw me ac hg"
    assert v["counters"]["anon-thp-pte-partial"] == 60
    assert v["pmds"] == [{"addr": 0x200000, "picture": "H" * 512, "shared": "-" * 512}]
    assert v["khugepaged_eligible_pmds"] == 2 and empty["pmds"] == []
    assert d["rollup"]["counters"]["anon-thp-pmd-aligned-2048kB"] == 2048
    assert d["rollup"]["occupancy"]["none"] == 498


def test_human_rendering():
    text = render(_report(), inc_empty=False)
    assert "42 demo" in text
    assert "anon-thp-pmd-aligned-2048kB: 2048 kB (50%)" in text
    assert "anon-thp-pte-partial: 60 kB ( 1%)" in text
    assert "file-thp-pte-aligned-16kB: 16 kB (50%)" in text
    assert "anon-thp-pte-aligned-64kB" not in text  # zero: hidden without --inc-empty
    assert "700000-701000" not in text  # a VMA without pages
    assert "527/497/0/0/3" in text and "PMD 0x200000" in text
    full = render(_report(), inc_empty=True)
    assert "anon-thp-pte-aligned-64kB: 0 kB ( 0%)" in full and "700000-701000" in full
    only = render(_report(with_rollup=True), rollup_only=True)
    assert "42 demo" not in only and "rollup" in only
    assert "2048 kB (50%)" in only and "khugepaged eligible PMDs" in only
