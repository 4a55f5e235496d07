"""The vm executor: the whole corpus on Linux 7.2.13 in one boot, diffed against the model.

On 7.2.13 the model's ``linux-7.2`` policy is the reference, so every scenario must be
equal to it **in full** (pictures, shared strings, folio lists, step results, listed
counters), except where a scenario carries ``expected_difference``.  One VM boot runs
the whole list (a module fixture); it also checks the scenarios' own ``[[expect]]``
blocks against the VM's documents.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from thpsim.scenario import check_expectations, diff_scenario, load_scenario, run_scenario

CORPUS = Path(__file__).resolve().parents[1] / "scenarios"
FILES = sorted(CORPUS.glob("*.toml"))
#: the whole module (one boot + 90 scenarios) must stay well within this
BUDGET_S = 600.0


@pytest.fixture(scope="module")
def vm_runs(vm_kernel):
    """name -> (scenario, vm result); also the VmResult and the wall time."""
    from thpsim.scenario.vm_exec import run_many_on_vm

    scs = [load_scenario(f) for f in FILES]
    t0 = time.monotonic()
    docs = run_many_on_vm(scs)
    wall = time.monotonic() - t0
    res = run_many_on_vm.last
    print(f"\nvm executor: {len(scs)} scenarios in {wall:.1f} s "
          f"(boot {res.boot_s or 0:.1f} s, guest run {res.run_s or 0:.1f} s)")
    return {sc.name: (sc, d) for sc, d in zip(scs, docs, strict=True)}, res, wall


def test_vm_documents(vm_runs, vm_kernel):
    runs, res, wall = vm_runs
    assert wall < BUDGET_S, f"one boot for {len(runs)} scenarios took {wall:.0f} s"
    assert not res.warnings, res.warnings
    for name, (sc, doc) in runs.items():
        assert "error" not in doc, f"{name}: {doc['error']}\n{res.stderr[-3000:]}"
        assert doc["scenario"] == sc.name
        assert doc["executor"] == "vm"
        assert doc["kernel_or_policy"] == vm_kernel.version
        assert doc["kernel_or_policy"].startswith("7.2.13")
        assert [s["op"] for s in doc["steps"]] == [s.op for s in sc.steps]


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_vm_equals_model_linux72(path, vm_runs):
    sc, doc = vm_runs[0][path.stem]
    assert "error" not in doc, doc["error"]
    model = run_scenario(sc, "model", policy="linux-7.2")
    rep = diff_scenario(sc, doc, model)
    if sc.expected_difference:
        return
    assert not rep.differences, f"{sc.name}: vm vs model:linux-7.2:\n" + "\n".join(
        rep.differences)


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_vm_meets_expectations(path, vm_runs):
    """The scenario's ``[[expect]]`` blocks for ``linux-7.2`` hold on the real 7.2.13."""
    sc, doc = vm_runs[0][path.stem]
    assert "error" not in doc, doc["error"]
    rep = check_expectations(sc, doc, "linux-7.2")
    assert rep.ok, f"{sc.name}:\n" + "\n".join(rep.failures)


def test_run_many_on_vm_empty():
    from thpsim.scenario.vm_exec import run_many_on_vm

    assert run_many_on_vm([]) == []


def test_vm_executor_registered():
    from thpsim.scenario.executors import EXECUTORS
    from thpsim.scenario.vm_exec import run_on_vm

    assert EXECUTORS["vm"] is run_on_vm


def test_parse_guest_output():
    from thpsim.scenario.vm_exec import _parse

    out = "\n".join([
        "noise", "@@THPSIM-SCENARIO-BEGIN abc 1", '{"a":', "1}", "@@THPSIM-SCENARIO-END abc 1",
        "@@THPSIM-SCENARIO-BEGIN other 0", "{}", "@@THPSIM-SCENARIO-END other 0",
        "@@THPSIM-SCENARIO-BEGIN abc 2", "{bad", "@@THPSIM-SCENARIO-END abc 2",
    ])
    docs = _parse(out, "abc", 3)
    assert docs[0] is None and docs[1] == {"a": 1}
    assert "corrupt" in docs[2]["error"]


def test_cli_diff_on_vm(vm_kernel, capsys):
    """The CLI routes ``--on vm`` through the executor table (a second boot)."""
    from thpsim.cli import main

    path = str(CORPUS / "fault_vma_limit_72k.toml")
    assert main(["scenario", "diff", path, "--on", "vm", "--vs", "model",
                 "--policy", "linux-7.2"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == (f"scenario fault_vma_limit_72k: vm:{vm_kernel.version} vs "
                   "model:linux-7.2: equal")
