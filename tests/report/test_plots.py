"""Plots: files produced, axes labelled, pixels and artists reflect the data."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest
from matplotlib.colors import to_rgb

from thpsim.report.plots import (
    CATEGORY_COLOURS,
    address_map_figure,
    category_index,
    compare_figure,
    layout_image,
    run_timeseries_figure,
    save_png,
    sweep_summary_figure,
)

# layout code -> legend name, written out by hand (docs/reports.md)
NAMES = {-1: "none", -2: "zero page", -3: "swap", 0: "order 0", 4: "order 4", 9: "order 9"}


def tiny_layout():
    """Row 0: a PMD-mapped THP.  Row 1: 16 order-4 pages, 16 none, 16 zero, 16 swap,
    64 order-0, the rest none."""
    order = np.full((2, 512), -1, dtype=np.int8)
    order[0] = 9
    order[1, 0:16] = 4
    order[1, 32:48] = -2
    order[1, 48:64] = -3
    order[1, 64:128] = 0
    return {"vpn0": np.array([0x1000, 0x1200], dtype=np.int64), "order": order,
            "pmd_mapped": np.array([True, False])}


def _pixel(img, fig, ax, col, row):
    x, y = ax.transData.transform((col, row))
    return img[round(float(fig.bbox.height - y)), round(float(x)), :3]


def test_address_map_pixels_match_orders(tmp_path):
    lay = tiny_layout()
    fig = address_map_figure({"before": lay, "after": lay}, "tiny")
    path = tmp_path / "map.png"
    save_png(fig, path)
    img = mpimg.imread(path)
    assert img.shape[1] == round(fig.bbox.width) and img.shape[0] == round(fig.bbox.height)
    maps = [ax for ax in fig.axes if ax.get_title() in ("before", "after")]
    strips = [ax for ax in fig.axes if [t.get_text() for t in ax.get_xticklabels()] == ["PMD"]]
    assert len(maps) == 2 and len(strips) == 2
    samples = [(0, 100, 9), (1, 8, 4), (1, 20, -1), (1, 40, -2), (1, 50, -3), (1, 100, 0),
               (1, 300, -1)]
    for ax in maps:
        for row, col, code in samples:
            got = _pixel(img, fig, ax, col, row)
            want = to_rgb(CATEGORY_COLOURS[NAMES[code]])
            assert np.allclose(got, want, atol=2 / 255), (row, col, code, got, want)
        assert ax.get_xlabel()
    for ax in strips:
        assert np.allclose(_pixel(img, fig, ax, 0, 0), 0.0, atol=2 / 255)  # PMD-mapped
        assert np.allclose(_pixel(img, fig, ax, 0, 1), 1.0, atol=2 / 255)
        assert ax.get_ylabel()
    legend = {t.get_text() for lg in fig.legends for t in lg.get_texts()}
    assert {"none", "zero page", "swap", "order 0", "order 9"} <= legend


def test_category_colours_distinct():
    rgb = [to_rgb(c) for c in CATEGORY_COLOURS.values()]
    assert len(set(rgb)) == len(rgb)


def test_category_index_rejects_unknown_codes():
    with pytest.raises(ValueError):
        category_index(np.array([-4]))
    with pytest.raises(ValueError):
        category_index(np.array([14]))


def test_downsampling_mode_ties_and_mapped_fraction():
    # 40 PMDs binned 4 per row: in each bin, slot 0 has 3x order 0 and 1x order 9
    # (mode: order 0); slot 1 has 2x none and 2x order 4 (tie: the larger, order 4)
    order = np.full((40, 512), -1, dtype=np.int8)
    order[:, 0] = np.tile([0, 0, 0, 9], 10)
    order[:, 1] = np.tile([-1, 4, -1, 4], 10)
    mapped = np.tile([True, False, False, False], 10)
    rgb, strip, k, _ = layout_image({"vpn0": np.arange(40) * 512, "order": order,
                                     "pmd_mapped": mapped}, max_rows=10)
    assert k == 4 and rgb.shape == (10, 512, 3)
    assert np.allclose(rgb[:, 0], to_rgb(CATEGORY_COLOURS["order 0"]))
    assert np.allclose(rgb[:, 1], to_rgb(CATEGORY_COLOURS["order 4"]))
    assert np.allclose(rgb[:, 2], to_rgb(CATEGORY_COLOURS["none"]))
    assert np.allclose(strip[:, 0, 0], 0.75)  # 1 of 4 rows PMD-mapped -> 25% black


def test_map_of_large_layout_is_bounded(tmp_path):
    order = np.full((5000, 512), 9, dtype=np.int8)
    fig = address_map_figure({"after": {"vpn0": np.arange(5000) * 512, "order": order,
                                        "pmd_mapped": np.ones(5000, bool)}}, max_rows=200)
    save_png(fig, tmp_path / "big.png")
    h, w = mpimg.imread(tmp_path / "big.png").shape[:2]
    assert h <= 1000 and w <= 1200
    assert any("per row" in ax.get_ylabel() for ax in fig.axes)


def series(scale=1.0, n=11):
    t = np.linspace(0, 100, n)
    return {"t_s": t, "rss_kb": 2048 * scale * t, "anon_kb": 2048 * scale * t,
            "pmd_mapped_kb": 1024 * scale * t, "bloat_kb": 10 * scale * t,
            "tlb_x86-64": 3 * t, "tlb_amd": 2 * t, "tlb_arm64": t,
            "folio_kb_4": 100 * t, "folio_kb_64": 50 * t, "folio_kb_2048": 200 * t,
            "khugepaged_attempts": t, "khugepaged_successes": t / 2,
            "khugepaged_copies": t / 4, "khugepaged_pages_scanned": 512 * t,
            "khugepaged_cpu_ms": t / 10}


def test_run_timeseries_labelled_and_reflects_data(tmp_path):
    s = series()
    fig = run_timeseries_figure(s, "one run")
    save_png(fig, tmp_path / "ts.png")
    assert (tmp_path / "ts.png").stat().st_size > 10_000
    assert len(fig.axes) == 6
    for ax in fig.axes:
        assert ax.get_xlabel() == "time (s)" and ax.get_ylabel() and ax.get_title()
        assert ax.lines or ax.collections
    mem = next(ax for ax in fig.axes if ax.get_title() == "Memory")
    rss = next(ln for ln in mem.lines if ln.get_label() == "RSS")
    assert np.allclose(rss.get_ydata(), 2 * s["t_s"])  # kB -> MiB by hand: 2048 kB = 2 MiB
    folios = next(ax for ax in fig.axes if ax.get_title() == "Memory by folio size")
    assert len(folios.collections) == 3  # one stacked area per folio size
    assert [t.get_text() for t in folios.get_legend().get_texts()] == ["4 kB", "64 kB", "2 MB"]
    tlb = next(ax for ax in fig.axes if ax.get_title().startswith("TLB"))
    assert sorted(ln.get_label() for ln in tlb.lines) == ["amd", "arm64", "x86-64"]


def test_timeseries_tolerates_missing_columns():
    fig = run_timeseries_figure({"t_s": np.arange(3.0), "rss_kb": np.ones(3)})
    mem = next(ax for ax in fig.axes if ax.get_title() == "Memory")
    assert [ln.get_label() for ln in mem.lines] == ["RSS"]


def test_compare_figure_one_line_per_run():
    fig = compare_figure([("a", series(1.0)), ("b", series(2.0))], "cmp")
    for ax in fig.axes:
        assert [ln.get_label() for ln in ax.lines] == ["a", "b"]
        assert ax.get_xlabel() and ax.get_ylabel()
    rss = next(ax for ax in fig.axes if ax.get_title() == "RSS")
    assert np.allclose(rss.lines[1].get_ydata(), 4 * series()["t_s"])


def test_sweep_summary_bars_are_means_with_range():
    rows = [{"workload_label": "w", "run_label": "p", "rss_kb": v} for v in (1.0, 3.0, 8.0)]
    rows += [{"workload_label": "w", "run_label": "q", "rss_kb": 10.0}]
    fig = sweep_summary_figure(rows, ["rss_kb"], "s")
    ax = fig.axes[0]
    heights = sorted(p.get_height() for p in ax.patches)
    assert heights == [4.0, 10.0]
    assert ax.get_xlabel() == "workload" and ax.get_ylabel() == "rss_kb"
    labels = {t.get_text() for lg in fig.legends for t in lg.get_texts()}
    assert labels == {"p", "q"}
