"""The executor table: where a scenario can run.

An executor is a function ``fn(scenario, *, policy, trace, **options) -> dict``
returning the result document of docs/scenarios.md ("Output").  ``model`` is
built in; ``host`` (the machine's kernel, as root; host_exec.py) and ``vm``
(Linux 7.2.13 under QEMU; vm_exec.py) plug in with :func:`register`.  An entry that is ``None`` is
known but not available yet: :func:`run_scenario` raises
:class:`ExecutorUnavailable`, which the CLI reports as one line with exit code 2.
"""

from __future__ import annotations

from collections.abc import Callable

from thpsim.scenario.model_exec import run_on_model
from thpsim.scenario.spec import Scenario
from thpsim.system import DEFAULT_POLICY

__all__ = ["EXECUTORS", "Executor", "ExecutorUnavailable", "register", "run_scenario"]

Executor = Callable[..., dict]


class ExecutorUnavailable(RuntimeError):
    """The executor cannot run here (not written yet, not root, no kernel ...)."""


def _model(scenario: Scenario, *, policy: str | None = None, trace: bool = False,
           **options) -> dict:
    if options:
        raise ExecutorUnavailable(f"model executor: unknown option(s) {', '.join(options)}")
    return run_on_model(scenario, policy or DEFAULT_POLICY, trace)


#: name -> executor function, or None while it is not available
EXECUTORS: dict[str, Executor | None] = {"model": _model, "host": None, "vm": None}


def register(name: str, fn: Executor) -> None:
    """Install (or replace) an executor."""
    EXECUTORS[name] = fn


def run_scenario(scenario: Scenario, on: str = "model", *, policy: str | None = None,
                 trace: bool = False, **options) -> dict:
    """Run ``scenario`` on executor ``on``; ``policy`` only means something to ``model``.

    Raises
    ------
    ExecutorUnavailable
        For an unknown executor or one that is not available yet.
    """
    if on not in EXECUTORS:
        raise ExecutorUnavailable(f"unknown executor {on!r} (choose from {', '.join(EXECUTORS)})")
    fn = EXECUTORS[on]
    if fn is None:
        raise ExecutorUnavailable(f"executor {on!r} is not available yet "
                                  "(implemented: model, host, vm)")
    return fn(scenario, policy=policy, trace=trace, **options)


import thpsim.scenario.host_exec  # noqa: E402  (registers "host"; imports lazily)
import thpsim.scenario.vm_exec  # noqa: E402, F401  (registers "vm"; imports QEMU code lazily)
