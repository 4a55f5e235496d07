"""``thpsim whatif`` on the command line: table, JSON, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from thpsim.cli import main
from thpsim.snapshot import io
from thpsim.snapshot.core import PRESENT, Snapshot, SnapshotVma

NR = 512
BASE = 1 << 30


@pytest.fixture
def snapfile(tmp_path):
    n = 2 * NR
    cols = {c: np.zeros(n, Snapshot.DTYPES[c]) for c in Snapshot.COLUMNS}
    cols["order"][:] = -1
    cols["state"][:400] = PRESENT  # PMD 0: 400 pages; PMD 1: 10 pages
    cols["state"][NR : NR + 10] = PRESENT
    pr = cols["state"] == PRESENT
    cols["order"][pr] = 0
    cols["mapcount"][pr] = 1
    cols["exclusive"][pr] = True
    snap = Snapshot([SnapshotVma(BASE, BASE + n * 4096)], **cols, comm="t", pid=7,
                    settings={"enabled": "always"})
    path = tmp_path / "s.thpsnap"
    io.save_snapshot(snap, path)
    return str(path)


def test_json_one_result_per_combination(snapfile, capsys):
    rc = main(["whatif", snapfile, "--policy", "legacy", "v11", "--settings",
               "max_ptes_none=511", "--settings", "max_ptes_none=0", "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["version"] == 1 and doc["scans"] == "fixpoint"
    labels = [r["label"] for r in doc["results"]]
    assert labels == ["legacy max_ptes_none=511", "legacy max_ptes_none=0",
                      "v11 max_ptes_none=511", "v11 max_ptes_none=0"]
    by = {r["label"]: r for r in doc["results"]}
    # 511: both PMDs collapse (400 and 10 present); 0: none does
    assert by["legacy max_ptes_none=511"]["collapses"] == {"9": 2}
    assert by["legacy max_ptes_none=511"]["bloat_pages"] == 112 + 502
    assert by["legacy max_ptes_none=0"]["collapses"] == {}


def test_snapshot_after_settings(snapfile, capsys):
    assert main(["whatif", "--policy", "legacy", "--json", "--settings",
                 "max_ptes_none=0", snapfile]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["label"] for r in doc["results"]] == ["legacy max_ptes_none=0"]


def test_table_and_output_file(snapfile, tmp_path, capsys):
    out = tmp_path / "t.txt"
    assert main(["whatif", snapfile, "--scans", "2", "-o", str(out)]) == 0
    text = out.read_text()
    assert "TLB entries amd" in text and "linux-7.2" in text and "legacy" in text
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("argv, what", [
    (["whatif"], "SNAPSHOT file or --pid"),
    (["whatif", "/nonexistent/x.thpsnap"], "no such file"),
    (["whatif", "SNAP", "--scans", "0"], "--scans 0"),
    (["whatif", "SNAP", "--settings", "max_ptes_none"], "KEY=VALUE"),
    (["whatif", "SNAP", "--settings", "max_ptes_none=9999"], "max_ptes_none"),
    (["whatif", "SNAP", "--settings", "nonsense/knob=1"], "nonsense/knob"),
])
def test_errors_are_one_line(snapfile, capsys, argv, what):
    argv = [snapfile if a == "SNAP" else a for a in argv]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc != 0 and what in err and len(err.strip().splitlines()) == 1


def test_not_a_snapshot(tmp_path, capsys):
    bad = tmp_path / "bad.thpsnap"
    bad.write_text("hello")
    assert main(["whatif", str(bad)]) != 0
    err = capsys.readouterr().err
    assert str(bad) in err and len(err.strip().splitlines()) == 1


def test_live_pid(capsys):
    """--pid captures a live process (root, real kernel) and predicts for it."""
    import os
    import subprocess
    import sys

    from tests.oracle import skip_or_fail

    if os.geteuid() != 0 or not os.path.exists("/proc/self/pagemap"):
        skip_or_fail("whatif --pid needs root and /proc/PID/pagemap")
    child = subprocess.Popen([sys.executable, "-c",
                              "import sys, time; b = bytearray(16 << 20); b[::4096] = b'x' * "
                              "(len(b) // 4096); print('ok', flush=True); time.sleep(60)"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ok"
        rc = main(["whatif", "--pid", str(child.pid), "--policy", "legacy", "--json"])
        out = capsys.readouterr()
        if rc != 0:
            skip_or_fail(f"capture failed here: {out.err.strip()}")
        doc = json.loads(out.out)
        assert doc["snapshot"]["pid"] == child.pid
        assert doc["results"][0]["before"]["rss_anon_pages"] >= 4096  # the 16 MiB written
    finally:
        child.kill()
        child.wait()


def test_vanished_pid(capsys):
    import os

    from tests.oracle import skip_or_fail

    if os.geteuid() != 0:
        skip_or_fail("whatif --pid needs root")
    pid = 4_000_000  # above pid_max's ceiling: never a live process
    assert main(["whatif", "--pid", str(pid)]) != 0
    err = capsys.readouterr().err
    assert str(pid) in err and len(err.strip().splitlines()) == 1
