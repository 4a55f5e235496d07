"""Loading a snapshot into the model: layout rules, invariants, registration."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings

from thpsim.mm.pgtable import HUGE_ZERO_PFN, PTE_PRESENT, PTE_SWAP, PTE_ZERO
from thpsim.snapshot.core import HUGE_ZERO, PRESENT, SWAP, ZERO, Snapshot, SnapshotVma
from thpsim.whatif.layout import K_HUGE, K_PRESENT, normalise
from thpsim.whatif.load import load_snapshot_into_model

from .whatif_gen import snapshots

NR = 512
BASE = 1 << 30


def _snap(n_pmds=1, start=BASE, flags="rd wr mr mw me ac", name=""):
    n = n_pmds * NR
    cols = {c: np.zeros(n, Snapshot.DTYPES[c]) for c in Snapshot.COLUMNS}
    cols["order"][:] = -1
    return Snapshot([SnapshotVma(start, start + n * 4096, flags, None, name)], **cols)


def _present(s, sl, order=0, fi=None, mapcount=1):
    s.state[sl] = PRESENT
    s.order[sl] = order
    n = len(range(*sl.indices(s.nr_pages)))
    s.folio_index[sl] = np.arange(n) % (1 << order) if fi is None else fi
    s.mapcount[sl] = mapcount
    s.exclusive[sl] = mapcount == 1


def test_pages_land_where_the_snapshot_says():
    s = _snap(2)
    _present(s, slice(0, 100))
    s.state[100:110] = ZERO
    s.state[110:113] = SWAP
    _present(s, slice(NR, 2 * NR), order=9)
    s.pmd_mapped[NR:] = True
    sys, p = load_snapshot_into_model(s, "v11")
    sys.check()
    pt = p.mm.pt
    pmd0 = (BASE // 4096) >> 9
    row = pt.row(pmd0)
    assert (pt.kind[row, :100] == PTE_PRESENT).all()
    assert (pt.kind[row, 100:110] == PTE_ZERO).all()
    assert (pt.kind[row, 110:113] == PTE_SWAP).all()
    assert pt.huge[pmd0 + 1][0] != HUGE_ZERO_PFN
    assert p.rss_anon == 100 + NR and p.rss_swap == 3
    assert sys.khugepaged.mm_slots == [p.mm]  # registered (THP "always")


def test_huge_zero_window_and_readonly_vma():
    s = _snap(1, flags="rd mr mw me ac")
    s.state[:] = HUGE_ZERO
    sys, p = load_snapshot_into_model(s, "legacy")
    sys.check()
    assert p.mm.pt.huge[(BASE // 4096) >> 9][0] == HUGE_ZERO_PFN
    assert p.rss_anon == 0


def test_large_folio_kept_only_when_aligned_and_consistent():
    s = _snap(1)
    _present(s, slice(0, 16), order=4)  # aligned order-4 folio
    _present(s, slice(20, 36), order=4)  # head at page 20: not 16-aligned -> order 0
    _present(s, slice(64, 80), order=4, fi=np.r_[np.arange(8), np.arange(8)])  # inconsistent
    s.state[3] = 0  # a hole in the first folio: still one folio, partly mapped
    s.order[3] = -1
    ld = normalise(s, 9)
    assert (ld.order[np.r_[0:3, 4:16]] == 4).all()
    assert (ld.order[20:36] == 0).all() and (ld.order[64:80] == 0).all()
    sys, p = load_snapshot_into_model(s, "v11")
    sys.check()
    f = sys.folios
    row = p.mm.pt.row((BASE // 4096) >> 9)
    heads = f.heads_of(p.mm.pt.pfn[row, [0, 15, 20, 21]].astype(np.int64))
    assert heads[0] == heads[1] and f.order[heads[0]] == 4
    assert heads[2] != heads[3] and f.order[heads[2]] == 0


def test_shared_pages_are_held_by_another_process():
    s = _snap(1)
    _present(s, slice(0, 8), order=2, fi=np.r_[np.arange(4), np.arange(4)])
    s.mapcount[1] = 2  # one page of the first folio: the whole folio is shared
    _present(s, slice(8, 10), mapcount=3)  # kpagecount 3 -> still one holder mapping
    ld = normalise(s, 9)
    assert ld.shared[:4].all() and not ld.shared[4:8].any() and ld.shared[8:10].all()
    sys, _ = load_snapshot_into_model(s, "v11")
    sys.check()
    holder = sys.process("holder")
    assert holder.rss_anon == 3
    assert holder.mm not in sys.khugepaged.mm_slots


def test_file_vmas_are_not_loaded():
    s = _snap(1, name="/usr/lib/x.so")
    _present(s, slice(0, 10))
    _, p = load_snapshot_into_model(s, "v11")
    assert len(p.mm.vmas) == 0 and p.rss_anon == 0


def test_not_registered_when_thp_is_off():
    s = _snap(1)
    _present(s, slice(0, 500))
    sys, p = load_snapshot_into_model(s, "legacy", {"enabled": "never"})
    assert sys.khugepaged.mm_slots == []
    sys, p = load_snapshot_into_model(s, "legacy", {"enabled": "madvise"})
    assert sys.khugepaged.mm_slots == []
    s2 = _snap(1, flags="rd wr mr mw me ac hg")
    _present(s2, slice(0, 500))
    sys, p = load_snapshot_into_model(s2, "legacy", {"enabled": "madvise"})
    assert sys.khugepaged.mm_slots == [p.mm]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(snap=snapshots)
def test_random_snapshots_load_consistently(snap):
    sys, p = load_snapshot_into_model(snap, "v11")
    sys.check()
    ld = normalise(snap, 9)
    # every loaded present page is mapped, PTE or PMD
    want = int(np.count_nonzero(ld.kind == K_PRESENT) + np.count_nonzero(ld.kind == K_HUGE))
    assert p.rss_anon == want
