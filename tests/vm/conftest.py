"""VM-oracle tests: skipped without QEMU/busybox/the kernel, failed under THP_ORACLE=require."""

from __future__ import annotations

import pytest

from tests.oracle import ORACLE_ENV, oracle_required, skip_or_fail  # noqa: F401


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
