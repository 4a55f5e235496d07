"""The HTML report: one index.html with the comparison table and existing images."""

from __future__ import annotations

from html.parser import HTMLParser

import matplotlib.image as mpimg
import numpy as np
import pytest

from thpsim import __version__
from thpsim.commands import UsageError
from thpsim.report.html import write_report
from thpsim.sim.result import RunResult


class _Page(HTMLParser):
    """Collects image sources and the rows of the first table."""

    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.rows: list[list[str]] = []
        self._tables = 0
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.imgs.append(dict(attrs)["src"])
        elif tag == "table":
            self._tables += 1
        elif tag == "tr" and self._tables == 1:
            self.rows.append([])
        elif tag in ("td", "th") and self._tables == 1:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._tables == 1:
            self.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._tables += 1

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data + " ")


def parse(path) -> _Page:
    p = _Page()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def handmade(policy: str, none: int, rss_kb: float) -> RunResult:
    """A stand-in run with known values (the report must show them, not recompute them)."""
    t = np.arange(5, dtype=float)
    order = np.full((2, 512), -1, dtype=np.int8)
    order[0, :] = 9
    lay = {"vpn0": np.array([0, 512]), "order": order, "pmd_mapped": np.array([True, False])}
    return RunResult(workload="handmade", params={"size": 123}, policy=policy,
                     settings={"khugepaged/max_ptes_none": str(none)}, seed=7,
                     duration_s=4.0, series={"t_s": t, "rss_kb": rss_kb * t / 4},
                     summary={"rss_kb": rss_kb, "events": 3.0},
                     layouts={"before": lay, "after": lay})


def test_report_table_images_and_metadata(tmp_path):
    runs = [handmade("legacy", 511, 2048.0), handmade("v11", 0, 5120.0)]
    index = write_report(runs, tmp_path / "rep")
    assert index == tmp_path / "rep" / "index.html"
    page = parse(index)
    header = page.rows[0]
    assert header[1:] == ["legacy max_ptes_none=511", "v11 max_ptes_none=0"]
    rss = next(r for r in page.rows if r[0] == "RSS MiB")
    assert rss[1:] == ["2.0", "5.0"]  # 2048 kB and 5120 kB by hand
    seeds = next(r for r in page.rows if r[0] == "seed")
    assert seeds[1:] == ["7", "7"]
    # every image exists beside index.html and is a non-blank PNG
    assert len(page.imgs) == 1 + 2 * 2  # comparison + (map, series) per run
    for src in page.imgs:
        img = mpimg.imread(tmp_path / "rep" / src)
        assert img[..., :3].std() > 0.01, src
    text = index.read_text()
    assert f"thpsim {__version__}" in text and "&quot;size&quot;: 123" in text
    # atomic writes leave no temporaries
    assert not [p for p in (tmp_path / "rep").iterdir() if p.name.startswith(".thpsim-")]


def test_report_replaces_images_of_a_larger_earlier_report(tmp_path):
    write_report([handmade("legacy", 511, 1.0), handmade("v11", 0, 1.0)], tmp_path)
    assert (tmp_path / "run-1-map.png").exists()
    write_report([handmade("legacy", 511, 1.0)], tmp_path)
    assert not (tmp_path / "run-1-map.png").exists()
    assert {s for s in parse(tmp_path / "index.html").imgs} == \
        {"compare.png", "run-0-map.png", "run-0-series.png"}


def test_report_without_runs_is_an_error(tmp_path):
    with pytest.raises(UsageError):
        write_report([], tmp_path)


def test_report_of_real_runs(tmp_path):
    from thpsim.sim.runner import simulate

    params = {"arena_size": "4M", "classes": ["4"]}
    runs = [simulate("allocator", params=params, policy=pol, duration_s=20, seed=3,
                     settings={"khugepaged/max_ptes_none": "0"})
            for pol in ("legacy", "linux-7.2")]
    index = write_report(runs, tmp_path)
    page = parse(index)
    rss = next(r for r in page.rows if r[0] == "RSS MiB")
    assert rss[1:] == [f"{r.summary['rss_kb'] / 1024:.1f}" for r in runs]
    assert all((tmp_path / s).exists() for s in page.imgs)
    assert len(page.imgs) == 1 + 2 * 2  # real runs record before/after layouts


def test_report_metadata_rows_come_first_in_order(tmp_path):
    page = parse(write_report([handmade("v11", 0, 1.0)], tmp_path))
    assert [r[0] for r in page.rows[1:4]] == ["workload", "seed", "duration (s)"]
