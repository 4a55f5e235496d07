"""diff_results / diff_scenario: what is compared, what never is, and how it reads."""

from __future__ import annotations

import copy
from pathlib import Path

from thpsim.scenario.diff import DiffReport, counter_value, diff_results, diff_scenario
from thpsim.scenario.model_exec import run_on_model
from thpsim.scenario.spec import load_scenario

CORPUS = Path(__file__).resolve().parents[1] / "scenarios"


def _res(name: str, policy: str) -> dict:
    return run_on_model(load_scenario(CORPUS / f"{name}.toml"), policy)


def test_equal_results_no_differences():
    a = _res("64k_only_mpn511", "linux-7.2")
    assert diff_results(a, copy.deepcopy(a)) == []


def test_layout_difference_is_a_readable_per_pmd_block():
    a, b = _res("64k_only_mpn511", "linux-7.2"), _res("64k_only_mpn511", "legacy")
    diffs = diff_results(a, b)
    # after and after6: all 8 PMDs differ (legacy collapses no mTHP, and 2M is never)
    assert len(diffs) == 16
    d = diffs[0]
    assert d.startswith("snapshot 'after', region 'r', PMD 0 (region pages 0-511):")
    assert "model:linux-7.2 0-63:o4x4" in d and "model:legacy    0-63:o0x64" in d
    assert "picture (rows of 64, '^' marks differences):" in d
    assert "^" * 64 in d


def test_same_name_gets_a_b_labels():
    a = _res("pmd_only_mpn0", "linux-7.2")
    b = copy.deepcopy(a)
    b["snapshots"]["after"]["regions"]["r"]["pmds"][6]["shared"] = "S" * 512
    (d,) = diff_results(a, b)
    assert "A=model:linux-7.2" in d and "B=model:linux-7.2" in d
    assert "shared (rows of 64" in d


def test_folio_only_difference():
    """Same picture, different folios (e.g. PMD- vs PTE-mapped bookkeeping)."""
    a = _res("pmd_only_mpn0", "linux-7.2")
    b = copy.deepcopy(a)
    b["snapshots"]["after"]["regions"]["r"]["pmds"][0]["folios"][0] = [0, 0, 1, 1]
    (d,) = diff_results(a, b)
    assert "folios [first, order, nr_mapped, pmd_mapped]" in d
    assert "[0, 0, 1, 0]" in d and "[0, 0, 1, 1]" in d


def test_step_results_compared_full_scans_never():
    a = _res("selftest_collapse_empty_M", "linux-7.2")
    b = copy.deepcopy(a)
    i = next(i for i, s in enumerate(b["steps"]) if s.get("advice") == "collapse")
    b["steps"][i].update(ret=0, errno=None)
    diffs = diff_results(a, b)
    assert diffs == [f"step {i + 1} (madvise collapse, process main): A=model:linux-7.2 "
                     "ret -1 EINVAL, B=model:linux-7.2 ret 0"]
    k = _res("selftest_collapse_empty_K", "linux-7.2")
    k2 = copy.deepcopy(k)
    for s in k2["steps"]:
        if s["op"] == "khugepaged":
            s.update(full_scans=17, timed_out=False)
    k2["snapshots"]["after"]["counters"]["khugepaged"]["full_scans"] = 99
    k2["trace"] = ["whatever"]
    k2["dmesg"] = ["whatever"]
    assert diff_results(k, k2, ["khugepaged/pages_collapsed"]) == []


def test_counters_only_when_listed():
    a = _res("64k_only_mpn511", "linux-7.2")
    b = copy.deepcopy(a)
    b["snapshots"]["after"]["counters"]["mthp"]["64kB"]["collapse_alloc"] += 5
    b["snapshots"]["after"]["counters"]["vmstat"]["thp_fault_alloc"] = 1
    assert diff_results(a, b) == []
    diffs = diff_results(a, b, ["hugepages-64kB/stats/collapse_alloc", "thp_fault_alloc",
                                "thp_collapse_alloc"])
    assert len(diffs) == 2
    assert diffs[0].startswith("snapshot 'after', counter hugepages-64kB/stats/collapse_alloc")
    assert "thp_fault_alloc: A=model:linux-7.2 +0, B=model:linux-7.2 +1" in diffs[1]


def test_counter_value_lookup():
    snap = {"counters": {"vmstat": {"thp_fault_alloc": 3}, "mthp": {"64kB": {"nr_anon": 2}},
                         "khugepaged": {"pages_collapsed": 4, "full_scans": 2}}}
    assert counter_value(snap, "thp_fault_alloc") == 3
    assert counter_value(snap, "thp_split_pmd") == 0
    assert counter_value(snap, "hugepages-64kB/stats/nr_anon") == 2
    assert counter_value(snap, "hugepages-16kB/stats/nr_anon") == 0
    assert counter_value(snap, "khugepaged/pages_collapsed") == 4


def test_structure_differences():
    a = _res("fork_cow_unshares", "v11")
    b = copy.deepcopy(a)
    del b["snapshots"]["parent"]
    b["steps"].pop()
    del b["snapshots"]["child"]["regions"]["r"]
    diffs = diff_results(a, b)
    assert any(d.startswith("steps: ") for d in diffs)
    assert "snapshot 'parent': only A=model:v11 has it" in diffs
    assert "snapshot 'child', region 'r': only A=model:v11 has it" in diffs


def test_expected_difference_is_honoured(tmp_path):
    text = (CORPUS / "64k_only_mpn511.toml").read_text()
    p = tmp_path / "x.toml"
    p.write_text('expected_difference = "legacy has no mTHP collapse"\n' + text)
    sc = load_scenario(p)
    a, b = run_on_model(sc, "linux-7.2"), run_on_model(sc, "legacy")
    rep = diff_scenario(sc, a, b)
    assert rep.differences and rep.exit_code == 0 and not rep.equal
    plain = diff_scenario(load_scenario(CORPUS / "64k_only_mpn511.toml"), a, b)
    assert plain.exit_code == 1
    assert DiffReport([]).exit_code == 0
