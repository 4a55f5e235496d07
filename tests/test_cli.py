"""The thpsim command line: layout, explain; bad input gives one line and exit 2.

``thpsim demo`` is tested in tests/commands/test_demo.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from thpsim.cli import main


def test_layout_json(capsys):
    assert main(["layout", "--write", "0-15", "--settings", "enabled=never",
                 "hugepages-64kB/enabled=always", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    pmd = data["pmds"][0]
    assert pmd["picture"][:17] == "4" * 16 + "."
    assert pmd["folios"] == [[0, 4, 16, 0]]


def test_explain_json_matches_e2(capsys):
    """kernel-model.md E2: 64K only -> 32 ascending order-4 attempts."""
    assert main(["explain", "0*512", "--enabled", "64K", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    atts = data["scans"][0]["attempts"]
    assert [(a["order"], a["offset"]) for a in atts] == [(4, 16 * i) for i in range(32)]
    assert data["counters"]["mthp"]["64kB"]["collapse_alloc"] == 32
    assert data["scans"][0]["picture"] == "4" * 512


def test_explain_human_shows_tree_and_grids(capsys):
    assert main(["explain", "0*64 .*448", "--enabled", "16K,32K,64K,128K,256K,512K,1M,2M",
                 "--max-ptes-none", "255"]) == 0
    out = capsys.readouterr().out
    assert "scan 1: SCAN_SUCCEED" in out
    assert "+ o6@0" in out  # E4 at 255: one 256K folio
    assert "before:" in out and "after:" in out


def test_explain_batch_file_and_trace(tmp_path, capsys):
    pats = tmp_path / "p.txt"
    pats.write_text("# comment\n0*512\n.*511 0\n")
    trace = tmp_path / "trace.txt"
    assert main(["explain", f"@{pats}", "--json", "--policy", "linux-7.2",
                 "--trace", str(trace)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert json.loads(lines[1])["scans"][0]["picture"] == "H" * 512  # E19-like: 1 page
    text = trace.read_text()
    assert "mm_collapse_huge_page: mm=" in text and "status=succeeded, order=9" in text


@pytest.mark.parametrize("argv,msg", [
    (["explain", "0*100"], "a PMD has 512"),
    (["explain", "0*512", "--enabled", "3K"], "size 3K: not a folio size"),
    (["explain", "0*512", "--max-ptes-none", "600"], "max_ptes_none"),
    (["explain", "4*8 0*504"], "order-4 run at 0"),
    (["explain", "@/nonexistent/patterns"], "No such file"),
    (["layout", "--write", "5-2"], "bad page item '5-2'"),
    (["layout", "--settings", "enabled=sometimes"], "enabled=sometimes"),
])
def test_bad_input_one_line_exit_2(argv, msg, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("thpsim: error: ") and msg in err
    assert "\n" not in err and "Traceback" not in err


def test_console_script_no_traceback():
    r = subprocess.run([sys.executable, "-m", "thpsim.cli", "explain", "x"],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "unknown character" in r.stderr
