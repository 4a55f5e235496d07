"""The vm executor: run scenarios on Linux 7.2.13 under QEMU (:mod:`thpsim.vm.qemu`).

One boot runs any number of scenarios (:func:`run_many_on_vm`): the scenario files'
TOML text goes into the guest's ``/files``, and a ``python3 -c`` program there loads
each one with :func:`thpsim.scenario.spec.load_scenario` and runs
:func:`thpsim.scenario.host_exec.run_on_host` on the guest kernel -- the host
executor, unchanged, with the guest as its host.  Each result document is printed
as one JSON line between per-scenario markers and parsed here; ``executor`` becomes
``"vm"`` and ``kernel_or_policy`` the guest's ``uname -r``.

Guest set-up (done by the guest program before the first scenario):

* ``/run`` is created (the host lock and state file live there; the initramfs has none).
* The worker interpreter is ``sys.executable`` (``/opt/py/bin/python3.X``) started
  with ``-I``, which ignores ``PYTHONHOME``; it finds its stdlib from its own path
  (``/opt/py/lib/python3.X``), and ``LD_LIBRARY_PATH=/lib`` (not affected by
  ``-I``) finds libpython.  The program checks this once by running it.
* **Swap**: the VM is booted with ``swap_mb=0``, so ``/init`` leaves ``zram0``
  untouched; a scenario with ``swap_mb`` gets it from ``run_on_host``'s own
  ``zram_swap`` on ``zram0`` (set up and reset per scenario, as on a host), and
  scenarios without ``swap_mb`` run with no swap at all, as on the model.

A scenario that fails in the guest yields ``{"error": "..."}`` in place of its
document in :func:`run_many_on_vm`'s list; :func:`run_on_vm` raises
:class:`~thpsim.scenario.executors.ExecutorUnavailable` for it.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from thpsim.scenario.executors import ExecutorUnavailable, register
from thpsim.scenario.spec import Scenario

__all__ = ["VM_TIMEOUT_BASE_S", "VM_TIMEOUT_PER_SCENARIO_S", "run_many_on_vm", "run_on_vm"]

#: hard timeout of a VM run: boot + this per scenario (QEMU TCG is slow)
VM_TIMEOUT_BASE_S = 60.0
VM_TIMEOUT_PER_SCENARIO_S = 120.0
_MARK = "@@THPSIM-SCENARIO"

# The guest program.  argv: nonce, trace flag ("0"/"1"), then scenario file names in /files.
_GUEST = r"""
import json, os, subprocess, sys, traceback
nonce, trace, names = sys.argv[1], sys.argv[2] == "1", sys.argv[3:]
os.makedirs("/run", exist_ok=True)
subprocess.run([sys.executable, "-I", "-S", "-c", "pass"], check=True)
from thpsim.scenario.spec import load_scenario
from thpsim.scenario.host_exec import run_on_host
for i, name in enumerate(names):
    try:
        sc = load_scenario(name)
        doc = run_on_host(sc, trace)
    except BaseException as e:
        traceback.print_exc()
        doc = {"error": f"{type(e).__name__}: {e}".splitlines()[0]}
    print(f"@@THPSIM-SCENARIO-BEGIN {nonce} {i}")
    print(json.dumps(doc))
    print(f"@@THPSIM-SCENARIO-END {nonce} {i}", flush=True)
"""


def _scenario_text(sc: Scenario) -> bytes:
    try:
        return Path(sc.path).read_bytes()
    except OSError as e:
        raise ExecutorUnavailable(f"vm executor: cannot read the scenario file {sc.path}: "
                                  f"{e.strerror}") from None


def _parse(stdout: str, nonce: str, n: int) -> list[dict | None]:
    out: list[dict | None] = [None] * n
    cur: int | None = None
    body: list[str] = []
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] == nonce and parts[0] == f"{_MARK}-BEGIN":
            cur, body = int(parts[2]), []
        elif len(parts) == 3 and parts[1] == nonce and parts[0] == f"{_MARK}-END":
            if cur is not None and 0 <= cur < n and str(cur) == parts[2]:
                try:
                    out[cur] = json.loads("".join(body))
                except ValueError as e:
                    out[cur] = {"error": f"corrupt result document: {e}"}
            cur = None
        elif cur is not None:
            body.append(line)
    return out


def run_many_on_vm(scenarios: list[Scenario], trace: bool = False, *,
                   timeout_s: float | None = None, **vm_opts: Any) -> list[dict]:
    """Run ``scenarios`` in order in one VM boot; one result document each.

    A scenario that failed in the guest (or never reported) gets ``{"error": msg}``.
    ``vm_opts`` go to :func:`thpsim.vm.qemu.run_in_vm` (``kernel_dir``, ``memory``,
    ``smp``).  The last run's :class:`~thpsim.vm.qemu.VmResult` is kept in
    ``run_many_on_vm.last`` (timings).

    Raises
    ------
    ExecutorUnavailable
        QEMU/busybox/the kernel are missing, or the VM run failed as a whole
        (timeout, the guest program crashed).
    """
    from thpsim.vm.errors import VmError
    from thpsim.vm.qemu import run_in_vm

    scenarios = list(scenarios)
    if not scenarios:
        return []
    files = {f"s{i:03d}.toml": _scenario_text(sc) for i, sc in enumerate(scenarios)}
    nonce = secrets.token_hex(8)
    argv = ["python3", "-c", _GUEST, nonce, "1" if trace else "0", *files]
    if timeout_s is None:
        timeout_s = VM_TIMEOUT_BASE_S + VM_TIMEOUT_PER_SCENARIO_S * len(scenarios)
    try:
        # swap_mb=0: /init leaves zram0 alone; run_on_host sets it up per scenario
        res = run_in_vm(argv, files=files, timeout_s=timeout_s, swap_mb=0, **vm_opts)
    except VmError as e:
        raise ExecutorUnavailable(f"vm executor: {e}") from None
    run_many_on_vm.last = res  # type: ignore[attr-defined]
    docs = _parse(res.stdout, nonce, len(scenarios))
    if all(d is None for d in docs):
        try:
            res.check()
        except VmError as e:
            raise ExecutorUnavailable(f"vm executor: {e}") from None
        raise ExecutorUnavailable("vm executor: the guest printed no result")
    out = []
    for sc, d in zip(scenarios, docs, strict=True):
        if d is None:
            why = "timed out" if res.timed_out else f"guest exited {res.exit_code}"
            d = {"error": f"no result ({why})"}
        elif "error" not in d:
            d["executor"] = "vm"
            d["kernel_or_policy"] = res.kernel_version
        d.setdefault("scenario", sc.name)
        out.append(d)
    return out


def run_on_vm(scenario: Scenario, policy: str | None = None, trace: bool = False,
              **opts: Any) -> dict:
    """The ``vm`` entry of the executor table: one scenario, one boot (``policy`` is ignored)."""
    (doc,) = run_many_on_vm([scenario], trace, **opts)
    if "executor" not in doc or "error" in doc:
        raise ExecutorUnavailable(f"vm executor: {scenario.name}: {doc.get('error')}")
    return doc


register("vm", run_on_vm)
