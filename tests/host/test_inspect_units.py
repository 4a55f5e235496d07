"""thpmaps-compatible counters, occupancy and khugepaged eligibility on synthetic input
(no root needed): hand-worked cases and a property test against a page-by-page reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thpsim.host.inspect import (
    ProcessReport,
    VmaReport,
    khugepaged_eligible_pmds,
    occupancy,
    rollup,
)
from thpsim.host.pagemap import PageInfo, Vma
from thpsim.host.thpmaps import cont_order, counter_labels, percent, thp_counters
from thpsim.mm.settings import Settings

ANON, HEAD, TAIL, THP = 1 << 12, 1 << 15, 1 << 16, 1 << 22
M = 1 << 20


def folio_pages(vpn0: int, pfn0: int, order: int, first: int = 0, last: int | None = None,
                anon: bool = True) -> list[tuple[int, int, int, int]]:
    """(vpn, pfn, kflags, order) of pages ``first..last-1`` of a folio at ``pfn0`` mapped
    from ``vpn0`` (the folio's page ``first`` sits at ``vpn0``)."""
    nr = 1 << order
    last = nr if last is None else last
    out = []
    for i in range(first, last):
        f = ANON if anon else 0
        if order > 0:
            f |= THP | (HEAD if i == 0 else TAIL)
        out.append((vpn0 + i - first, pfn0 + i, f, order))
    return out


def count(pages, **kw) -> dict[str, int]:
    a = np.array(pages, dtype=np.int64).reshape(-1, 4)
    return thp_counters(a[:, 0], a[:, 1], a[:, 2].astype(np.uint64), a[:, 3], **kw)


def nonzero(c: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in c.items() if v}


# ---------------------------------------------------------------- hand-worked counters


def test_labels_follow_thpmaps_order():
    labels = counter_labels((4,))
    assert labels[:3] == ["anon-thp-pmd-aligned-2048kB", "file-thp-pmd-aligned-2048kB",
                          "anon-thp-pte-aligned-16kB"]
    assert labels.index("anon-thp-pte-aligned-2048kB") + 1 == labels.index(
        "anon-thp-pte-unaligned-16kB")
    assert labels.index("anon-thp-pte-partial") + 1 == labels.index("file-thp-pte-aligned-16kB")
    assert labels[-4:] == ["anon-cont-pmd-aligned-64kB", "file-cont-pmd-aligned-64kB",
                           "anon-cont-pte-aligned-64kB", "file-cont-pte-aligned-64kB"]
    assert len(labels) == 2 + 2 * (2 * 8 + 1) + 4


def test_whole_aligned_and_unaligned_folios():
    assert nonzero(count(folio_pages(16, 32, 4))) == {"anon-thp-pte-aligned-64kB": 64}
    assert nonzero(count(folio_pages(17, 32, 4))) == {"anon-thp-pte-unaligned-64kB": 64}
    # a 16K folio then a 64K folio, physically and virtually adjacent: one run, two folios
    pages = folio_pages(12, 28, 2) + folio_pages(16, 32, 4)
    assert nonzero(count(pages)) == {"anon-thp-pte-aligned-16kB": 16,
                                     "anon-thp-pte-aligned-64kB": 64}


def test_partial_folios_front_and_back():
    # pages 0-7 of a 64K folio: the folio continues past the run
    assert nonzero(count(folio_pages(16, 32, 4, 0, 8))) == {"anon-thp-pte-partial": 32}
    # pages 4-15: the run starts in a tail
    assert nonzero(count(folio_pages(20, 32, 4, 4))) == {"anon-thp-pte-partial": 48}
    # a hole at page 2: 2 pages before it, 13 after
    pages = folio_pages(16, 32, 4, 0, 2) + folio_pages(18 + 1, 32 + 3, 4, 3)
    assert nonzero(count(pages)) == {"anon-thp-pte-partial": 60}


def test_pmd_mapped_memory_comes_from_smaps():
    pages = folio_pages(512, 1024, 9)
    assert nonzero(count(pages)) == {"anon-thp-pte-aligned-2048kB": 2048}
    assert nonzero(count(pages, anon_pmd_kb=2048)) == {"anon-thp-pmd-aligned-2048kB": 2048}
    # smaps racing ahead of pagemap: clamped at zero, the smaps value is reported as is
    assert nonzero(count([], anon_pmd_kb=4096)) == {"anon-thp-pmd-aligned-2048kB": 4096}
    c = count(pages, anon_pmd_kb=2048, cont_orders=(4,))
    assert c["anon-cont-pmd-aligned-64kB"] == 2048 and c["anon-cont-pte-aligned-64kB"] == 0


def test_file_folios_and_small_pages():
    pages = folio_pages(16, 32, 2, anon=False) + folio_pages(40, 100, 0)
    assert nonzero(count(pages)) == {"file-thp-pte-aligned-16kB": 16}
    assert nonzero(count(pages, file_pmd_kb=2048)) == {"file-thp-pte-aligned-16kB": 16,
                                                       "file-thp-pmd-aligned-2048kB": 2048}


def test_cont_blocks():
    # aligned 64K folio: four 16K blocks; unaligned by one page: virtual and physical
    # offsets differ, so no block
    assert count(folio_pages(16, 32, 4), cont_orders=(2,))["anon-cont-pte-aligned-16kB"] == 64
    assert count(folio_pages(17, 32, 4), cont_orders=(2,))["anon-cont-pte-aligned-16kB"] == 0
    # a run entering a folio at its 5th page and going on into the next folio: blocks
    # need not start at a head (3 in the first folio, 4 in the second)
    pages = folio_pages(20, 36, 4, 4) + folio_pages(32, 48, 4)
    assert count(pages, cont_orders=(2,))["anon-cont-pte-aligned-16kB"] == 48 + 64
    # two adjacent 16K folios never form a 32K block (a head inside the block)
    pages = folio_pages(16, 32, 2) + folio_pages(20, 36, 2)
    assert count(pages, cont_orders=(3,))["anon-cont-pte-aligned-32kB"] == 0
    # 100K of a 128K folio, starting at a 64K boundary: one 64K block
    pages = folio_pages(32, 64, 5, 0, 25)
    assert count(pages, cont_orders=(4,))["anon-cont-pte-aligned-64kB"] == 64


def test_cont_order_parsing():
    assert cont_order("64K") == 4 and cont_order("2M") == 9 and cont_order("8192") == 1
    assert cont_order("16k") == 2
    for bad in ("4K", "48K", "4M", "x", "", "-16K", "1.5M"):
        with pytest.raises(ValueError, match="--cont"):
            cont_order(bad)


def test_percent_matches_thpmaps_format():
    assert percent(2048, 4096) == " (50%)"
    assert percent(4, 4096) == " ( 0%)"
    assert percent(4096, 4096) == " (100%)"
    assert percent(5, 0) == ""


# ---------------------------------------------------------------- property test


def reference(pages, cont_orders=()) -> dict[str, int]:
    """thpmaps' definitions, page by page (kB, 4K pages, PMD order 9, no PMD mappings)."""
    thp = [p for p in pages if p[2] & THP]
    kind = [("anon" if p[2] & ANON else "file") for p in thp]
    runs, cur = [], []
    for i, p in enumerate(thp):
        if cur and not (p[0] == thp[i - 1][0] + 1 and p[1] == thp[i - 1][1] + 1):
            runs.append(cur)
            cur = []
        cur.append(i)
    if cur:
        runs.append(cur)
    out = dict.fromkeys(counter_labels(cont_orders), 0)
    for run in runs:
        heads = [i for i in run if thp[i][2] & HEAD]
        end = run[-1] + 1
        first = heads[0] if heads else end
        out[f"{kind[run[0]]}-thp-pte-partial"] += 4 * (first - run[0])
        if heads:
            h = heads[-1]
            if thp[h][1] + (1 << thp[h][3]) > thp[run[-1]][1] + 1:
                out[f"{kind[h - 1]}-thp-pte-partial"] += 4 * (end - h)
                heads, end = heads[:-1], h
        for j, h in enumerate(heads):
            nr = (heads[j + 1] if j + 1 < len(heads) else end) - h
            o = int(math.log2(nr))
            align = "aligned" if thp[h][0] % (1 << o) == 0 else "unaligned"
            if o >= 2:
                out[f"{kind[h]}-thp-pte-{align}-{4 << o}kB"] += 4 << o
        for c in cont_orders:
            n = 1 << c
            for i in run:
                block = range(i, i + n)
                if (thp[i][0] % n == 0 and thp[i][1] % n == 0 and i + n - 1 <= run[-1]
                        and not any(thp[k][2] & HEAD for k in block[1:])):
                    out[f"{kind[i]}-cont-pte-aligned-{4 << c}kB"] += 4 << c
    return out


@st.composite
def layouts(draw):
    """Folios laid out back to back in physical memory (naturally aligned), each mapped
    whole, in part, or not at all, virtually right after the previous one or elsewhere."""
    pages = []
    pfn, vpn = 0, 1 << 20
    for _ in range(draw(st.integers(1, 12))):
        order = draw(st.sampled_from([0, 2, 3, 4, 5, 9]))
        nr = 1 << order
        pfn = -(-pfn // nr) * nr + nr * draw(st.integers(0, 1))
        anon = draw(st.booleans()) if draw(st.integers(0, 4)) == 0 else True
        first = draw(st.integers(0, nr - 1)) if draw(st.booleans()) else 0
        last = draw(st.integers(first + 1, nr)) if draw(st.booleans()) else nr
        if draw(st.integers(0, 2)) == 0:
            vpn += draw(st.integers(1, 600))
        if draw(st.integers(0, 5)):
            pages += folio_pages(vpn, pfn, order, first, last, anon)
            vpn += last - first
        pfn += nr
    pages.sort()
    return pages


@settings(max_examples=300, deadline=None)
@given(layouts(), st.lists(st.sampled_from([1, 2, 3, 4, 9]), max_size=2, unique=True))
def test_counters_match_the_page_by_page_reference(pages, cont):
    assert count(pages, cont_orders=tuple(cont)) == reference(pages, tuple(cont))


# ---------------------------------------------------------------- occupancy


def _info(present, swap, guard, zero, order, kcount) -> PageInfo:
    n = len(present)
    b = lambda x: np.array(x, dtype=bool)  # noqa: E731
    head = np.where(b(present), np.arange(100, 100 + n), -1)
    return PageInfo(
        pid=0, start=0, end=n * 4096, entry=np.zeros(n, np.uint64), present=b(present),
        swap=b(swap), exclusive=np.zeros(n, bool), uffd_wp=np.zeros(n, bool),
        file=np.zeros(n, bool), soft_dirty=np.zeros(n, bool), guard=b(guard),
        pfn=np.where(b(present), head, 0), kflags=np.zeros(n, np.uint64),
        kcount=np.array(kcount, np.uint64), head=head.astype(np.int64),
        order=np.array(order, np.int8), anon=b(present), zero=b(zero),
        thp=np.zeros(n, bool), pmd_mapped=np.zeros(n, bool), folio_info=True,
        pmd_source="none")


def test_occupancy_classes():
    #          present  present(shared) zero   none   swap   guard
    info = _info([1, 1, 1, 1, 0, 0, 0],
                 [0, 0, 0, 0, 0, 1, 0],
                 [0, 0, 0, 0, 0, 0, 1],
                 [0, 0, 0, 1, 0, 0, 0],
                 [0, 0, 0, 0, -1, -1, -1],
                 [1, 2, 3, 40, 0, 0, 0])
    # the zero page's huge mapcount does not make it "shared": it is not present memory
    assert occupancy(info) == {"present": 3, "none": 1, "zero": 1, "swap": 2, "shared": 2}


# ---------------------------------------------------------------- eligibility


def host(values: dict[str, str]) -> Settings:
    s = Settings()
    s.apply(values)
    return s


def vma(start: int, end: int, flags: str = "rd wr mr mw me ac", *, path: str = "",
        perms: str = "rw-p", inode: int = 0, anon_kb: int = 4, swap_kb: int = 0) -> Vma:
    return Vma(start, end, perms, 0, "00:00", inode, path,
               {"Anonymous": anon_kb, "Swap": swap_kb}, tuple(flags.split()))


MADVISE = {"enabled": "madvise"}
ALWAYS = {"enabled": "always"}


@pytest.mark.parametrize(("v", "values", "expected"), [
    (vma(0, 4 * M, "rd wr hg"), MADVISE, 2),
    (vma(0, 4 * M), MADVISE, 0),
    (vma(0, 4 * M), ALWAYS, 2),
    (vma(0, 4 * M, "rd wr nh"), ALWAYS, 0),
    (vma(1 * M, 7 * M, "rd wr hg"), MADVISE, 2),          # rounded in at both ends
    (vma(2 * M, 4 * M), ALWAYS, 1),
    (vma(1 * M, 3 * M), ALWAYS, 0),                        # no whole PMD inside
    (vma(0, 4 * M, path="[heap]"), ALWAYS, 2),
    (vma(0, 4 * M, path="[anon:jit]"), ALWAYS, 2),
    (vma(0, 4 * M, path="/usr/lib/libx.so", inode=7), ALWAYS, 0),
    (vma(0, 4 * M, path="[vdso]"), ALWAYS, 0),
    (vma(0, 4 * M, perms="rw-s", path="/dev/zero (deleted)"), ALWAYS, 0),
    (vma(0, 4 * M, "rd wr pf"), ALWAYS, 0),                # VM_PFNMAP: VM_NO_KHUGEPAGED
    (vma(0, 4 * M, "rd wr io"), ALWAYS, 0),
    (vma(0, 4 * M, anon_kb=0), ALWAYS, 0),                 # never faulted: no anon_vma
    (vma(0, 4 * M, anon_kb=0, swap_kb=8), ALWAYS, 2),
    (vma(0, 4 * M, "rd wr hg"), {"enabled": "never"}, 0),
    # the PMD size set to always runs khugepaged whatever the top level says
    (vma(0, 4 * M), {"enabled": "never", "hugepages-2048kB/enabled": "always"}, 2),
    (vma(0, 4 * M), {"enabled": "always", "hugepages-2048kB/enabled": "never"}, 0),
    (vma(0, 4 * M, "rd wr hg"), {"enabled": "never", "hugepages-2048kB/enabled": "madvise"},
     2),
])
def test_khugepaged_eligible_pmds(v, values, expected):
    assert khugepaged_eligible_pmds(v, host(values)) == expected


def test_prctl_disable_and_no_thp_sysfs():
    assert khugepaged_eligible_pmds(vma(0, 4 * M), host(ALWAYS), thp_disabled=True) == 0
    assert khugepaged_eligible_pmds(vma(0, 4 * M), None) == 0


def test_rollup_sums_every_vma():
    def vr(counters, anon, occ, el):
        return VmaReport(0, 4096, "rw-p", "", "", bool(counters), anon, 0, counters,
                         dict(zip(("present", "none", "zero", "swap", "shared"), occ,
                                  strict=True)), el)

    p1 = ProcessReport(1, "a", [vr({"x": 4, "y": 0}, 8, (1, 2, 3, 4, 5), 1),
                                vr({}, 0, (0, 1, 0, 0, 0), 0)])
    p2 = ProcessReport(2, "b", [vr({"y": 16, "x": 4}, 32, (10, 0, 0, 0, 1), 2)])
    r = rollup([p1, p2])
    assert r == {"counters": {"x": 8, "y": 16}, "anonymous_kb": 40, "file_kb": 0,
                 "occupancy": {"present": 11, "none": 3, "zero": 3, "swap": 4, "shared": 6},
                 "khugepaged_eligible_pmds": 3}
