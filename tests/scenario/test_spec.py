"""Scenario files: parsing, validation, and one-line errors naming file, step and field."""

from __future__ import annotations

import json
import textwrap
import tomllib
from pathlib import Path

import pytest

from tests.scenario.schema_lite import errors as schema_errors
from thpsim.mm.settings import Settings
from thpsim.scenario.spec import (
    BASE_ADDR,
    PMD_SIZE,
    ScenarioError,
    counter_names,
    default_settings,
    expand_pattern,
    load_scenario,
    parse_scenario,
    scenario_settings,
)

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "docs" / "scenario.schema.json").read_text())

BASE = """
name = "t"
[[region]]
name = "r"
pmds = 2
"""


def with_settings(text: str) -> str:
    """BASE with a top-level ``[settings]`` table (top-level keys must come first)."""
    return BASE.replace('name = "t"\n', 'name = "t"\n[settings]\n' + text + "\n")


WRITE = """
[[step]]
op = "write"
region = "r"
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "foo.toml"
    p.write_text(textwrap.dedent(text))
    return p


def _error(tmp_path: Path, text: str) -> str:
    p = _write(tmp_path, text)
    with pytest.raises(ScenarioError) as ei:
        load_scenario(p)
    msg = str(ei.value)
    assert msg.startswith(f"{p}: "), msg
    assert "\n" not in msg
    return msg.removeprefix(f"{p}: ")


def step(op: str, **fields) -> str:
    lines = ["", "[[step]]", f'op = "{op}"']
    for k, v in fields.items():
        lines.append(f"{k} = {json.dumps(v)}")
    return "\n".join(lines) + "\n"


# --- every error path ----------------------------------------------------------------------
CASES = [
    # top level
    ("missing_name", BASE.replace('name = "t"', "") + WRITE, "missing field 'name'"),
    ("name_type", BASE.replace('"t"', "3") + WRITE,
     "field 'name' must be a string, not an integer"),
    ("name_syntax", BASE.replace('"t"', '"a b"') + WRITE, "field 'name': 'a b' is not a valid"),
    ("unknown_top_key", "foo = 1\n" + BASE + WRITE, "unknown key 'foo'"),
    ("bad_toml", BASE + "[[step]\n", "invalid TOML: "),
    ("swap_mb_type", 'swap_mb = "64"\n' + BASE + WRITE,
     "field 'swap_mb' must be an integer, not a string"),
    ("swap_mb_zero", "swap_mb = 0\n" + BASE + WRITE, "field 'swap_mb' must be at least 1"),
    ("description_type", "description = 1\n" + BASE + WRITE, "field 'description' must be"),
    ("settings_type", 'settings = "x"\n' + BASE + WRITE, "field 'settings' must be a table"),
    ("settings_unknown_path", with_settings('"hugepages-3kB/enabled" = "always"') + WRITE,
     "settings: 'hugepages-3kB/enabled' = 'always': No such file or directory"),
    ("settings_bad_value", with_settings('"enabled" = "sometimes"') + WRITE,
     "settings: 'enabled' = 'sometimes': Invalid argument"),
    ("settings_out_of_range", with_settings('"khugepaged/max_ptes_none" = 512') + WRITE,
     "settings: 'khugepaged/max_ptes_none' = '512': Invalid argument"),
    ("settings_read_only", with_settings('"khugepaged/full_scans" = "3"') + WRITE,
     "settings: 'khugepaged/full_scans' = '3': Permission denied"),
    ("settings_bool", with_settings('"use_zero_page" = true') + WRITE,
     "settings: 'use_zero_page' must be a string or an integer, not a boolean"),
    ("compare_counters_type", 'compare_counters = "thp_fault_alloc"\n' + BASE + WRITE,
     "field 'compare_counters' must be an array of strings"),
    ("compare_counters_unknown", 'compare_counters = ["thp_foo"]\n' + BASE + WRITE,
     "compare_counters: unknown counter 'thp_foo'"),
    ("compare_counters_full_scans", 'compare_counters = ["khugepaged/full_scans"]\n' + BASE
     + WRITE, "'khugepaged/full_scans' is informational"),
    ("expected_difference_empty", 'expected_difference = " "\n' + BASE + WRITE,
     "field 'expected_difference' must give the reason"),
    # regions
    ("no_region", 'name = "t"\n' + WRITE, "missing field 'region'"),
    ("region_not_table", 'name = "t"\nregion = [1]\n' + WRITE, "region 1: must be a table"),
    ("region_missing_name", 'name = "t"\n[[region]]\npmds = 1\n' + WRITE,
     "region 1: missing field 'name'"),
    ("region_unknown_key", BASE + 'prot = "r"\n' + WRITE, "region 1: unknown key 'prot'"),
    ("region_no_size", 'name = "t"\n[[region]]\nname = "r"\n' + WRITE,
     "region 1 (r): give exactly one of 'pmds' and 'size'"),
    ("region_both_sizes", BASE + 'size = "72K"\n' + WRITE,
     "region 1 (r): give exactly one of 'pmds' and 'size'"),
    ("region_pmds_type", BASE.replace("pmds = 2", 'pmds = "2"') + WRITE,
     "region 1 (r): field 'pmds' must be an integer, not a string"),
    ("region_pmds_zero", BASE.replace("pmds = 2", "pmds = 0") + WRITE,
     "region 1 (r): field 'pmds' must be at least 1, not 0"),
    ("region_size_bad", BASE.replace("pmds = 2", 'size = "5K"') + WRITE,
     "region 1 (r): field 'size': '5K' is not a positive multiple of 4K"),
    ("region_size_syntax", BASE.replace("pmds = 2", 'size = "lots"') + WRITE,
     "region 1 (r): field 'size': not a size"),
    ("region_duplicate", BASE + '[[region]]\nname = "r"\npmds = 1\n' + WRITE,
     "region 2: field 'name': duplicate region 'r'"),
    ("region_bad_name", BASE.replace('name = "r"', 'name = "2r"') + WRITE,
     "region 1: field 'name': '2r' is not a valid name"),
    # steps: structure
    ("no_step", BASE, "missing field 'step'"),
    ("step_missing_op", BASE + '[[step]]\nregion = "r"\n', "step 1: missing field 'op'"),
    ("step_op_type", BASE + "[[step]]\nop = 1\n", "step 1: field 'op' must be a string"),
    ("step_unknown_op", BASE + step("mremap"), "step 1: unknown op 'mremap'"),
    ("step_unknown_key", BASE + step("write", region="r", advice="hugepage"),
     "step 1 (write): unknown key 'advice'"),
    ("step_missing_region", BASE + step("madvise", advice="hugepage"),
     "step 1 (madvise): missing field 'region'"),
    ("step_region_type", BASE + step("write", region=1),
     "step 1 (write): field 'region' must be a string, not an integer"),
    ("step_undefined_region", BASE + step("write", region="q"),
     "step 1 (write): field 'region': undefined region 'q'"),
    ("step_undefined_process", BASE + step("write", region="r", process="child"),
     "step 1 (write): field 'process': undefined process 'child'"),
    ("step_process_after_exit", BASE + step("fork") + step("exit", process="child")
     + step("snapshot", label="x", process="child"),
     "step 3 (snapshot): field 'process': undefined process 'child'"),
    ("step_main_after_exit", BASE + step("exit") + step("write", region="r"),
     "step 2 (write): field 'process': undefined process 'main'"),
    # madvise / mprotect / munmap / pages
    ("missing_advice", BASE + step("madvise", region="r"),
     "step 1 (madvise): missing field 'advice'"),
    ("unknown_advice", BASE + WRITE + WRITE + step("madvise", region="r", advice="hugepages"),
     "step 3 (madvise): unknown advice 'hugepages'"),
    ("advice_type", BASE + step("madvise", region="r", advice=14),
     "step 1 (madvise): field 'advice' must be a string, not an integer"),
    ("bad_pages_syntax", BASE + step("write", region="r", pages="5-2"),
     "step 1 (write): field 'pages': bad page item '5-2'"),
    ("bad_pages_item", BASE + step("read", region="r", pages="0-3, x"),
     "step 1 (read): field 'pages': bad page item 'x'"),
    ("bad_pages_step", BASE + step("write", region="r", pages="0-15:0"),
     "step 1 (write): field 'pages': bad page item '0-15:0'"),
    ("pages_type", BASE + step("write", region="r", pages=5),
     "step 1 (write): field 'pages' must be a string, not an integer"),
    ("pages_empty", BASE + step("write", region="r", pages=" , "),
     "step 1 (write): field 'pages': no pages given"),
    ("page_outside_region", BASE + step("write", region="r", pages="0-3, 1024"),
     "step 1 (write): field 'pages': page 1024 is outside region 'r' (1024 pages)"),
    ("page_outside_small_region", BASE.replace("pmds = 2", 'size = "72K"')
     + step("madvise", region="r", advice="dontneed", pages="18"),
     "step 1 (madvise): field 'pages': page 18 is outside region 'r' (18 pages)"),
    ("mprotect_missing_prot", BASE + step("mprotect", region="r"),
     "step 1 (mprotect): missing field 'prot'"),
    ("mprotect_bad_prot", BASE + step("mprotect", region="r", prot="rwx"),
     "step 1 (mprotect): field 'prot': unknown protection 'rwx'"),
    ("mprotect_not_contiguous", BASE + step("mprotect", region="r", prot="r", pages="0-3, 8"),
     "step 1 (mprotect): field 'pages': mprotect needs one contiguous range"),
    ("munmap_not_contiguous", BASE + step("munmap", region="r", pages="0-511:2"),
     "step 1 (munmap): field 'pages': munmap needs one contiguous range"),
    # khugepaged / snapshot / fork / settings
    ("full_scans_type", BASE + step("khugepaged", full_scans="2"),
     "step 1 (khugepaged): field 'full_scans' must be an integer, not a string"),
    ("full_scans_bool", BASE + "[[step]]\nop = \"khugepaged\"\nfull_scans = true\n",
     "step 1 (khugepaged): field 'full_scans' must be an integer, not a boolean"),
    ("full_scans_zero", BASE + step("khugepaged", full_scans=0),
     "step 1 (khugepaged): field 'full_scans' must be at least 1"),
    ("timeout_negative", BASE + step("khugepaged", timeout_s=-1),
     "step 1 (khugepaged): field 'timeout_s' must be a positive number"),
    ("timeout_type", BASE + step("khugepaged", timeout_s="10"),
     "step 1 (khugepaged): field 'timeout_s' must be a positive number"),
    ("snapshot_missing_label", BASE + step("snapshot"),
     "step 1 (snapshot): missing field 'label'"),
    ("snapshot_duplicate_label", BASE + step("snapshot", label="a") + step("snapshot", label="a"),
     "step 2 (snapshot): field 'label': duplicate snapshot label 'a'"),
    ("snapshot_bad_label", BASE + step("snapshot", label="a b"),
     "step 1 (snapshot): field 'label': 'a b' is not a valid label"),
    ("fork_twice", BASE + step("fork") + step("fork"),
     "step 2 (fork): field 'child': process 'child' already exists"),
    ("fork_bad_child", BASE + step("fork", child="my child"),
     "step 1 (fork): field 'child': 'my child' is not a valid process name"),
    ("exit_unknown_key", BASE + step("exit", region="r"), "step 1 (exit): unknown key 'region'"),
    ("settings_step_missing", BASE + step("settings"),
     "step 1 (settings): missing field 'settings'"),
    ("settings_step_empty", BASE + "[[step]]\nop = \"settings\"\n[step.settings]\n",
     "step 1 (settings): field 'settings': empty table"),
    ("settings_step_bad_value", BASE + WRITE
     + '[[step]]\nop = "settings"\n[step.settings]\n"defrag" = "sometimes"\n',
     "step 2 (settings): settings: 'defrag' = 'sometimes': Invalid argument"),
    ("settings_step_type", BASE + step("settings", settings="enabled=never"),
     "step 1 (settings): field 'settings' must be a table, not a string"),
    # expectations
    ("expect_not_array", BASE + WRITE + '[expect]\nsource = "x"\n',
     "field 'expect' must be an array of tables"),
    ("expect_missing_source", BASE + WRITE + '[[expect]]\nstep = 1\nret = 0\n',
     "expect 1: missing field 'source'"),
    ("expect_unknown_key", BASE + WRITE + '[[expect]]\nsource = "s"\nfoo = 1\n',
     "expect 1: unknown key 'foo'"),
    ("expect_bad_policy", BASE + WRITE + '[[expect]]\nsource = "s"\npolicies = ["v12"]\n'
     'step = 1\nret = 0\n', "expect 1: field 'policies': unknown policy 'v12'"),
    ("expect_step_range", BASE + WRITE + '[[expect]]\nsource = "s"\nstep = 2\nret = 0\n',
     "expect 1: field 'step': no step 2 (the file has 1)"),
    ("expect_step_no_ret", BASE + WRITE + '[[expect]]\nsource = "s"\nstep = 1\n',
     "expect 1: a step expectation needs 'ret' and/or 'errno'"),
    ("expect_step_and_snapshot", BASE + WRITE + step("snapshot", label="a")
     + '[[expect]]\nsource = "s"\nstep = 1\nret = 0\nsnapshot = "a"\n',
     "expect 1: field 'snapshot' cannot be combined with 'step'"),
    ("expect_ret_without_step", BASE + WRITE + step("snapshot", label="a")
     + '[[expect]]\nsource = "s"\nsnapshot = "a"\nret = 0\n', "expect 1: field 'ret' needs 'step'"),
    ("expect_undefined_snapshot", BASE + WRITE
     + '[[expect]]\nsource = "s"\nsnapshot = "a"\nregion = "r"\nhuge = 0\n',
     "expect 1: field 'snapshot': undefined snapshot 'a'"),
    ("expect_missing_snapshot", BASE + WRITE + '[[expect]]\nsource = "s"\nregion = "r"\n',
     "expect 1: missing field 'snapshot'"),
    ("expect_undefined_region", BASE + WRITE + step("snapshot", label="a")
     + '[[expect]]\nsource = "s"\nsnapshot = "a"\nregion = "q"\nhuge = 0\n',
     "expect 1: field 'region': undefined region 'q'"),
    ("expect_nothing_to_check", BASE + WRITE + step("snapshot", label="a")
     + '[[expect]]\nsource = "s"\nsnapshot = "a"\nregion = "r"\n',
     "expect 1: a layout expectation needs one of"),
    ("expect_pmds_length", BASE + WRITE + step("snapshot", label="a")
     + '[[expect]]\nsource = "s"\nsnapshot = "a"\nregion = "r"\npmds = ["empty"]\n',
     "expect 1: field 'pmds': 1 entries, region 'r' has 2 PMDs"),
    ("expect_bad_summary", BASE + WRITE + step("snapshot", label="a")
     + '[[expect]]\nsource = "s"\nsnapshot = "a"\nregion = "r"\npmds = ["0-511:H", "*"]\n',
     "expect 1: field 'pmds': PMD 0: bad summary item '0-511:H'"),
    ("expect_bad_picture", BASE + WRITE + step("snapshot", label="a")
     + '[[expect]]\nsource = "s"\nsnapshot = "a"\nregion = "r"\npictures = ["Q*512", "*"]\n',
     "expect 1: field 'pictures': PMD 0: unknown character(s) 'Q'"),
    ("expect_short_picture", BASE + WRITE + step("snapshot", label="a")
     + '[[expect]]\nsource = "s"\nsnapshot = "a"\nregion = "r"\npictures = ["0*500", "*"]\n',
     "expect 1: field 'pictures': PMD 0: 500 characters, a PMD has 512"),
    ("expect_same_as_unknown", BASE + WRITE + step("snapshot", label="a")
     + '[[expect]]\nsource = "s"\nsnapshot = "a"\nsame_as = "b"\n',
     "expect 1: field 'same_as': undefined snapshot 'b'"),
    ("expect_same_as_and_region", BASE + WRITE + step("snapshot", label="a")
     + step("snapshot", label="b")
     + '[[expect]]\nsource = "s"\nsnapshot = "a"\nsame_as = "b"\nregion = "r"\n',
     "expect 1: field 'region' cannot be combined with 'same_as'"),
    ("expect_huge_negative", BASE + WRITE + step("snapshot", label="a")
     + '[[expect]]\nsource = "s"\nsnapshot = "a"\nregion = "r"\nhuge = -1\n',
     "expect 1: field 'huge' must be at least 0"),
]


@pytest.mark.parametrize("text,msg", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_one_line_error(tmp_path, text, msg):
    assert msg in _error(tmp_path, text)


def test_issue_example_message(tmp_path):
    """The issue's own example: ``foo.toml: step 3 (madvise): unknown advice 'hugepages'``."""
    text = BASE + WRITE + WRITE + step("madvise", region="r", advice="hugepages")
    p = _write(tmp_path, text)
    with pytest.raises(ScenarioError) as ei:
        load_scenario(p)
    assert str(ei.value).startswith(f"{p}: step 3 (madvise): unknown advice 'hugepages'")


def test_missing_file(tmp_path):
    with pytest.raises(ScenarioError, match="No such file or directory"):
        load_scenario(tmp_path / "nope.toml")


def test_scenario_error_is_value_error():
    assert issubclass(ScenarioError, ValueError)


# the structural errors are errors of the JSON Schema too
SCHEMA_CASES = ["missing_name", "name_type", "unknown_top_key", "swap_mb_zero",
                "settings_bool", "compare_counters_unknown", "no_region", "region_no_size",
                "region_both_sizes", "region_pmds_zero", "region_unknown_key", "no_step",
                "step_missing_op", "step_unknown_op", "step_unknown_key", "missing_advice",
                "unknown_advice", "mprotect_bad_prot", "full_scans_zero",
                "full_scans_bool", "timeout_negative", "snapshot_missing_label",
                "settings_step_empty", "expect_missing_source", "expect_step_no_ret",
                "expect_step_and_snapshot", "expect_nothing_to_check", "expect_bad_policy",
                "expect_same_as_and_region", "pages_type", "bad_pages_item"]


@pytest.mark.parametrize("case", SCHEMA_CASES)
def test_schema_rejects_structural_errors(case):
    text = next(c[1] for c in CASES if c[0] == case)
    doc = tomllib.loads(textwrap.dedent(text))
    assert schema_errors(doc, SCHEMA), f"the schema accepts {case}"


# --- what a valid file gives ------------------------------------------------------------------
def test_parse_valid(tmp_path):
    p = _write(tmp_path, """
        name = "ok"
        description = "d"
        swap_mb = 16
        compare_counters = ["thp_fault_alloc", "hugepages-64kB/stats/anon_fault_alloc"]
        [settings]
        "/sys/kernel/mm/transparent_hugepage/enabled" = "madvise"
        "khugepaged/max_ptes_none" = 255
        [[region]]
        name = "a"
        pmds = 2
        [[region]]
        name = "b"
        size = "72K"
        [[step]]
        op = "madvise"
        region = "a"
        advice = "pageout"
        pages = "0-7, 512-519, 3"
        [[step]]
        op = "write"
        region = "b"
        [[step]]
        op = "fork"
        [[step]]
        op = "khugepaged"
        [[step]]
        op = "mprotect"
        process = "child"
        region = "a"
        prot = "none"
        pages = "16-31"
        [[step]]
        op = "exit"
        process = "child"
        [[step]]
        op = "fork"
        child = "child"
        [[step]]
        op = "snapshot"
        label = "end"
        [[expect]]
        source = "here"
        snapshot = "end"
        region = "a"
        pmds = ["*", "empty"]
        pictures = ["*", ".*512"]
        huge = 0
        [[expect]]
        source = "here"
        policies = ["legacy"]
        step = 1
        ret = 0
    """)
    sc = load_scenario(p)
    assert sc.name == "ok" and sc.description == "d" and sc.swap_mb == 16
    assert sc.settings == {"enabled": "madvise", "khugepaged/max_ptes_none": "255"}
    a, b = sc.regions
    assert (a.addr, a.nr_pages, a.nr_pmds) == (BASE_ADDR, 1024, 2)
    assert b.addr == BASE_ADDR + 3 * PMD_SIZE  # a gap of one PMD: the VMAs cannot merge
    assert (b.nr_pages, b.nr_pmds, b.length) == (18, 1, 72 << 10)
    s1 = sc.steps[0]
    assert s1.runs == ((0, 8), (512, 520))  # sorted, merged: one madvise call per run
    assert sc.steps[1].runs == ((0, 18),)  # no pages: the whole region
    assert sc.steps[3].full_scans == 2 and sc.steps[3].timeout_s == 10.0
    assert sc.steps[4].process == "child" and sc.steps[4].runs == ((16, 32),)
    assert [s.index for s in sc.steps] == list(range(1, 9))
    assert s1.describe() == "madvise pageout a[0-7, 512-519, 3]"
    assert sc.compare_counters == ("thp_fault_alloc", "hugepages-64kB/stats/anon_fault_alloc")
    e1, e2 = sc.expectations
    assert e1.policies == ("legacy", "v11", "linux-7.2") and e1.huge == 0
    assert e2.policies == ("legacy",) and e2.step == 1 and e2.ret == 0 and e2.errno is None
    assert not schema_errors(tomllib.loads(p.read_text()), SCHEMA)


def test_parse_scenario_from_dict():
    sc = parse_scenario({"name": "d", "region": [{"name": "r", "pmds": 1}],
                         "step": [{"op": "write", "region": "r", "pages": "0"}]})
    assert sc.path == "<scenario>" and sc.steps[0].runs == ((0, 1),)
    with pytest.raises(ScenarioError, match=r"^<scenario>: step 1 \(write\): unknown key"):
        parse_scenario({"name": "d", "region": [{"name": "r", "pmds": 1}],
                        "step": [{"op": "write", "region": "r", "x": 1}]})


def test_settings_helpers():
    d = default_settings()
    assert d == Settings().as_dict()
    assert d["enabled"] == "always" and d["khugepaged/max_ptes_none"] == "511"
    sc = parse_scenario({"name": "d", "settings": {"enabled": "never"},
                         "region": [{"name": "r", "pmds": 1}], "step": [{"op": "exit"}]})
    full = scenario_settings(sc)
    assert full["enabled"] == "never" and set(full) == set(d)


def test_counter_names():
    names = counter_names()
    assert "thp_collapse_alloc" in names
    assert "hugepages-2048kB/stats/collapse_alloc" in names
    assert "hugepages-16kB/stats/anon_fault_alloc" in names
    assert "khugepaged/pages_collapsed" in names
    assert "khugepaged/full_scans" not in names


def test_expand_pattern():
    assert expand_pattern("9 .*511", set(".9")) == "9" + "." * 511
    assert expand_pattern("0*8 ...", set(".0"), nr=11) == "0" * 8 + "..."
    with pytest.raises(ValueError, match="unknown character"):
        expand_pattern("Q*512", set("."))
    with pytest.raises(ValueError, match="a PMD has 512"):
        expand_pattern(".*511", set("."))
