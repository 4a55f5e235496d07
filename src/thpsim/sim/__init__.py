"""Simulation runs: the runner (:func:`simulate`), metrics and :class:`RunResult`."""

from __future__ import annotations

from thpsim.sim.result import RunResult, RunResultError
from thpsim.sim.runner import simulate

__all__ = ["RunResult", "RunResultError", "simulate"]
