"""Page-size geometry (4K/16K/64K): the constants derived from PAGE_SHIFT, the
khugepaged defaults scaled with HPAGE_PMD_NR, and faults/layouts on 16K and 64K
systems."""

from __future__ import annotations

import pytest

from thpsim.mm.geometry import GEOM_4K, GEOM_16K, GEOM_64K, Geometry, geometry_for
from thpsim.system import System

K = 1024
M = 1024 * K


@pytest.mark.parametrize(
    ("geom", "ptrs", "pmd_order", "pmd_size", "shift"),
    [
        (GEOM_4K, 512, 9, 2 * M, 12),
        (GEOM_16K, 2048, 11, 32 * M, 14),
        (GEOM_64K, 8192, 13, 512 * M, 16),
    ],
)
def test_table_geometry(geom, ptrs, pmd_order, pmd_size, shift):
    assert geom.page_shift == shift
    assert geom.ptrs_per_pte == ptrs == geom.hpage_pmd_nr
    assert geom.pmd_order == pmd_order
    assert geom.pmd_size == pmd_size
    assert geom.anon_orders == tuple(range(2, pmd_order + 1))
    assert geom.max_page_order == max(10, pmd_order)


@pytest.mark.parametrize(
    ("geom", "none", "swap", "shared", "scan", "creep", "referenced"),
    [
        (GEOM_4K, 511, 64, 256, 4096, 255, 256),
        (GEOM_16K, 2047, 256, 1024, 16384, 1023, 1024),
        (GEOM_64K, 8191, 1024, 4096, 65536, 4095, 4096),
    ],
)
def test_khugepaged_defaults_scale(geom, none, swap, shared, scan, creep, referenced):
    assert geom.default_max_ptes_none == none
    assert geom.default_max_ptes_swap == swap
    assert geom.default_max_ptes_shared == shared
    assert geom.default_pages_to_scan == scan
    assert geom.creep_cap == creep
    assert geom.referenced_threshold == referenced


@pytest.mark.parametrize(("size", "none", "swap", "shared", "scan"),
                         [("4K", 511, 64, 256, 4096), ("16K", 2047, 256, 1024, 16384),
                          ("64K", 8191, 1024, 4096, 65536)])
def test_system_settings_use_scaled_defaults(size, none, swap, shared, scan):
    sys = System(memory="1G", page_size=size)
    s = sys.settings
    assert (s.max_ptes_none, s.max_ptes_swap, s.max_ptes_shared, s.pages_to_scan) == \
        (none, swap, shared, scan)
    assert s.read("khugepaged/max_ptes_none").strip() == str(none)


def test_size_names_per_geometry():
    assert GEOM_4K.size_name(4) == "64kB" and GEOM_4K.size_name(9) == "2048kB"
    assert GEOM_16K.size_name(2) == "64kB" and GEOM_16K.size_name(11) == "32768kB"
    assert GEOM_64K.size_name(2) == "256kB" and GEOM_64K.size_name(13) == "524288kB"
    assert GEOM_16K.order_of_kb(2048) == 7
    with pytest.raises(ValueError):
        GEOM_16K.order_of_kb(8)  # 8K is smaller than one 16K page
    with pytest.raises(ValueError):
        GEOM_4K.order_of_kb(48)


def test_sysfs_files_per_geometry():
    s16 = System(memory="256M", page_size="16K").settings
    assert s16.read("hugepages-32768kB/enabled").strip() == "always [inherit] madvise never"
    assert s16.read("hugepages-64kB/enabled").strip() == "always inherit madvise [never]"
    with pytest.raises(OSError):
        s16.read("hugepages-16kB/enabled")  # order 0 has no file
    assert s16.order_setting(11) == "inherit"


@pytest.mark.parametrize(
    ("arg", "expect"),
    [(4096, GEOM_4K), ("4K", GEOM_4K), ("16k", GEOM_16K), ("64KB", GEOM_64K),
     (65536, GEOM_64K), ("16384", GEOM_16K)],
)
def test_geometry_for(arg, expect):
    assert geometry_for(arg) == expect


def test_unsupported_page_size():
    with pytest.raises(ValueError):
        Geometry(8192)
    with pytest.raises(ValueError):
        geometry_for("8K")


def test_memory_must_hold_a_pmd():
    with pytest.raises(ValueError):
        System(memory="256M", page_size="64K")  # the PMD is 512M
    System(memory="512M", page_size="64K")


# --- 16K and 64K systems ----------------------------------------------------------------------
def test_16k_pmd_fault_split_and_layout():
    sys = System(memory="256M", page_size="16K", check=True)
    p = sys.spawn()
    pmd = 32 * M
    a = p.mmap(2 * pmd)
    assert a % pmd == 0
    p.touch(a, 1)
    p.touch(a + pmd, 1, write=False)
    lay = p.layout(a, 2 * pmd)
    assert [w.addr for w in lay.pmds] == [a, a + pmd]
    assert lay.pictures() == ["H" * 2048, "Z" * 2048]
    assert lay.pmds[0].folios == [[0, 11, 2048, 1]]
    assert lay.pmds[0].summary() == "0-2047:o11"
    assert p.rss_anon == 2048
    c = sys.counters.snapshot()
    assert c["vmstat"]["thp_fault_alloc"] == 1
    assert c["mthp"]["32768kB"]["anon_fault_alloc"] == 1
    # DONTNEED of one 16K page splits the PMD: the folio stays order 11 ('b')
    assert p.madvise(a, 16 * K, "dontneed") == 0
    assert p.layout(a).pictures()[0] == "." + "b" * 2047
    assert sys.counters.mthp_value(11, "split_deferred") == 1
    assert sys.counters.vmstat["thp_deferred_split_page"] == 1


def test_16k_mthp_fault_order_2_is_64k():
    sys = System(memory="256M", page_size="16K", check=True)
    sys.settings.write("hugepages-64kB/enabled", "always")
    sys.settings.write("hugepages-32768kB/enabled", "never")
    p = sys.spawn()
    a = p.mmap(32 * M)
    p.touch(a + 5 * 16 * K, 1)  # page 5: the 64K block is pages 4-7
    pic = p.layout(a).pictures()[0]
    assert pic[:9] == "....2222."
    assert p.rss_anon == 4
    assert sys.counters.mthp_value(2, "anon_fault_alloc") == 1


def test_16k_underused_threshold_scales_with_pmd_nr():
    """max_ptes_none 1023 (NR/2 - 1) on 16K: a PMD THP with 1024 zero pages is
    underused, with 1025 filled pages (NR - 1023) it is used."""
    sys = System(memory="256M", page_size="16K", check=True)
    sys.settings.write("khugepaged/max_ptes_none", "1023")
    p = sys.spawn()
    pmd = 32 * M
    a = p.mmap(2 * pmd)
    p.touch(a, pages=range(1024))
    p.touch(a + pmd, pages=range(1025))
    assert sys.shrink_deferred_split() == 1
    assert p.layout(a).pictures()[0] == "0" * 1024 + "z" * 1024
    assert p.layout(a + pmd).pictures()[0] == "H" * 2048


def test_64k_pmd_and_mthp_faults():
    sys = System(memory="1G", page_size="64K", check=True)
    p = sys.spawn()
    pmd = 512 * M
    a = p.mmap(pmd)
    assert a % pmd == 0
    p.touch(a, 1)
    assert p.layout(a).pictures()[0] == "H" * 8192
    assert p.rss_anon == 8192
    assert sys.counters.mthp_value(13, "anon_fault_alloc") == 1
    assert p.munmap(a, pmd) == 0
    sys.settings.write("hugepages-256kB/enabled", "always")
    sys.settings.write("hugepages-524288kB/enabled", "never")
    b = p.mmap(pmd)
    p.touch(b, pages=[0, 9])
    lay = p.layout(b).pmds[0]
    assert lay.picture[:13] == "2222....2222."
    assert lay.folios == [[0, 2, 4, 0], [8, 2, 4, 0]]
    assert lay.summary() == "0-3:o2 8-11:o2"
    assert sys.counters.mthp_value(2, "anon_fault_alloc") == 2


def test_64k_split_pmd_shows_order_13():
    sys = System(memory="1G", page_size="64K", check=True)
    p = sys.spawn()
    pmd = 512 * M
    a = p.mmap(pmd)
    p.touch(a, pmd)
    assert p.mprotect(a, 64 * K, "r") == 0
    assert p.layout(a).pictures()[0] == "d" * 8192
    assert sys.counters.vmstat["thp_split_pmd"] == 1
