"""VM-oracle tests: skipped without QEMU/busybox/the kernel, failed under THP_ORACLE=require."""

from __future__ import annotations

import os

import pytest

ORACLE_ENV = "THP_ORACLE"


def oracle_required() -> bool:
    """True when ``THP_ORACLE=require``: a missing VM prerequisite is an error, not a skip."""
    return os.environ.get(ORACLE_ENV, "").strip().lower() == "require"


def skip_or_fail(reason: str) -> None:
    """Skip with ``reason``, or fail with it under ``THP_ORACLE=require``."""
    if oracle_required():
        pytest.fail(f"{ORACLE_ENV}=require, but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def vm_kernel():
    """The verified, unpacked kernel with QEMU and busybox present -- or skip/fail."""
    from thpsim.vm.errors import VmError
    from thpsim.vm.qemu import require_vm

    try:
        return require_vm()
    except VmError as e:
        skip_or_fail(f"VM oracle unavailable: {e}")


@pytest.fixture(scope="session")
def kernel_dir():
    """The kernel package directory (no QEMU needed) -- or skip/fail."""
    from thpsim.vm.errors import VmUnavailable
    from thpsim.vm.kernel import find_kernel_dir

    try:
        return find_kernel_dir()
    except VmUnavailable as e:
        skip_or_fail(f"VM oracle unavailable: {e}")
