"""``thpsim demo``: six runs, the side-by-side table, the report on disk."""

from __future__ import annotations

from html.parser import HTMLParser

from thpsim.cli import main


class _Imgs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


def test_demo_prints_table_and_writes_report(tmp_path, capsys):
    rep = tmp_path / "rep"
    assert main(["demo", "--duration", "20", "--report", str(rep), "--jobs", "2"]) == 0
    out = capsys.readouterr().out
    for policy in ("legacy", "v11", "linux-7.2"):
        assert policy in out
    assert "none 511 / 0" in out
    # max_ptes_none=0 never lets a collapse fill an empty PTE (transhuge.rst): the second
    # value of every "bloat" cell is 0
    bloat = next(line for line in out.splitlines() if "bloat MiB" in line)
    cells = [c.strip() for c in bloat.split("│")[2:5]]
    assert len(cells) == 3 and all(c.endswith("/ 0.0") for c in cells), bloat
    assert f"report: {rep / 'index.html'}" in out
    page = (rep / "index.html").read_text()
    imgs = _Imgs()
    imgs.feed(page)
    assert len(imgs.srcs) == 1 + 2 * 6 and all((rep / s).exists() for s in imgs.srcs)
    assert page.count('<section class="run"') == 6


def test_demo_unknown_workload_is_one_line(tmp_path, capsys):
    assert main(["demo", "--workload", "nosuch", "--report", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("thpsim: error: --workload 'nosuch': unknown workload")
    assert err.count("\n") == 1 and not (tmp_path / "r").exists()


def test_demo_is_registered_once():
    from thpsim.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "cmd")
    assert list(sub.choices).count("demo") == 1
