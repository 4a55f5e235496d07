"""Sweeps: a grid of simulation runs (``grid``) executed locally or on Dask (``runner``).
See docs/sweeps.md."""

from __future__ import annotations

__all__: list[str] = []
