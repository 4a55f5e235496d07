"""Real-kernel test policy shared by tests/host, tests/scenario_host and tests/vm.

A test that needs the real kernel (root, THP sysfs, QEMU) skips with a clear reason
where that is impossible, except under ``THP_ORACLE=require`` (set by ``.ci/run``),
where the same reason is a failure.
"""

from __future__ import annotations

import os

import pytest

ORACLE_ENV = "THP_ORACLE"


def oracle_required() -> bool:
    """True when ``THP_ORACLE=require``: a missing prerequisite is an error, not a skip."""
    return os.environ.get(ORACLE_ENV, "").strip().lower() == "require"


def skip_or_fail(reason: str) -> None:
    """Skip with ``reason``, or fail with it under ``THP_ORACLE=require``."""
    if oracle_required():
        pytest.fail(f"{ORACLE_ENV}=require, but {reason}", pytrace=False)
    pytest.skip(reason)
