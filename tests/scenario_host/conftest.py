"""Host-executor tests: skipped without Linux/root/THP sysfs, failed under THP_ORACLE=require.

The skip-or-fail logic and the session-wide safety net (every THP knob and the swap
list as they were) are those of tests/host/conftest.py; here every test is also
checked on its own: knobs, swaps and the tracefs mount are the same after it.
"""

from __future__ import annotations

import os

import pytest

from tests.host.conftest import (  # noqa: F401  (fixtures re-exported for this directory)
    _host_reason,
    _host_state_guard,
    host,
    oracle_required,
    skip_or_fail,
)


def host_state() -> dict:
    """Knobs, active swaps, zram0 size, tracefs mounts and a leftover state file."""
    from thpsim.host import thp_sysfs
    from thpsim.host.swap import active_swaps

    with open("/proc/mounts") as f:
        tracefs = sorted(ln.split()[1] for ln in f if ln.split()[2:3] == ["tracefs"])
    zram = None
    if os.path.exists("/sys/block/zram0/disksize"):
        with open("/sys/block/zram0/disksize") as f:
            zram = f.read().strip()
    return {"knobs": thp_sysfs.snapshot(), "swaps": active_swaps(), "zram0": zram,
            "tracefs": tracefs,
            "state_file": os.path.exists(thp_sysfs.DEFAULT_STATE_FILE)}


def locked_host_state() -> dict:
    """:func:`host_state` under the host lock: never the temporary knobs of a run that
    another test session has in progress."""
    from thpsim.host.thp_sysfs import host_lock

    with host_lock(timeout=120):
        return host_state()


@pytest.fixture
def unchanged_host(host):  # noqa: F811  (the fixture imported above)
    """The host (see ``host``), and a check that the test left it as it found it."""
    before = locked_host_state()
    yield before
    assert locked_host_state() == before
