"""The model executor: §3.1 layouts from the corpus files, step results, fork/exit,
counter deltas, trace lines."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from tests.mm.test_real_72_layouts import EXPECTED, O9, SCENARIOS, to_model
from thpsim.layout import PMDLayout
from thpsim.scenario.model_exec import run_on_model
from thpsim.scenario.spec import load_scenario, parse_scenario

CORPUS = Path(__file__).resolve().parents[1] / "scenarios"
L72 = "linux-7.2"


def summaries(res: dict, label: str, region: str = "r") -> list[str]:
    return [PMDLayout(0, p["picture"], p["shared"], p["folios"]).summary()
            for p in res["snapshots"][label]["regions"][region]["pmds"]]


def run_text(text: str, policy: str = L72, trace: bool = False) -> dict:
    return run_on_model(parse_scenario(tomllib.loads(text), "t.toml"), policy, trace)


# --- real-kernel.md §3.1 through the corpus files ------------------------------------------
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_real_72_columns_reproduced(name):
    """Each column file, run under linux-7.2, gives the table (transcribed independently
    in tests/mm/test_real_72_layouts.py), before and after +6 scans."""
    res = run_on_model(load_scenario(CORPUS / f"{name}.toml"), L72)
    want = [to_model(t) for t in EXPECTED[name]]
    assert summaries(res, "after") == want
    for pmd, text in zip(res["snapshots"]["after"]["regions"]["r"]["pmds"], EXPECTED[name],
                         strict=True):
        assert ("H" in pmd["picture"]) == (text == O9)  # o9 is PMD-mapped
    assert summaries(res, "after6") == want
    assert all(set(p["picture"]) <= {".", "0"}
               for p in res["snapshots"]["before"]["regions"]["r"]["pmds"])
    assert all(s["ret"] in (0, None) or s["op"] in ("write", "read") for s in res["steps"])


@pytest.mark.parametrize("name", ["madv_collapse_allnever", "madv_collapse_over_64k_faults"])
def test_real_72_madv_collapse_reproduced(name):
    res = run_on_model(load_scenario(CORPUS / f"{name}.toml"), L72)
    collapses = [s for s in res["steps"] if s.get("advice") == "collapse"]
    assert [(s["ret"], s["errno"]) for s in collapses] == [(0, None)] * 8
    assert summaries(res, "after") == [O9] * 8
    before = summaries(res, "before")
    if name == "madv_collapse_over_64k_faults":
        assert before[6] == "288-303:o4" and before[3] == "0-31:o4x2"


# --- the result document -------------------------------------------------------------------
HEAD = """
name = "t"
[settings]
"enabled" = "madvise"
"hugepages-2048kB/enabled" = "inherit"
[[region]]
name = "r"
pmds = 2
[[region]]
name = "q"
pmds = 1
"""


def test_result_document_shape():
    res = run_text(HEAD + """
[[step]]
op = "write"
region = "r"
pages = "0-3, 600"
[[step]]
op = "snapshot"
label = "s"
""")
    assert set(res) == {"scenario", "executor", "kernel_or_policy", "steps", "snapshots",
                        "dmesg"}
    assert (res["scenario"], res["executor"], res["kernel_or_policy"]) == ("t", "model", L72)
    assert res["steps"][0] == {"op": "write", "process": "main", "ret": 5, "errno": None}
    snap = res["snapshots"]["s"]
    assert snap["process"] == "main"
    assert set(snap["regions"]) == {"r", "q"}
    assert len(snap["regions"]["r"]["pmds"]) == 2 and len(snap["regions"]["q"]["pmds"]) == 1
    pmd = snap["regions"]["r"]["pmds"][0]
    assert set(pmd) == {"picture", "shared", "folios"}
    assert pmd["picture"] == "0000" + "." * 508
    assert pmd["folios"] == [[i, 0, 1, 0] for i in range(4)]
    assert snap["regions"]["r"]["pmds"][1]["folios"] == [[88, 0, 1, 0]]
    assert set(snap["counters"]) == {"vmstat", "mthp", "khugepaged"}
    assert snap["counters"]["khugepaged"] == {"pages_collapsed": 0, "full_scans": 0}


def test_regions_are_separate_vmas_at_fixed_addresses():
    """A MADV_HUGEPAGE on one region does not reach the next (the gap keeps the VMAs
    apart); the PMD fault shows which one is VM_HUGEPAGE."""
    res = run_text(HEAD + """
[[step]]
op = "madvise"
region = "q"
advice = "hugepage"
[[step]]
op = "write"
region = "r"
pages = "511"
[[step]]
op = "write"
region = "q"
pages = "0"
[[step]]
op = "snapshot"
label = "s"
""")
    assert summaries(res, "s", "r") == ["511:o0", "empty"]
    assert summaries(res, "s", "q") == [O9]


def test_syscall_results_ret_and_errno():
    res = run_text(HEAD + """
[[step]]
op = "madvise"
region = "q"
advice = "collapse"
[[step]]
op = "mprotect"
region = "r"
prot = "none"
pages = "0-15"
[[step]]
op = "write"
region = "r"
pages = "0"
[[step]]
op = "read"
region = "r"
pages = "16-19"
[[step]]
op = "munmap"
region = "q"
[[step]]
op = "madvise"
region = "q"
advice = "dontneed"
[[step]]
op = "write"
region = "q"
pages = "0"
[[step]]
op = "snapshot"
label = "s"
""")
    got = [(s["op"], s["ret"], s["errno"]) for s in res["steps"]]
    assert got == [
        ("madvise", -1, "EINVAL"),  # never written: no anon_vma
        ("mprotect", 0, None),
        ("write", -1, "SIGSEGV"),  # PROT_NONE
        ("read", 4, None),
        ("munmap", 0, None),
        ("madvise", -1, "ENOMEM"),  # nothing mapped there any more
        ("write", -1, "SIGSEGV"),
        ("snapshot", None, None),
    ]
    assert res["snapshots"]["s"]["regions"]["q"]["pmds"][0]["picture"] == "x" * 512
    assert res["snapshots"]["s"]["regions"]["r"]["pmds"][0]["picture"][:20] == \
        "." * 16 + "zzzz"


def test_madvise_page_list_is_one_call_per_run():
    res = run_text(HEAD.replace('name = "t"', 'name = "t"\nswap_mb = 16') + """
[[step]]
op = "madvise"
region = "r"
advice = "nohugepage"
[[step]]
op = "write"
region = "r"
[[step]]
op = "madvise"
region = "r"
advice = "pageout"
pages = "0-7, 512-519, 700"
[[step]]
op = "snapshot"
label = "s"
""")
    pics = [p["picture"] for p in res["snapshots"]["s"]["regions"]["r"]["pmds"]]
    assert pics[0] == "s" * 8 + "0" * 504
    assert pics[1][:8] == "s" * 8 and pics[1][188] == "s" and pics[1].count("s") == 9
    assert res["steps"][2]["ret"] == 0


def test_khugepaged_step_full_scans_and_timeout():
    """An idle khugepaged (nothing registered) "times out" having seen 0 full scans."""
    res = run_text(HEAD + """
[[step]]
op = "write"
region = "r"
[[step]]
op = "khugepaged"
full_scans = 3
[[step]]
op = "madvise"
region = "r"
advice = "hugepage"
[[step]]
op = "khugepaged"
full_scans = 3
[[step]]
op = "snapshot"
label = "s"
""")
    k1, k2 = res["steps"][1], res["steps"][3]
    assert (k1["full_scans"], k1["timed_out"], k1["ret"]) == (0, True, None)
    assert (k2["full_scans"], k2["timed_out"]) == (3, False)
    assert res["snapshots"]["s"]["counters"]["khugepaged"]["full_scans"] == 3


def test_settings_reset_and_settings_step():
    """Defaults first (enabled always: a PMD fault), then [settings] and settings steps."""
    base = """
name = "t"
[[region]]
name = "r"
pmds = 3
[[step]]
op = "write"
region = "r"
pages = "0"
[[step]]
op = "settings"
[step.settings]
"hugepages-2048kB/enabled" = "never"
"hugepages-64kB/enabled" = "always"
[[step]]
op = "write"
region = "r"
pages = "512"
[[step]]
op = "settings"
[step.settings]
"hugepages-64kB/enabled" = "never"
[[step]]
op = "write"
region = "r"
pages = "1024"
[[step]]
op = "snapshot"
label = "s"
"""
    res = run_text(base)
    assert summaries(res, "s") == [O9, "0-15:o4", "0:o0"]
    assert [s["ret"] for s in res["steps"][:5]] == [1, 0, 1, 0, 1]


# --- fork / exit ---------------------------------------------------------------------------
FORK = """
name = "t"
[settings]
"hugepages-2048kB/enabled" = "never"
[[region]]
name = "r"
pmds = 1
[[step]]
op = "write"
region = "r"
pages = "0-7"
[[step]]
op = "fork"
[[step]]
op = "write"
process = "child"
region = "r"
pages = "0-1"
[[step]]
op = "snapshot"
process = "child"
label = "child"
[[step]]
op = "snapshot"
label = "parent"
[[step]]
op = "fork"
process = "child"
child = "grandchild"
[[step]]
op = "exit"
process = "child"
[[step]]
op = "snapshot"
label = "parent_after_child_exit"
[[step]]
op = "snapshot"
process = "grandchild"
label = "grandchild"
[[step]]
op = "exit"
process = "grandchild"
[[step]]
op = "snapshot"
label = "alone"
"""


def test_fork_child_holds_mappings_until_exit():
    res = run_text(FORK)
    snaps = res["snapshots"]
    assert res["steps"][1] == {"op": "fork", "process": "main", "ret": 0, "errno": None,
                               "child": "child"}
    assert snaps["child"]["process"] == "child"
    assert snaps["child"]["regions"]["r"]["pmds"][0]["shared"][:8] == "--SSSSSS"
    assert snaps["parent"]["regions"]["r"]["pmds"][0]["shared"][:8] == "--SSSSSS"
    # the grandchild holds the child's pages: the parent still shares 2-7
    assert snaps["parent_after_child_exit"]["regions"]["r"]["pmds"][0]["shared"][:8] == \
        "--SSSSSS"
    # the grandchild got the child's COW copies of 0-1: exclusive again once the child exits
    g = snaps["grandchild"]["regions"]["r"]["pmds"][0]
    assert g["picture"][:8] == "0" * 8 and g["shared"][:8] == "--SSSSSS"
    assert snaps["alone"]["regions"]["r"]["pmds"][0]["shared"] == "-" * 512
    assert [s["ret"] for s in res["steps"] if s["op"] == "exit"] == [0, 0]


# --- counters ------------------------------------------------------------------------------
def test_counter_deltas_since_scenario_start():
    res = run_text("""
name = "t"
[settings]
"enabled" = "madvise"
"hugepages-64kB/enabled" = "always"
[[region]]
name = "r"
pmds = 2
[[step]]
op = "madvise"
region = "r"
advice = "hugepage"
[[step]]
op = "write"
region = "r"
pages = "0"
[[step]]
op = "snapshot"
label = "one"
[[step]]
op = "settings"
[step.settings]
"hugepages-2048kB/enabled" = "never"
[[step]]
op = "write"
region = "r"
pages = "512, 600"
[[step]]
op = "khugepaged"
full_scans = 2
[[step]]
op = "snapshot"
label = "two"
""")
    one = res["snapshots"]["one"]["counters"]
    assert one["vmstat"] == {"thp_fault_alloc": 1}
    assert one["mthp"] == {"2048kB": {"anon_fault_alloc": 1, "nr_anon": 1}}
    two = res["snapshots"]["two"]["counters"]  # cumulative since the start
    assert two["vmstat"]["thp_fault_alloc"] == 1
    assert two["mthp"]["64kB"]["anon_fault_alloc"] == 2
    assert two["khugepaged"]["full_scans"] == 2
    # 64K only, 511: the two 64K folios are rescanned (pte_mapped_hugepage), nothing new
    assert two["khugepaged"]["pages_collapsed"] == 0


def test_counter_deltas_collapse():
    res = run_on_model(load_scenario(CORPUS / "64k_only_mpn511.toml"), L72)
    c = res["snapshots"]["after"]["counters"]
    before = res["snapshots"]["before"]["counters"]
    assert before["mthp"] == {} and before["vmstat"] == {}  # order-0 faults only
    assert c["khugepaged"]["full_scans"] == 2
    # 4+32+1+2+16+32+1+32 = 120 new 64K folios
    assert c["mthp"]["64kB"]["nr_anon"] == 120
    assert c["mthp"]["64kB"]["collapse_alloc"] >= 120


# --- trace ---------------------------------------------------------------------------------
def test_trace_lines():
    sc = load_scenario(CORPUS / "selftest_collapse_single_pte_entry_M.toml")
    res = run_on_model(sc, L72, trace=True)
    lines = res["trace"]
    assert lines and all(": mm_" in ln for ln in lines)
    # MADV_COLLAPSE runs in the calling task; its scan shows referenced=0 (real-kernel.md §2)
    scan = [ln for ln in lines if "mm_khugepaged_scan_pmd:" in ln]
    assert scan and all(ln.lstrip().startswith("main-") for ln in scan)
    assert "referenced=0" in scan[0]
    assert any("mm_collapse_huge_page: " in ln and "status=succeeded, order=9" in ln
               for ln in lines)
    # per snapshot: the lines since the previous snapshot
    assert res["snapshots"]["after"]["trace"] == lines
    # legacy has its own format (no order field)
    leg = run_on_model(sc, "legacy", trace=True)["trace"]
    assert any("mm_collapse_huge_page: " in ln and ln.endswith("status=succeeded")
               for ln in leg)
    assert "trace" not in run_on_model(sc, L72)


def test_trace_khugepaged_task():
    res = run_on_model(load_scenario(CORPUS / "selftest_collapse_single_pte_entry_K.toml"),
                       L72, trace=True)
    kh = [ln for ln in res["trace"] if "mm_collapse_huge_page:" in ln]
    assert kh and all(ln.lstrip().startswith("khugepaged-") for ln in kh)


def test_dmesg_warning():
    """linux-7.2.md §3.3: mTHP collapse with max_ptes_none 255 warns once."""
    res = run_on_model(load_scenario(CORPUS / "64k_pmd_mpn255.toml"), L72)
    assert any("max_ptes_none" in w for w in res["dmesg"])
    assert run_on_model(load_scenario(CORPUS / "64k_pmd_mpn511.toml"), L72)["dmesg"] == []


def test_deterministic():
    sc = load_scenario(CORPUS / "e10_shared_pte100_mthp_mpn0.toml")
    assert run_on_model(sc, L72) == run_on_model(sc, L72)
