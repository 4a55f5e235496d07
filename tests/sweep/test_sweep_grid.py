"""GRID.toml: expansion into cells, stable cell ids, one-line errors for malformed grids."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from thpsim.cli import main
from thpsim.sweep.grid import Cell, GridError, load_grid

GOOD = """
[sweep]
duration_s = 30
seeds = 2
policies = ["legacy", "linux-7.2"]

[workloads.alloc]
workload = "allocator"
params = { arena_size = "4M" }

[workloads.stacks]

[settings.a]
"khugepaged/max_ptes_none" = 511
[settings.b]
"khugepaged/max_ptes_none" = 0
"""


def write(tmp_path, text: str, name: str = "grid.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_grid_expands_to_the_product(tmp_path):
    g = load_grid(write(tmp_path, GOOD))
    # 2 workloads x 2 policies x 2 settings sets x 2 seeds, counted by hand
    assert len(g.cells) == 16
    assert len({c.cell_id for c in g.cells}) == 16
    c = g.cells[0]
    assert (c.workload_label, c.workload, c.policy, c.settings_name, c.seed) == \
        ("alloc", "allocator", "legacy", "a", 0)
    assert c.settings == {"khugepaged/max_ptes_none": "511"}  # integers become strings
    assert c.duration_s == 30.0 and c.sample_s is None
    assert {x.workload for x in g.cells} == {"allocator", "stacks"}  # label is the default


def test_example_grid_is_valid():
    g = load_grid("examples/sweeps/small.toml")
    assert len(g.cells) == 12


def test_no_settings_table_means_defaults(tmp_path):
    g = load_grid(write(tmp_path, '[sweep]\nduration_s = 1\npolicies = ["v11"]\n'
                                  '[workloads.allocator]\n'))
    assert [(c.settings_name, c.settings, c.seed) for c in g.cells] == [("defaults", {}, 0)]


CELL = dict(workload_label="w", workload="allocator", policy="v11", settings_name="s",
            seed=1, duration_s=10.0)


@given(st.dictionaries(st.sampled_from("abcdef"), st.integers(), max_size=6),
       st.dictionaries(st.sampled_from(["x/y", "enabled", "z"]), st.sampled_from("012"),
                       max_size=3))
def test_cell_id_ignores_key_order_and_labels(params, settings):
    a = Cell(params=params, settings=settings, **CELL)
    b = Cell(params=dict(reversed(list(params.items()))),
             settings=dict(reversed(list(settings.items()))),
             **(CELL | {"workload_label": "other", "settings_name": "other"}))
    assert a.cell_id == b.cell_id
    c = Cell(params=params, settings=settings, **(CELL | {"seed": 2}))
    assert c.cell_id != a.cell_id


BAD = [
    ("[workloads.a]\n", "sweep", "missing [sweep]"),
    ("[sweep]\npolicies=['v11']\n[workloads.a]\n", "sweep.duration_s", "missing"),
    ("[sweep]\nduration_s=-1\n[workloads.allocator]\n", "sweep.duration_s", "> 0"),
    ("[sweep]\nduration_s='x'\n[workloads.allocator]\n", "sweep.duration_s", "number"),
    ("[sweep]\nduration_s=1\npolicies=['v12']\n[workloads.allocator]\n", "sweep.policies",
     "unknown policy 'v12'"),
    ("[sweep]\nduration_s=1\nseeds=[1,'a']\n[workloads.allocator]\n", "sweep.seeds", "list"),
    ("[sweep]\nduration_s=1\nseeds=0\n[workloads.allocator]\n", "sweep.seeds", ">= 1"),
    ("[sweep]\nduration_s=1\ncolour=1\n[workloads.allocator]\n", "sweep.colour",
     "unknown key"),
    ("[sweep]\nduration_s=1\n", "workloads", "at least one"),
    ("[sweep]\nduration_s=1\n[workloads.a]\nworkload='nosuch'\n", "workloads.a.workload",
     "unknown workload 'nosuch'"),
    ("[sweep]\nduration_s=1\n[workloads.allocator]\nparams=3\n",
     "workloads.allocator.params", "table"),
    ("[sweep]\nduration_s=1\n[workloads.allocator]\n[settings.x]\nenabled=[1]\n",
     "settings.x.enabled", "string or an integer"),
    ("[sweep]\nduration_s=1\n[workloads.allocator]\n[extra]\n", "extra", "unknown key"),
]


@pytest.mark.parametrize(("text", "field", "why"), BAD)
def test_malformed_grid_names_file_and_field(tmp_path, text, field, why):
    p = write(tmp_path, text)
    with pytest.raises(GridError) as ei:
        load_grid(p)
    msg = str(ei.value)
    assert msg.startswith(f"{p}: {field}: ") and why in msg and "\n" not in msg


def test_invalid_toml_and_missing_file(tmp_path):
    p = write(tmp_path, "[sweep\n")
    with pytest.raises(GridError, match=r"grid\.toml: not valid TOML"):
        load_grid(p)
    with pytest.raises(GridError, match="no such file"):
        load_grid(tmp_path / "none.toml")


def test_cli_malformed_grid_is_one_line_exit_2(tmp_path, capsys):
    p = write(tmp_path, "[sweep]\nduration_s=0\n[workloads.allocator]\n")
    assert main(["sweep", str(p), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"thpsim: error: {p}: sweep.duration_s: must be > 0, got 0"
    assert not (tmp_path / "out").exists()
