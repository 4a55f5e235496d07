"""Scenarios: one TOML file, several executors (the model, the host kernel, a VM), a diff.

>>> from thpsim.scenario import load_scenario, run_scenario, diff_scenario
>>> sc = load_scenario("tests/scenarios/64k_only_mpn511.toml")      # doctest: +SKIP
>>> a = run_scenario(sc, "model", policy="linux-7.2")                # doctest: +SKIP
>>> b = run_scenario(sc, "model", policy="v11")                      # doctest: +SKIP
>>> print("\\n".join(diff_scenario(sc, a, b).differences))           # doctest: +SKIP

docs/scenarios.md describes the file format and the result document.
"""

from thpsim.scenario.diff import DiffReport, diff_results, diff_scenario
from thpsim.scenario.executors import EXECUTORS, ExecutorUnavailable, register, run_scenario
from thpsim.scenario.expect import check_expectations
from thpsim.scenario.model_exec import run_on_model
from thpsim.scenario.spec import Scenario, ScenarioError, load_scenario, parse_scenario

__all__ = [
    "EXECUTORS",
    "DiffReport",
    "ExecutorUnavailable",
    "Scenario",
    "ScenarioError",
    "check_expectations",
    "diff_results",
    "diff_scenario",
    "load_scenario",
    "parse_scenario",
    "register",
    "run_on_model",
    "run_scenario",
]
