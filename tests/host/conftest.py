"""Real-kernel tests: skipped without Linux/root/THP sysfs, failed under THP_ORACLE=require."""

from __future__ import annotations

import pytest

from tests.oracle import ORACLE_ENV, oracle_required, skip_or_fail  # noqa: F401
from thpsim.host.errors import HostUnavailable


def _host_reason() -> str | None:
    try:
        from thpsim.host.thp_sysfs import require_host

        require_host()
    except HostUnavailable as e:
        return str(e)
    except Exception as e:  # e.g. fcntl missing off Linux
        return f"host bridge unavailable: {e}"
    return None


@pytest.fixture
def host() -> None:
    """Skip (or fail under THP_ORACLE=require) unless the real kernel can be driven."""
    reason = _host_reason()
    if reason is not None:
        skip_or_fail(reason)


@pytest.fixture(scope="session", autouse=True)
def _host_state_guard():
    """Safety net: every THP knob and the swap list are as they were after the session.

    If a test left something changed, it is restored here and the session errors.
    """
    if _host_reason() is not None:
        yield
        return
    from thpsim.host import thp_sysfs
    from thpsim.host.swap import active_swaps

    before = thp_sysfs.snapshot()
    swaps = active_swaps()
    yield
    after = thp_sysfs.snapshot()
    problems = []
    if after != before:
        thp_sysfs.restore(before)
        thp_sysfs.verify(before)
        changed = sorted(k for k in before if after.get(k) != before[k])
        problems.append(f"THP knobs changed: {changed}")
    if active_swaps() != swaps:
        problems.append(f"swap list changed: {swaps} -> {active_swaps()}")
    if problems:
        pytest.fail("host state leaked out of the tests: " + "; ".join(problems), pytrace=False)


@pytest.fixture
def state_file(tmp_path) -> str:
    return str(tmp_path / "thp-state.json")
