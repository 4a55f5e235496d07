"""Benchmark: synthetic snapshot generation, snapshot file size, save/load speed.

Run: ``.venv/bin/python benchmarks/bench_snapshot.py [--gib 64] [--encodings] [FILE ...]``

For a synthetic heap of ``--gib`` GiB (the docs' example mix) and every snapshot FILE
given (e.g. ``examples/snapshots/*.thpsnap``): generation time, save and load time,
file bytes per 4K page of VMA span, and peak RSS of this process.  ``--encodings``
also writes each snapshot with alternative Parquet settings and prints the size per
column, which is how the encodings in ``thpsim.snapshot.io`` were chosen.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

import numpy as np

from thpsim.snapshot.core import Snapshot
from thpsim.snapshot.io import _COLUMN_ENCODING, _DICT_COLUMNS, load_snapshot, save_snapshot
from thpsim.snapshot.synthetic import synthetic_snapshot

SPEC = ("heap:{gib}G,present=0.6,zero=0.05,swap=0.02,shared=0.01,"
        "folios=4k:0.5/64k:0.3/2m:0.2,seed=1")

VARIANTS = {
    "zstd-1, dictionary everywhere": dict(compression="zstd", compression_level=1),
    "zstd-6, plain": dict(compression="zstd", compression_level=6, use_dictionary=False),
    "zstd-6, dictionary everywhere": dict(compression="zstd", compression_level=6),
    "zstd-6, dictionary + delta (used)": dict(compression="zstd", compression_level=6,
                                              use_dictionary=_DICT_COLUMNS,
                                              column_encoding=_COLUMN_ENCODING),
    "zstd-9, dictionary + delta": dict(compression="zstd", compression_level=9,
                                       use_dictionary=_DICT_COLUMNS,
                                       column_encoding=_COLUMN_ENCODING),
    "uncompressed, dictionary + delta": dict(compression="none", use_dictionary=_DICT_COLUMNS,
                                             column_encoding=_COLUMN_ENCODING),
}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def encodings(snap: Snapshot, tmp: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from thpsim.snapshot.io import _arrow_types

    types = _arrow_types()
    t = pa.table({c: pa.array(getattr(snap, c), type=types[c]) for c in Snapshot.COLUMNS})
    n = max(snap.nr_pages, 1)
    path = os.path.join(tmp, "enc.parquet")
    for label, kw in VARIANTS.items():
        pq.write_table(t, path, row_group_size=1 << 22, write_statistics=False, **kw)
        md = pq.ParquetFile(path).metadata
        per = {md.row_group(0).column(i).path_in_schema:
               sum(md.row_group(g).column(i).total_compressed_size
                   for g in range(md.num_row_groups)) / n for i in range(md.num_columns)}
        cols = " ".join(f"{k} {v:.3f}" for k, v in per.items())
        print(f"    {label:36s} {os.path.getsize(path) / n:6.3f} B/page  ({cols})")


def measure(label: str, snap: Snapshot, tmp: str, gen_s: float | None, enc: bool) -> None:
    path = os.path.join(tmp, "s.thpsnap")
    t = time.perf_counter()
    save_snapshot(snap, path)
    save_s = time.perf_counter() - t
    t = time.perf_counter()
    back = load_snapshot(path)
    load_s = time.perf_counter() - t
    assert np.array_equal(back.state, snap.state)
    size = os.path.getsize(path)
    n = max(snap.nr_pages, 1)
    gen = f"gen {gen_s:6.2f} s  " if gen_s is not None else " " * 14
    print(f"{label:40s} {snap.nr_pages:>10} pages  {gen}save {save_s:6.2f} s  "
          f"load {load_s:6.2f} s  {size:>10} B  {size / n:.3f} B/page  "
          f"peak RSS {peak_rss_mib():.0f} MiB")
    if enc:
        encodings(snap, tmp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=int, default=64)
    ap.add_argument("--encodings", action="store_true")
    ap.add_argument("files", nargs="*")
    args = ap.parse_args()
    print(f"thpsim snapshot benchmark, numpy {np.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        for f in args.files:
            measure(os.path.basename(f), load_snapshot(f), tmp, None, args.encodings)
        spec = SPEC.format(gib=args.gib)
        t = time.perf_counter()
        snap = synthetic_snapshot(spec)
        gen_s = time.perf_counter() - t
        measure(f"synthetic {args.gib} GiB heap", snap, tmp, gen_s, args.encodings)


if __name__ == "__main__":
    main()
