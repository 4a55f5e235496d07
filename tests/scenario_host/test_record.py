"""``thpsim scenario record --on host``: golden documents of the machine's kernel."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from thpsim.cli import main
from thpsim.scenario import diff_scenario, load_scenario, run_scenario
from thpsim.scenario.golden import load_golden

CORPUS = Path(__file__).resolve().parents[1] / "scenarios"


def test_record_on_host(host, tmp_path, capsys):
    path = CORPUS / "fault_vma_limit_72k.toml"
    assert main(["scenario", "record", str(path), "--on", "host", "-o", str(tmp_path),
                 "--note", "test"]) == 0
    (k,) = load_golden(tmp_path)
    assert k.kernel == os.uname().release
    assert k.meta["executor"] == "host" and k.meta["note"] == "test"
    assert k.policy == ("linux-7.2" if k.kernel.startswith("7.2.") else "legacy")
    sc = load_scenario(path)
    doc = k.docs[sc.name]
    assert "dmesg" not in doc
    assert diff_scenario(sc, doc, run_scenario(sc, "model", policy=k.policy)).equal
    assert "recorded 1 of 1 scenario(s)" in capsys.readouterr().out


def test_record_rejects_the_model(tmp_path, capsys):
    path = CORPUS / "fault_vma_limit_72k.toml"
    with pytest.raises(SystemExit) as e:
        main(["scenario", "record", str(path), "--on", "model", "-o", str(tmp_path)])
    assert e.value.code == 2
    assert "invalid choice: 'model'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
