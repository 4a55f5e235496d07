"""Valgrind lackey trace import."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pytest

from thpsim.sim import simulate
from thpsim.workloads import WorkloadError
from thpsim.workloads.trace import LackeyTrace, read_lackey

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "traces",
                      "hashfill.lackey.gz")

TEXT = """==1== Lackey, an example Valgrind tool
==1== Command: ./prog
I  00401000,3
 L 00500008,8
 S 00501ffc,8
 M 00600000,4
 L 40000000,4
==1==
"""


def test_parse_by_hand(tmp_path):
    p = tmp_path / "t.lackey"
    p.write_text(TEXT)
    d = read_lackey(p)
    assert d.command == "./prog"
    # I dropped; the store at 0x501ffc (8 bytes) crosses into page 0x502
    assert d.page.tolist() == [0x500, 0x501, 0x502, 0x600, 0x40000]
    assert d.write.tolist() == [False, True, True, True, False]
    d = read_lackey(p, instructions=True)
    assert d.page.tolist()[0] == 0x401 and not d.write[0]


def test_gzip_and_regions(tmp_path):
    p = tmp_path / "t.lackey.gz"
    with gzip.open(p, "wt") as fh:
        fh.write(TEXT)
    wl = LackeyTrace(path=str(p))
    # pages 0x500-0x502 and 0x600 are within 2 MiB of each other; 0x40000 is far away
    assert wl.regions() == [(0x500, 0x601), (0x40000, 0x40001)]
    wl = LackeyTrace(path=str(p), align="2M")
    # 0x500 = 1280 rounds down to 1024, 0x601 = 1537 up to 2048
    assert wl.regions() == [(1024, 2048), (0x40000, 0x40000 + 512)]


def test_malformed_line(tmp_path):
    p = tmp_path / "bad.lackey"
    p.write_text(TEXT.replace(" M 00600000,4", " X 00600000,4"))
    with pytest.raises(WorkloadError, match=r"bad.lackey:6: not a lackey trace line"):
        read_lackey(p)
    p.write_text(" L 0060zz00,4\n")
    with pytest.raises(WorkloadError, match=r"bad.lackey:1: bad address"):
        read_lackey(p)
    with pytest.raises(WorkloadError, match="No such file"):
        read_lackey(tmp_path / "missing")


def test_sample_trace_replays():
    wl = LackeyTrace(path=SAMPLE)
    d = wl.data()
    assert "hashfill" in d.command
    r = simulate(wl, policy="linux-7.2", settings={"enabled": "never"}, duration_s=70)
    # without THP every distinct page the trace touches is mapped: written ones
    # resident, read-only ones on the zero page
    written = np.unique(d.page[d.write]).size
    assert r.summary["rss_kb"] == 4 * written
    assert r.summary["touches"] >= np.unique(d.page).size
