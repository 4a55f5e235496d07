"""The same sweep on a Dask cluster (a LocalCluster started here, reached by address)."""

from __future__ import annotations

import distributed
import pyarrow.parquet as pq
import pytest

from thpsim.commands import UsageError
from thpsim.sweep.grid import load_grid
from thpsim.sweep.runner import run_sweep

from .test_sweep_local import GRID, check_outputs


@pytest.fixture(scope="module")
def scheduler():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


def test_dask_sweep_matches_local(tmp_path, scheduler):
    p = tmp_path / "grid.toml"
    p.write_text(GRID)
    grid = load_grid(p)
    res = run_sweep(grid, tmp_path / "dask", scheduler=scheduler, progress=False)
    assert len(res.executed) == 8 and len(res.failed) == 4 and res.exit_code == 1
    rows = check_outputs(tmp_path / "dask", grid)
    again = run_sweep(grid, tmp_path / "dask", scheduler=scheduler, progress=False)
    assert len(again.skipped) == 4 and set(again.executed) == set(res.failed)
    # same cells, same seeds: the cluster computes what local processes compute
    local = run_sweep(grid, tmp_path / "local", jobs=1, progress=False)
    assert local.exit_code == 1
    lrows = {r["cell_id"]: r for r in pq.read_table(tmp_path / "local" / "summary.parquet")
             .to_pylist()}
    keys = ("rss_kb", "bloat_kb", "pmd_mapped_kb", "tlb_x86-64", "khugepaged_successes")
    for cid, r in rows.items():
        if r["status"] == "ok":
            assert [r[k] for k in keys] == [lrows[cid][k] for k in keys]


def test_unreachable_scheduler_is_a_usage_error(tmp_path):
    p = tmp_path / "grid.toml"
    p.write_text(GRID)
    with pytest.raises(UsageError, match="cannot connect"):
        run_sweep(load_grid(p), tmp_path / "x", scheduler="tcp://127.0.0.1:1",
                  progress=False, connect_timeout_s=1.0)
