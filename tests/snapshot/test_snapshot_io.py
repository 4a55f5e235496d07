"""Snapshot files: round trips, damaged files, standard-tool readability."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thpsim.snapshot import io as sio
from thpsim.snapshot.core import (
    HUGE_ZERO,
    OTHER,
    PRESENT,
    Snapshot,
    SnapshotError,
    SnapshotVma,
)
from thpsim.snapshot.io import load_snapshot, save_snapshot

PAGE = 4096


@st.composite
def snapshots(draw) -> Snapshot:
    """Random consistent snapshots: any VMAs, any per-page values validate() accepts."""
    nv = draw(st.integers(0, 4))
    vmas = []
    addr = draw(st.integers(0, 1 << 20)) * PAGE
    for _ in range(nv):
        addr += draw(st.integers(0, 600)) * PAGE
        size = draw(st.integers(1, 700)) * PAGE
        flags = " ".join(draw(st.lists(st.sampled_from(["rd", "wr", "mr", "hg", "nh", "ac"]),
                                       max_size=5)))
        vmas.append(SnapshotVma(addr, addr + size, flags,
                                draw(st.sampled_from([None, True, False])),
                                draw(st.text(max_size=12))))
        addr += size
    n = sum((v.end - v.start) // PAGE for v in vmas)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    state = rng.integers(0, OTHER + 1, n).astype(np.uint8)
    present = state == PRESENT
    # any int8 / int32 on non-present pages (exercises the encodings' extremes)
    order = rng.integers(-128, 128, n).astype(np.int8)
    order[present] = rng.integers(0, 10, int(present.sum()))
    fi = rng.integers(-(2**31), 2**31, n, dtype=np.int64).astype(np.int32)
    fi[present] = rng.integers(0, 1 << 20, int(present.sum())) % (1 << order[present].astype(
        np.int64))
    pmd = rng.random(n) < 0.3
    pmd &= present | (state == HUGE_ZERO)
    return Snapshot(
        vmas=vmas, state=state, order=order, folio_index=fi, pmd_mapped=pmd,
        mapcount=rng.integers(0, 65536, n).astype(np.uint16),
        exclusive=rng.random(n) < 0.5, page_size=PAGE, kernel=draw(st.text(max_size=20)),
        settings=draw(st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=10),
                                      max_size=4)),
        pid=draw(st.integers(0, 2**22)), comm=draw(st.text(max_size=15)),
        time=draw(st.floats(0, 2e9)),
        meta=draw(st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=30),
                                  max_size=3)))


def assert_equal(a: Snapshot, b: Snapshot) -> None:
    assert a.vmas == b.vmas
    for c in Snapshot.COLUMNS:
        x, y = getattr(a, c), getattr(b, c)
        assert x.dtype == y.dtype, c
        assert np.array_equal(x, y), c
    for f in ("page_size", "kernel", "settings", "pid", "comm", "time", "meta"):
        assert getattr(a, f) == getattr(b, f), f


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(snap=snapshots())
def test_round_trip(tmp_path, snap):
    p = tmp_path / "s.thpsnap"
    save_snapshot(snap, p)
    assert_equal(load_snapshot(p), snap)


def _small(n_pages: int = 1000) -> Snapshot:
    """Order-0 pages, then a 16-page folio, then none/zero/swap runs."""
    state = np.zeros(n_pages, np.uint8)
    order = np.full(n_pages, -1, np.int8)
    fi = np.zeros(n_pages, np.int32)
    state[:100] = PRESENT
    order[:100] = 0
    state[112:128] = PRESENT
    order[112:128] = 4
    fi[112:128] = np.arange(16)
    state[300:400] = 2
    state[500:520] = 4
    mc = np.where(state == PRESENT, 1, 0).astype(np.uint16)
    return Snapshot(
        vmas=[SnapshotVma(0x7F0000000000, 0x7F0000000000 + n_pages * PAGE, "rd wr hg", True,
                          "[heap]")],
        state=state, order=order, folio_index=fi, pmd_mapped=np.zeros(n_pages, bool),
        mapcount=mc, exclusive=state == PRESENT, kernel="6.18.0", pid=42, comm="x",
        time=1.5e9, settings={"enabled": "always"}, meta={"k": "v"})


def test_many_row_groups_and_progress(tmp_path, monkeypatch):
    monkeypatch.setattr(sio, "ROW_GROUP", 128)
    snap = _small(1000)
    p = tmp_path / "s.thpsnap"
    calls: list[tuple[int, int]] = []
    save_snapshot(snap, p, progress=lambda d, t: calls.append((d, t)))
    assert pq.ParquetFile(p).metadata.num_row_groups == 8  # ceil(1000 / 128)
    assert calls[-1] == (1000, 1000) and len(calls) == 8
    got: list[tuple[int, int]] = []
    assert_equal(load_snapshot(p, progress=lambda d, t: got.append((d, t))), snap)
    assert [d for d, _ in got] == [128 * i for i in range(1, 8)] + [1000]


def test_readable_by_pyarrow_alone(tmp_path):
    p = tmp_path / "s.thpsnap"
    save_snapshot(_small(), p)
    t = pq.read_table(p)
    assert t.column_names == list(Snapshot.COLUMNS)
    assert t.column("state").to_numpy()[:100].tolist() == [PRESENT] * 100
    assert t.column("folio_index").to_numpy()[112:128].tolist() == list(range(16))
    header = json.loads(pq.ParquetFile(p).metadata.metadata[b"thpsim.snapshot"])
    assert header["version"] == 1
    assert header["vmas"][0]["name"] == "[heap]"
    assert header["vmas"][0]["start"] == 0x7F0000000000


def test_empty_snapshot(tmp_path):
    snap = Snapshot([], *(np.zeros(0, Snapshot.DTYPES[c]) for c in Snapshot.COLUMNS))
    p = tmp_path / "e.thpsnap"
    save_snapshot(snap, p)
    assert_equal(load_snapshot(p), snap)


# ---------------------------------------------------------------- saving


def test_save_is_atomic_and_refuses_inconsistent(tmp_path):
    p = tmp_path / "s.thpsnap"
    save_snapshot(_small(), p)
    before = p.read_bytes()
    bad = _small()
    bad.state[0] = 9
    with pytest.raises(SnapshotError, match="state 9"):
        save_snapshot(bad, p)
    assert p.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["s.thpsnap"]  # no temp file left


def test_save_into_missing_directory(tmp_path):
    with pytest.raises(OSError):
        save_snapshot(_small(), tmp_path / "nope" / "s.thpsnap")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- damaged files


def _one_line_error(path, match: str) -> str:
    with pytest.raises(SnapshotError) as ei:
        load_snapshot(path)
    msg = str(ei.value)
    assert "\n" not in msg
    assert str(path) in msg
    assert match in msg, msg
    return msg


@pytest.fixture
def good(tmp_path):
    p = tmp_path / "good.thpsnap"
    save_snapshot(_small(), p)
    return p


@pytest.mark.parametrize("keep", [0, 3, 4, 100, -8, -1])
def test_truncated(tmp_path, good, keep):
    data = good.read_bytes()
    p = tmp_path / "t.thpsnap"
    p.write_bytes(data[:keep] if keep >= 0 else data[:len(data) + keep])
    msg = _one_line_error(p, "")
    assert "not a Parquet file" in msg or "damaged" in msg or "truncated" in msg


def test_every_flipped_byte_is_detected_or_harmless(tmp_path, good):
    """A flipped byte anywhere: either a SnapshotError or exactly the original data."""
    data = good.read_bytes()
    orig = load_snapshot(good)
    p = tmp_path / "f.thpsnap"
    detected = 0
    positions = range(0, len(data), 3)
    for i in positions:
        b = bytearray(data)
        b[i] ^= 0xFF
        p.write_bytes(bytes(b))
        try:
            snap = load_snapshot(p)
        except SnapshotError as e:
            assert "\n" not in str(e)
            detected += 1
            continue
        assert_equal(snap, orig)
    assert detected > len(positions) // 2


@pytest.mark.parametrize("col", range(6))
def test_flip_in_page_data(tmp_path, good, col):
    # the last byte of a column chunk is inside its (compressed) page data
    meta = pq.ParquetFile(good).metadata.row_group(0).column(col)
    start = meta.dictionary_page_offset or meta.data_page_offset
    data = bytearray(good.read_bytes())
    data[start + meta.total_compressed_size - 1] ^= 0x01
    p = tmp_path / "f.thpsnap"
    p.write_bytes(bytes(data))
    _one_line_error(p, "")


def test_not_parquet(tmp_path):
    p = tmp_path / "x.thpsnap"
    p.write_text("state,order\n1,0\n")
    _one_line_error(p, "not a Parquet file")
    p.write_bytes(b"")
    _one_line_error(p, "not a Parquet file")


def test_missing_file_and_directory(tmp_path):
    _one_line_error(tmp_path / "missing.thpsnap", "no such file")
    _one_line_error(tmp_path, "directory")


def test_parquet_without_header(tmp_path):
    p = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"state": pa.array([1, 2], pa.uint8())}), p)
    _one_line_error(p, "not a thpsim snapshot")


def _rewrite(src, dst, *, header_edit=None, table_edit=None, recheck=True) -> None:
    """Write a modified copy of a snapshot file; digests recomputed here from the data."""
    pf = pq.ParquetFile(src)
    kv = pf.metadata.metadata
    header = json.loads(kv[b"thpsim.snapshot"])
    table = pf.read()
    if table_edit is not None:
        table = table_edit(table)
    header["digests"] = {
        name: hashlib.blake2b(np.ascontiguousarray(table.column(name).to_numpy()).view(
            np.uint8).tobytes(), digest_size=16).hexdigest()
        for name in table.column_names}
    if header_edit is not None:
        header_edit(header)
    raw = json.dumps(header).encode()
    check = hashlib.blake2b(raw, digest_size=16).hexdigest().encode() if recheck else \
        kv[b"thpsim.snapshot.blake2b"]
    table = table.replace_schema_metadata({b"thpsim.snapshot": raw,
                                           b"thpsim.snapshot.blake2b": check})
    pq.write_table(table, dst)


def test_rewrite_helper_reproduces_a_loadable_file(tmp_path, good):
    p = tmp_path / "same.thpsnap"
    _rewrite(good, p)
    assert_equal(load_snapshot(p), _small())


def test_wrong_version(tmp_path, good):
    p = tmp_path / "v.thpsnap"
    _rewrite(good, p, header_edit=lambda h: h.update(version=2))
    _one_line_error(p, "version 2 is not supported")


def test_header_edited_without_checksum(tmp_path, good):
    p = tmp_path / "h.thpsnap"
    _rewrite(good, p, header_edit=lambda h: h.update(pid=43), recheck=False)
    _one_line_error(p, "header does not match its checksum")


def test_missing_column(tmp_path, good):
    p = tmp_path / "m.thpsnap"
    _rewrite(good, p, table_edit=lambda t: t.drop_columns(["mapcount"]))
    _one_line_error(p, "column 'mapcount' is missing")


def test_wrong_dtype(tmp_path, good):
    p = tmp_path / "d.thpsnap"

    def edit(t):
        i = t.column_names.index("mapcount")
        return t.set_column(i, "mapcount", t.column(i).cast(pa.int32()))

    _rewrite(good, p, table_edit=edit)
    _one_line_error(p, "column 'mapcount' has type int32")


def test_wrong_length(tmp_path, good):
    p = tmp_path / "l.thpsnap"
    _rewrite(good, p, table_edit=lambda t: t.slice(0, 999))
    _one_line_error(p, "999 rows, expected 1000")
    _rewrite(good, p, header_edit=lambda h: h["vmas"][0].update(end=h["vmas"][0]["end"] + PAGE))
    _one_line_error(p, "header says 1000 pages but the VMAs span 1001")


def test_inconsistent_values(tmp_path, good):
    p = tmp_path / "i.thpsnap"

    def edit(t):
        st_ = t.column("state").to_numpy().copy()
        st_[7] = 6
        return t.set_column(0, "state", pa.array(st_, pa.uint8()))

    _rewrite(good, p, table_edit=edit)
    _one_line_error(p, "page 7: state 6 is not one of 0..5")

    def edit2(t):
        fi = t.column("folio_index").to_numpy().copy()
        fi[112] = 16  # outside its order-4 folio
        return t.set_column(2, "folio_index", pa.array(fi, pa.int32()))

    _rewrite(good, p, table_edit=edit2)
    _one_line_error(p, "page 112: folio_index 16 outside a folio of order 4")


def test_column_checksum(tmp_path, good):
    p = tmp_path / "c.thpsnap"

    def edit(t):
        mc = t.column("mapcount").to_numpy().copy()
        mc[3] = 5
        return t.set_column(4, "mapcount", pa.array(mc, pa.uint16()))

    # keep the original digests: the data no longer matches them
    orig = json.loads(pq.ParquetFile(good).metadata.metadata[b"thpsim.snapshot"])["digests"]
    _rewrite(good, p, table_edit=edit, header_edit=lambda h: h.update(digests=orig))
    _one_line_error(p, "column 'mapcount' does not match its checksum")


def test_malformed_vma(tmp_path, good):
    p = tmp_path / "v.thpsnap"
    _rewrite(good, p, header_edit=lambda h: h["vmas"][0].pop("flags"))
    _one_line_error(p, "vma 0 in the header is malformed")
