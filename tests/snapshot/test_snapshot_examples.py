"""The snapshots shipped in examples/snapshots/ load, validate and agree with how they
were taken (capture_examples.py, README.md there)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from thpsim.snapshot.core import PRESENT
from thpsim.snapshot.io import load_snapshot

DIR = Path(__file__).resolve().parents[2] / "examples" / "snapshots"
NAMES = ["redis", "numpy", "malloc-churn"]
FILES = [f"{n}{v}.thpsnap" for n in NAMES for v in ("", "-mthp64k")]
COMM = {"redis": "redis-server", "numpy": "python", "malloc-churn": "malloc_churn"}


def test_all_examples_are_shipped():
    assert sorted(p.name for p in DIR.glob("*.thpsnap")) == sorted(FILES)


@pytest.mark.parametrize("name", FILES)
def test_example_loads_and_is_small(name):
    path = DIR / name
    snap = load_snapshot(path)
    snap.validate()
    size = os.path.getsize(path)
    assert size <= 1 << 20
    assert size <= snap.nr_pages  # at most 1 byte per 4K page of span
    program = name.removesuffix(".thpsnap").removesuffix("-mthp64k")
    assert snap.meta["program"] == program
    assert snap.comm.startswith(COMM[program])
    assert snap.kernel and snap.settings and snap.pid > 0
    assert snap.state_counts()["present"] > 10_000


@pytest.mark.parametrize("name", FILES)
def test_folio_sizes_agree_with_recorded_settings(name):
    """Anonymous faults only make mTHP sizes that were enabled (no mTHP collapse here)."""
    snap = load_snapshot(DIR / name)
    top = snap.settings["enabled"]
    orders = set(np.unique(snap.order[snap.state == PRESENT]).tolist())
    for o in sorted(orders - {0, 9}):
        knob = snap.settings[f"hugepages-{4 << o}kB/enabled"]
        assert knob == "always" or (knob == "inherit" and top == "always") or knob == "madvise", \
            (o, knob)
    if name.endswith("-mthp64k.thpsnap"):
        assert snap.settings["hugepages-64kB/enabled"] == "always" and top == "always"
        assert 4 in orders  # 64K folios were made
    else:
        assert snap.meta["settings_applied"] == "host as is"


@pytest.mark.parametrize("name", [f for f in FILES if "mthp" not in f])
def test_pmd_mapped_only_where_allowed(name):
    """Under enabled=madvise, PMD THPs only appear in MADV_HUGEPAGE (hg) VMAs (the
    files without "mthp" were captured under the host's enabled=madvise)."""
    snap = load_snapshot(DIR / name)
    assert snap.settings["enabled"] == "madvise"
    off = snap.vma_offsets()
    for i, v in enumerate(snap.vmas):
        if not v.hg:
            assert not snap.pmd_mapped[off[i]:off[i + 1]].any(), v


def test_numpy_large_arrays_are_thp():
    """NumPy madvises big arrays MADV_HUGEPAGE: two 64 MiB arrays are left, PMD-mapped."""
    snap = load_snapshot(DIR / "numpy.thpsnap")
    off = snap.vma_offsets()
    hg = [i for i, v in enumerate(snap.vmas) if v.hg and v.end - v.start >= 64 << 20]
    assert len(hg) == 2
    for i in hg:
        assert snap.pmd_mapped[off[i]:off[i + 1]].sum() >= (64 << 20) // 4096 - 512
