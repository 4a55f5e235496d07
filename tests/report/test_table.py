"""The side-by-side table: one column per run, values converted and formatted."""

from __future__ import annotations

from rich.console import Console

from thpsim.report.labels import run_label, settings_label
from thpsim.report.table import comparison_rows, comparison_table, format_value, paired_table


def render(table) -> str:
    con = Console(record=True, width=200)
    con.print(table)
    return con.export_text()


def test_format_value_units():
    assert format_value(3072.0, "MiB") == "3.0"  # kB -> MiB
    assert format_value(1234567.0, "") == "1,234,567"
    assert format_value(0.125, "s") == "0.12"
    assert format_value(float("nan"), "") == "-"
    assert format_value(None, "MiB") == "-"


def test_rows_skip_unknown_keys_and_keep_column_order():
    cols = [("a", {"rss_kb": 1024.0}), ("b", {"rss_kb": 4096.0, "events": 7.0})]
    rows = dict(comparison_rows(cols))
    assert rows["RSS MiB"] == ["1.0", "4.0"]
    assert rows["workload events"] == ["-", "7"]
    assert "filled by collapse MiB" not in rows


def test_rich_table_shows_headers_and_values():
    text = render(comparison_table([("legacy\nmax_ptes_none=0", {"pmd_mapped_kb": 20480.0}),
                                    ("v11\ndefaults", {"pmd_mapped_kb": 0.0})], "demo"))
    assert "legacy" in text and "v11" in text and "max_ptes_none=0" in text
    line = next(ln for ln in text.splitlines() if "PMD-mapped" in ln)
    assert "20.0" in line and "0.0" in line


def test_labels():
    assert settings_label({}) == "defaults"
    assert settings_label({"khugepaged/max_ptes_none": "0",
                           "hugepages-64kB/enabled": "always"}) == \
        "64kB/enabled=always max_ptes_none=0"
    assert run_label("v11", {}, "none0") == "v11 · none0"


def test_paired_table_joins_each_groups_values():
    text = render(paired_table([("legacy", [{"rss_kb": 1024.0}, {"rss_kb": 2048.0}]),
                                ("v11", [{"rss_kb": 3072.0}, {}])], "pairs"))
    line = next(ln for ln in text.splitlines() if "RSS" in ln)
    assert "1.0 / 2.0" in line and "3.0 / -" in line
    assert line.index("1.0 / 2.0") < line.index("3.0 / -")
