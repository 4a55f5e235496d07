"""The layout format (thpsim.layout): picture alphabet, shared string, folio list,
partial windows and the summary notation of real-kernel.md §3.1."""

from __future__ import annotations

import json

import pytest

from tests.conftest import PMD, set_sizes
from thpsim.layout import ORDER_CHARS, PMDLayout, order_char, picture_counts
from thpsim.system import System

PG = 4096
BASE = 1 << 30


@pytest.fixture
def system() -> System:
    return System(memory="256M", swap="64M", check=True)


@pytest.fixture
def proc(system):
    return system.spawn()


def window(proc, addr=BASE, length=None):
    return proc.layout(addr, length).pmds[0]


def test_order_chars():
    assert ORDER_CHARS == "0123456789abcd"
    assert order_char(0) == "0" and order_char(9) == "9"
    assert order_char(10) == "a" and order_char(13) == "d"


def test_every_picture_character(system, proc):
    """., z, s, 0, a digit and x in one PTE-mapped window; H and Z in others."""
    set_sizes(system, {64: "always", 2048: "never"})
    a = proc.mmap(400 * PG, addr=BASE)  # pages 400..511 of the window are x
    proc.touch(a, pages=range(16))  # one 64K folio
    proc.madvise(a + 16 * PG, 16 * PG, "nohugepage")
    proc.touch(a + 16 * PG, pages=[0, 1])  # order 0
    proc.touch(a + 18 * PG, pages=[0, 1])
    proc.madvise(a + 18 * PG, 2 * PG, "pageout")  # swap
    proc.touch(a + 20 * PG, pages=[0, 1, 2], write=False)  # zero page
    w = window(proc)
    assert w.picture == "4" * 16 + "00" + "ss" + "zzz" + "." * 377 + "x" * 112
    assert picture_counts(w.picture) == {".": 377, "0": 2, "4": 16, "s": 2, "x": 112,
                                         "z": 3}
    set_sizes(system, {2048: "always"})
    b = proc.mmap(2 * PMD, addr=BASE + 4 * PMD)
    proc.touch(b, pages=[0])
    proc.touch(b + PMD, pages=[0], write=False)
    assert proc.layout(b, 2 * PMD).pictures() == ["H" * 512, "Z" * 512]


def test_layout_of_whole_mm_lists_each_vma_window(system, proc):
    a = proc.mmap(PMD, addr=BASE)
    b = proc.mmap(PG, addr=BASE + 3 * PMD)
    proc.touch(a, pages=[0])
    lay = proc.layout()
    assert [w.addr for w in lay.pmds] == [a, b]
    assert lay.pmds[0].picture == "H" * 512
    assert lay.pmds[1].picture == "." + "x" * 511


def test_partial_window_marks_outside_range_x(system, proc):
    system.settings.write("enabled", "never")
    a = proc.mmap(PMD, addr=BASE)
    proc.touch(a, PMD)
    w = window(proc, a + 100 * PG, 50 * PG)
    assert w.addr == BASE  # windows are PMD aligned
    assert w.picture == "x" * 100 + "0" * 50 + "x" * 362
    assert w.shared == "-" * 512
    assert [fl[0] for fl in w.folios] == list(range(100, 150))


def test_default_length_is_one_pmd_and_can_span_windows(system, proc):
    system.settings.write("enabled", "never")
    a = proc.mmap(2 * PMD, addr=BASE)
    proc.touch(a + 510 * PG, pages=[0, 1, 2, 3])
    lay = proc.layout(a + 510 * PG, 4 * PG)
    assert [w.addr for w in lay.pmds] == [BASE, BASE + PMD]
    assert lay.pmds[0].picture == "x" * 510 + "00"
    assert lay.pmds[1].picture == "00" + "x" * 510
    assert len(proc.layout(a).pmds) == 1


def test_shared_string_after_fork_and_cow(system, proc):
    system.settings.write("enabled", "never")
    a = proc.mmap(PMD, addr=BASE)
    proc.touch(a, pages=range(4))
    proc.touch(a + 4 * PG, pages=[0], write=False)
    child = proc.fork()
    child.touch(a, pages=[1])
    w = window(proc)
    assert w.shared[:6] == "S-SS--"  # the zero page is never 'S'
    assert window(child).shared[:6] == "S-SS--"


def test_shared_pmd_thp(system, proc):
    a = proc.mmap(PMD, addr=BASE)
    proc.touch(a, pages=[0])
    child = proc.fork()
    assert window(proc).shared == "S" * 512
    child.exit()
    assert window(proc).shared == "-" * 512


def test_folio_list_entries(system, proc):
    """[first_index, order, nr_mapped_in_this_pmd, pmd_mapped]."""
    set_sizes(system, {64: "always", 2048: "never"})
    a = proc.mmap(PMD, addr=BASE)
    proc.touch(a, pages=[0, 40])  # 64K folios at 0-15 and 32-47
    proc.madvise(a + 32 * PG, PG, "dontneed")  # 33-47 of the second remain
    proc.madvise(a + 100 * PG, PG, "nohugepage")
    proc.touch(a + 100 * PG, pages=[0])
    assert window(proc).folios == [[0, 4, 16, 0], [33, 4, 15, 0], [100, 0, 1, 0]]
    set_sizes(system, {2048: "always"})
    b = proc.mmap(PMD, addr=BASE + 2 * PMD)
    proc.touch(b, pages=[3])
    assert window(proc, b).folios == [[0, 9, 512, 1]]
    c = proc.mmap(PMD, addr=BASE + 4 * PMD)
    proc.touch(c, pages=[0], write=False)
    assert window(proc, c).folios == []  # the huge zero page is no folio entry


def test_folio_list_excludes_folios_starting_outside_range(system, proc):
    set_sizes(system, {64: "always", 2048: "never"})
    a = proc.mmap(PMD, addr=BASE)
    proc.touch(a, pages=[0, 16])
    w = window(proc, a + 8 * PG, 16 * PG)
    assert w.picture[:24] == "x" * 8 + "4" * 16
    assert w.folios == [[16, 4, 16, 0]]


def test_summary_notation(system, proc):
    set_sizes(system, {64: "always", 2048: "never"})
    a = proc.mmap(PMD, addr=BASE)
    proc.touch(a, 64 * PG)  # 0-63: four 64K folios
    proc.madvise(a + 64 * PG, PMD - 64 * PG, "nohugepage")
    proc.touch(a + 64 * PG, 32 * PG)  # 64-95: 32 order-0 folios
    proc.touch(a + 299 * PG, pages=[0])  # order 0 at 299
    proc.touch(a + 300 * PG, pages=[0, 1])
    proc.madvise(a + 300 * PG, 2 * PG, "pageout")  # swap at 300-301
    proc.touch(a + 302 * PG, pages=[0], write=False)  # zero page at 302
    w = window(proc)
    assert w.summary() == "0-63:o4x4 64-95:o0x32 299:o0 300-301:swap 302:zero"


def test_summary_pmd_hugezero_and_empty(system, proc):
    a = proc.mmap(3 * PMD, addr=BASE)
    proc.touch(a, pages=[0])
    proc.touch(a + PMD, pages=[0], write=False)
    lay = proc.layout(a, 3 * PMD)
    assert [w.summary() for w in lay.pmds] == ["0-511:o9", "0-511:hugezero", "empty"]


def test_summary_does_not_merge_across_gaps():
    w = PMDLayout(0, "0.0" + "." * 509, "-" * 512, [[0, 0, 1, 0], [2, 0, 1, 0]])
    assert w.summary() == "0:o0 2:o0"
    w = PMDLayout(0, "4" * 16 + "0" + "." * 495, "-" * 512,
                  [[0, 4, 16, 0], [16, 0, 1, 0]])
    assert w.summary() == "0-15:o4 16:o0"


def test_to_json_and_render(system, proc):
    a = proc.mmap(PMD, addr=BASE)
    proc.touch(a, pages=[0])
    proc.fork()
    lay = proc.layout(a)
    js = json.loads(json.dumps(lay.to_json()))
    assert js == [{"addr": BASE, "picture": "H" * 512, "shared": "S" * 512,
                   "folios": [[0, 9, 512, 1]]}]
    text = lay.render(width=256)
    lines = text.splitlines()
    assert lines[0] == f"PMD {BASE:#x}"
    assert lines[1] == "      0 " + "H" * 256 + "  " + "S" * 256
    assert lines[2].startswith("    256 H")
    assert len(lines) == 3
    assert lay.pmds[0].rows(128) == ["H" * 128] * 4
