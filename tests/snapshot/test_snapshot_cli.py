"""``thpsim snapshot``: synthetic files, --info, one-line errors."""

from __future__ import annotations

import os

import pytest

from thpsim.cli import main
from thpsim.snapshot.io import load_snapshot


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("thpsim: error: "), err
    return err


def test_synthetic_then_info(tmp_path, capsys):
    out = tmp_path / "h.thpsnap"
    spec = "heap:8M,present=0.5,folios=4k:1/64k:1,seed=2"
    assert main(["snapshot", "--synthetic", spec, "-o", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out}: 1 VMAs, 2048 pages")
    snap = load_snapshot(out)
    assert snap.meta["synthetic"] == spec
    assert main(["snapshot", "--info", str(out)]) == 0
    text = capsys.readouterr().out
    present = snap.state_counts()["present"]
    assert f"present {present} (" in text
    assert "2048 pages (8M span)" in text
    # folio lines: order 0 and order 4 (64K), with their page counts
    n4 = int(((snap.state == 1) & (snap.order == 4)).sum())
    line4 = next(ln for ln in text.splitlines() if ln.strip().startswith("4:"))
    assert line4.split()[1:4] == ["64K", str(n4 // 16), str(n4)]


def test_synthetic_errors(tmp_path, capsys):
    assert main(["snapshot", "--synthetic", "heap:1G,present=2", "-o",
                 str(tmp_path / "x")]) == 2
    assert "present=2" in _err(capsys)
    assert main(["snapshot", "--synthetic", "heap:1G"]) == 2
    assert "-o FILE" in _err(capsys)
    assert main(["snapshot", "--synthetic", "heap:1M", "-o",
                 str(tmp_path / "no" / "x.thpsnap")]) == 2
    assert "x.thpsnap" in _err(capsys)
    assert not os.path.exists(tmp_path / "x")


@pytest.mark.parametrize("content", [b"", b"hello", b"PAR1garbage"])
def test_info_bad_file(tmp_path, capsys, content):
    p = tmp_path / "bad.thpsnap"
    p.write_bytes(content)
    assert main(["snapshot", "--info", str(p)]) == 2
    assert str(p) in _err(capsys)
    assert main(["snapshot", "--info", str(tmp_path / "missing")]) == 2
    assert "no such file" in _err(capsys)


def test_vanished_pid(capsys):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    assert main(["snapshot", "--pid", str(pid), "--no-progress"]) == 2
    err = _err(capsys)
    assert str(pid) in err
    assert main(["snapshot", "--pid", "0"]) == 2
    assert "not a process id" in _err(capsys)
