"""Snapshot files: one Parquet file (docs/snapshot-format.md).

The page columns of :class:`~thpsim.snapshot.core.Snapshot` are one Parquet table
(row ``i`` = page ``i`` of the VMAs' concatenated spans), written in row groups of
:data:`ROW_GROUP` pages.  Everything else (format version, VMAs, kernel, settings,
...) is a JSON document in the Parquet key-value metadata under :data:`META_KEY`.

Damage detection does not rely on Parquet alone (pages have no checksum by default
and a flipped bit in a compressed page can decode to other valid values): the JSON
header holds a BLAKE2b digest of every column, and a second key holds the digest of
the header itself.  :func:`load_snapshot` checks both, then
:meth:`Snapshot.validate`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np

from thpsim.snapshot.core import FORMAT_VERSION, Snapshot, SnapshotError, SnapshotVma

__all__ = ["FORMAT_NAME", "META_KEY", "ROW_GROUP", "load_snapshot", "read_header",
           "save_snapshot"]

FORMAT_NAME = "thpsim-snapshot"
META_KEY = b"thpsim.snapshot"
CHECK_KEY = b"thpsim.snapshot.blake2b"
ROW_GROUP = 1 << 22  # pages per row group (4 Mi pages = 16 GiB of span, ~40 MB in memory)
COMPRESSION_LEVEL = 6  # zstd; measured in docs/snapshot-format.md

# Per-column Parquet encodings (measured, see the docs): small-int and flag columns use
# dictionary + RLE; folio_index counts 0,1,2,... inside folios, which delta encoding
# turns into runs of 1s.
_DICT_COLUMNS = ["state", "order", "pmd_mapped", "mapcount", "exclusive"]
_COLUMN_ENCODING = {"folio_index": "DELTA_BINARY_PACKED"}

ProgressFn = Callable[[int, int], None]


def _arrow_types() -> dict[str, Any]:
    import pyarrow as pa

    return {"state": pa.uint8(), "order": pa.int8(), "folio_index": pa.int32(),
            "pmd_mapped": pa.bool_(), "mapcount": pa.uint16(), "exclusive": pa.bool_()}


def _digest(h: Any) -> str:
    return h.hexdigest()


def _new_hashers() -> dict[str, Any]:
    return {c: hashlib.blake2b(digest_size=16) for c in Snapshot.COLUMNS}


def _update(hashers: dict[str, Any], col: str, a: np.ndarray) -> None:
    # bools hash as bytes 0/1; every dtype little-endian
    hashers[col].update(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"),
                                                       copy=False).view(np.uint8))


def _header(snap: Snapshot, digests: dict[str, str]) -> dict[str, Any]:
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "page_size": snap.page_size,
        "nr_pages": snap.nr_pages,
        "kernel": snap.kernel,
        "pid": snap.pid,
        "comm": snap.comm,
        "time": snap.time,
        "settings": dict(snap.settings),
        "meta": dict(snap.meta),
        "vmas": [{"start": v.start, "end": v.end, "flags": v.flags, "anon_vma": v.anon_vma,
                  "name": v.name} for v in snap.vmas],
        "columns": list(Snapshot.COLUMNS),
        "digests": digests,
    }


def save_snapshot(snap: Snapshot, path: str | os.PathLike[str], *,
                  progress: ProgressFn | None = None) -> None:
    """Write ``snap`` to ``path`` atomically (temp file in the same directory + rename).

    Parameters
    ----------
    snap : Snapshot
        Validated first; an inconsistent snapshot raises :class:`SnapshotError`.
    path : str or PathLike
        The output file (conventionally ``*.thpsnap``).
    progress : callable, optional
        Called as ``progress(pages_written, nr_pages)`` after each row group.

    Raises
    ------
    SnapshotError
        The snapshot is inconsistent.
    OSError
        The file cannot be written (the original, if any, is left untouched).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = os.fspath(path)
    snap.validate(where=path)
    types = _arrow_types()
    schema = pa.schema([(c, types[c]) for c in Snapshot.COLUMNS])
    hashers = _new_hashers()
    n = snap.nr_pages
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".thpsnap-", suffix=".tmp")
    os.close(fd)
    try:
        writer = pq.ParquetWriter(
            tmp, schema, compression="zstd", compression_level=COMPRESSION_LEVEL,
            use_dictionary=_DICT_COLUMNS, column_encoding=_COLUMN_ENCODING,
            write_statistics=False, store_schema=True)
        try:
            for a in range(0, max(n, 1), ROW_GROUP):
                b = min(n, a + ROW_GROUP)
                cols = []
                for c in Snapshot.COLUMNS:
                    arr = getattr(snap, c)[a:b]
                    _update(hashers, c, arr)
                    cols.append(pa.array(arr, type=types[c]))
                writer.write_table(pa.Table.from_arrays(cols, schema=schema),
                                   row_group_size=ROW_GROUP)
                if progress is not None:
                    progress(b, n)
            header = json.dumps(_header(snap, {c: _digest(h) for c, h in hashers.items()}),
                                sort_keys=True, separators=(",", ":")).encode()
            writer.add_key_value_metadata({
                META_KEY: header,
                CHECK_KEY: hashlib.blake2b(header, digest_size=16).hexdigest().encode()})
        finally:
            writer.close()
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; use what open() would
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------- loading


def _fail(path: str, what: str) -> SnapshotError:
    return SnapshotError(f"{path}: {what}")


def _open(path: str) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not os.path.exists(path):
        raise _fail(path, "no such file")
    if os.path.isdir(path):
        raise _fail(path, "is a directory, not a snapshot file")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise _fail(path, f"cannot read: {e.strerror}") from None
    if magic != b"PAR1":
        raise _fail(path, "not a thpsim snapshot (not a Parquet file)")
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise _fail(path, f"damaged or truncated Parquet file ({_short(e)})") from None


def _short(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return msg[:160] + ("..." if len(msg) > 160 else "")


def _check_header(path: str, pf: Any) -> dict[str, Any]:
    kv = pf.metadata.metadata or {}
    raw = kv.get(META_KEY)
    if raw is None:
        raise _fail(path, f"a Parquet file but not a thpsim snapshot (no {META_KEY.decode()!r} "
                          "metadata)")
    check = kv.get(CHECK_KEY)
    if check is None or hashlib.blake2b(raw, digest_size=16).hexdigest().encode() != check:
        raise _fail(path, "damaged: the snapshot header does not match its checksum")
    try:
        h = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _fail(path, "damaged: the snapshot header is not valid JSON") from None
    if not isinstance(h, dict) or h.get("format") != FORMAT_NAME:
        raise _fail(path, f"not a thpsim snapshot (format {h.get('format')!r})"
                    if isinstance(h, dict) else "not a thpsim snapshot (header is not an object)")
    v = h.get("version")
    if v != FORMAT_VERSION:
        raise _fail(path, f"snapshot format version {v!r} is not supported (this thpsim reads "
                          f"version {FORMAT_VERSION})")
    want = {"page_size": int, "nr_pages": int, "kernel": str, "pid": int, "comm": str,
            "time": (int, float), "settings": dict, "meta": dict, "vmas": list,
            "digests": dict}
    for key, typ in want.items():
        if not isinstance(h.get(key), typ) or isinstance(h.get(key), bool):
            raise _fail(path, f"header field {key!r} is missing or has the wrong type")
    return h


def _vmas(path: str, items: list[Any]) -> list[SnapshotVma]:
    out = []
    for i, v in enumerate(items):
        try:
            if not (isinstance(v["start"], int) and isinstance(v["end"], int)
                    and isinstance(v["flags"], str) and isinstance(v["name"], str)
                    and v["anon_vma"] in (None, True, False)):
                raise TypeError
            out.append(SnapshotVma(v["start"], v["end"], v["flags"], v["anon_vma"], v["name"]))
        except (KeyError, TypeError):
            raise _fail(path, f"vma {i} in the header is malformed") from None
    return out


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked JSON header of a snapshot file, without reading the pages."""
    path = os.fspath(path)
    return _check_header(path, _open(path))


def load_snapshot(path: str | os.PathLike[str], *,
                  progress: ProgressFn | None = None) -> Snapshot:
    """Read and validate a snapshot file.

    Parameters
    ----------
    path : str or PathLike
        A file written by :func:`save_snapshot`.
    progress : callable, optional
        Called as ``progress(pages_read, nr_pages)`` after each row group.

    Raises
    ------
    SnapshotError
        One line naming the file and what is wrong: missing, not Parquet, truncated,
        not a snapshot, unsupported version, missing column, wrong column type or
        length, checksum mismatch, or inconsistent values.
    """
    import pyarrow as pa

    path = os.fspath(path)
    pf = _open(path)
    h = _check_header(path, pf)
    vmas = _vmas(path, h["vmas"])
    types = _arrow_types()
    schema = pf.schema_arrow
    for c in Snapshot.COLUMNS:
        idx = schema.get_field_index(c)
        if idx < 0:
            raise _fail(path, f"column {c!r} is missing")
        if schema.field(idx).type != types[c]:
            raise _fail(path, f"column {c!r} has type {schema.field(idx).type}, expected "
                              f"{types[c]}")
    n = h["nr_pages"]
    span = sum((v.end - v.start) // h["page_size"] for v in vmas) if h["page_size"] > 0 else -1
    if n != span:
        raise _fail(path, f"header says {n} pages but the VMAs span {span}")
    if pf.metadata.num_rows != n:
        raise _fail(path, f"{pf.metadata.num_rows} rows, expected {n} (one per page of the "
                          "VMAs' span)")
    cols = {c: np.empty(n, dtype=Snapshot.DTYPES[c]) for c in Snapshot.COLUMNS}
    hashers = _new_hashers()
    pos = 0
    try:
        for g in range(pf.metadata.num_row_groups):
            t = pf.read_row_group(g, columns=list(Snapshot.COLUMNS))
            m = t.num_rows
            if pos + m > n:
                raise _fail(path, f"row group {g} runs past {n} rows")
            for c in Snapshot.COLUMNS:
                col = t.column(c)
                if col.null_count:
                    raise _fail(path, f"column {c!r} has null values in row group {g}")
                a = col.to_numpy()
                cols[c][pos : pos + m] = a
                _update(hashers, c, a.astype(Snapshot.DTYPES[c], copy=False))
            pos += m
            if progress is not None:
                progress(pos, n)
    except SnapshotError:
        raise
    except (pa.ArrowException, OSError, ValueError, MemoryError) as e:
        raise _fail(path, f"damaged page data ({_short(e)})") from None
    if pos != n:
        raise _fail(path, f"{pos} rows read, expected {n}")
    for c in Snapshot.COLUMNS:
        if h["digests"].get(c) != _digest(hashers[c]):
            raise _fail(path, f"damaged: column {c!r} does not match its checksum")
    snap = Snapshot(
        vmas=vmas, **cols, page_size=h["page_size"], kernel=h["kernel"],
        settings={str(k): str(v) for k, v in h["settings"].items()}, pid=h["pid"],
        comm=h["comm"], time=float(h["time"]),
        meta={str(k): str(v) for k, v in h["meta"].items()})
    snap.validate(where=path)
    return snap
