"""Shared fixtures: small checked systems and setting helpers."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

from thpsim.system import System

# Property tests draw the same examples on every run by default, so that main stays
# green for reasons of the code alone; THPSIM_HYPOTHESIS=explore draws new ones (run it
# while developing: it is how the stateful and what-if tests found their bugs).
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("THPSIM_HYPOTHESIS", "repeatable"))

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
