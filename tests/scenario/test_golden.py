"""The model against golden results recorded on real kernels (tests/scenarios/golden/).

These run everywhere (no root, QEMU or kernel needed): every corpus scenario has a
document recorded on the 6.18 host (compared with ``legacy``) and on Linux 7.2.13
in the VM (compared with ``linux-7.2``), and the model must equal each in full,
except where a scenario carries ``expected_difference``.  The live re-runs on the
host and in the VM are tests/scenario_host and tests/vm.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from thpsim.mm.policies import policy_for_kernel
from thpsim.scenario import diff_scenario, load_scenario, run_scenario
from thpsim.scenario.golden import load_golden, record_golden

CORPUS = Path(__file__).resolve().parents[1] / "scenarios"
GOLDEN = CORPUS / "golden"
FILES = sorted(CORPUS.glob("*.toml"))
KERNELS = load_golden(GOLDEN)
CASES = [(k, f) for k in KERNELS for f in FILES]


def test_both_kernels_are_recorded():
    execs = {k.meta["executor"]: k for k in KERNELS}
    assert set(execs) == {"host", "vm"}
    assert execs["vm"].kernel.startswith("7.2.13") and execs["vm"].policy == "linux-7.2"
    assert execs["host"].policy == "legacy"


@pytest.mark.parametrize("kernel", KERNELS, ids=[k.kernel for k in KERNELS])
def test_every_scenario_has_a_golden(kernel):
    missing = sorted({f.stem for f in FILES} - set(kernel.docs))
    assert not missing, f"{kernel.kernel}: no golden for {missing}"
    stale = sorted(set(kernel.docs) - {f.stem for f in FILES})
    assert not stale, f"{kernel.kernel}: golden without a scenario: {stale}"


@pytest.mark.parametrize(("kernel", "path"), CASES,
                         ids=[f"{k.kernel}-{f.stem}" for k, f in CASES])
def test_model_equals_golden(kernel, path):
    sc = load_scenario(path)
    golden = kernel.docs[sc.name]
    assert [s["op"] for s in golden["steps"]] == [s.op for s in sc.steps], \
        f"{sc.name}: the golden was recorded from another version of the file; re-record it"
    model = run_scenario(sc, "model", policy=kernel.policy)
    rep = diff_scenario(sc, golden, model)
    if sc.expected_difference:
        return
    assert not rep.differences, (f"{sc.name}: {kernel.kernel} (golden) vs model:"
                                 f"{kernel.policy}:\n" + "\n".join(rep.differences))


def test_policy_for_kernel():
    assert policy_for_kernel("7.2.13+deb14-cloud-amd64") == "linux-7.2"
    assert policy_for_kernel("6.18.5-cloud-amd64") == "legacy"


def test_record_and_load_round_trip(tmp_path):
    doc = {"scenario": "x", "executor": "vm", "kernel_or_policy": "7.2.13-test",
           "steps": [], "snapshots": {}, "dmesg": ["noise"]}
    kdir = record_golden([doc], tmp_path, note="test")
    assert kdir == tmp_path / "7.2.13-test"
    (k,) = load_golden(tmp_path)
    assert k.policy == "linux-7.2" and k.meta["note"] == "test"
    assert k.docs == {"x": {key: v for key, v in doc.items() if key != "dmesg"}}


def test_record_rejects_mixed_or_model_documents(tmp_path):
    a = {"scenario": "a", "executor": "vm", "kernel_or_policy": "7.2.13"}
    b = {"scenario": "b", "executor": "host", "kernel_or_policy": "6.18"}
    with pytest.raises(ValueError, match="one kernel"):
        record_golden([a, b], tmp_path)
    with pytest.raises(ValueError, match="not real-kernel"):
        record_golden([{"scenario": "m", "executor": "model", "kernel_or_policy": "legacy"}],
                      tmp_path)


def test_load_rejects_misfiled_documents(tmp_path):
    d = tmp_path / "7.2.13"
    d.mkdir()
    (d / "KERNEL.json").write_text(json.dumps({"kernel": "7.2.13", "policy": "linux-7.2"}))
    (d / "a.json").write_text(json.dumps({"scenario": "b", "kernel_or_policy": "7.2.13"}))
    with pytest.raises(ValueError, match=r"a\.json"):
        load_golden(tmp_path)
    (d / "a.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a golden document"):
        load_golden(tmp_path)
