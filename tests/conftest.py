"""Shared fixtures: small checked systems and setting helpers."""

from __future__ import annotations

import pytest

from thpsim.system import System

PMD = 2 << 20  # 4K geometry


def set_sizes(sys: System, sizes_kb: dict[int, str], top: str | None = None) -> None:
    """Set per-size ``enabled`` (``{64: "always"}``) and optionally the top level."""
    if top is not None:
        sys.settings.write("enabled", top)
    for kb, val in sizes_kb.items():
        sys.settings.write(f"hugepages-{kb}kB/enabled", val)


@pytest.fixture
def system() -> System:
    """A 256 MiB 4K system with 64 MiB of swap that checks invariants after every call."""
    return System(memory="256M", swap="64M", check=True)


@pytest.fixture
def proc(system):
    return system.spawn("main")
