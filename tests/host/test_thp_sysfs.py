"""The host's THP knobs: snapshot/apply/restore/verify on the real kernel."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from thpsim.host import thp_sysfs as t
from thpsim.host.errors import HostBusy, HostUnavailable, SettingsMismatch
from thpsim.mm.settings import Settings

pytestmark = pytest.mark.usefixtures("host")


def changed_values(orig: dict[str, str]) -> dict[str, str]:
    """Values that differ from ``orig`` in several kinds of knob (vendor knobs untouched)."""
    out = {
        "enabled": "never" if orig["enabled"] != "never" else "madvise",
        "defrag": "defer" if orig["defrag"] != "defer" else "madvise",
        "use_zero_page": "0" if orig["use_zero_page"] != "0" else "1",
        "khugepaged/max_ptes_none": str((int(orig["khugepaged/max_ptes_none"]) + 1) % 512),
        "khugepaged/scan_sleep_millisecs": str(int(orig["khugepaged/scan_sleep_millisecs"]) + 1),
        "khugepaged/defrag": "0" if orig["khugepaged/defrag"] != "0" else "1",
    }
    if "hugepages-64kB/enabled" in orig:
        out["hugepages-64kB/enabled"] = (
            "always" if orig["hugepages-64kB/enabled"] != "always" else "never")
    return out


def test_snapshot_lists_the_knobs():
    snap = t.snapshot()
    for k in ("enabled", "defrag", "use_zero_page", "hugepages-2048kB/enabled",
              "khugepaged/max_ptes_none", "khugepaged/pages_to_scan"):
        assert k in snap
    assert snap["enabled"] in ("always", "madvise", "never")
    assert snap["khugepaged/max_ptes_none"].isdigit()
    # counters and read-only files are not knobs
    for k in ("hpage_pmd_size", "khugepaged/full_scans", "khugepaged/pages_collapsed"):
        assert k not in snap
    assert not any("/stats/" in k for k in snap)
    assert "hugepages-8kB/enabled" not in snap  # no anon 8kB size
    if os.path.exists(os.path.join(t.THP_DIR, "anon_beside_full")):
        assert "anon_beside_full" in snap  # unknown vendor knobs are recorded too


def test_parse_value():
    assert t.parse_value("always [madvise] never\n") == "madvise"
    assert t.parse_value("511\n") == "511"


def test_model_defaults_are_the_model_values_known_to_the_host():
    snap = t.snapshot()
    d = t.model_defaults()
    model = Settings().as_dict()
    assert d == {k: v for k, v in model.items() if k in snap}
    assert d["enabled"] == "always" and d["hugepages-2048kB/enabled"] == "inherit"
    assert "anon_beside_full" not in d


def test_apply_restore_verify_round_trip():
    orig = t.snapshot()
    new = changed_values(orig)
    try:
        written = t.apply(new)
        assert set(written) == set(new)
        now = t.snapshot()
        for k, v in new.items():
            assert now[k] == v
        with pytest.raises(SettingsMismatch) as ei:
            t.verify(orig)
        assert "khugepaged/max_ptes_none" in ei.value.mismatches
    finally:
        t.restore(orig)
    t.verify(orig)
    assert t.snapshot() == orig
    assert t.apply(orig) == []  # nothing to write when already right


def test_apply_errors_are_one_line_and_name_the_path():
    orig = t.snapshot()
    with pytest.raises(t.SysfsWriteError) as ei:
        t.apply({"enabled": "sometimes"})
    msg = str(ei.value)
    assert "\n" not in msg and "/sys/kernel/mm/transparent_hugepage/enabled" in msg
    assert "sometimes" in msg
    with pytest.raises(t.SysfsWriteError, match="no_such_knob"):
        t.apply({"no_such_knob": "1"})
    with pytest.raises(t.SysfsWriteError, match="full_scans"):
        t.apply({"khugepaged/full_scans": "1"})
    assert t.snapshot() == orig


def test_context_manager_restores_and_removes_state_file(state_file):
    orig = t.snapshot()
    new = changed_values(orig)
    with t.host_thp_settings(new, state_file=state_file) as saved:
        assert saved == orig
        doc = t.read_state_file(state_file)
        assert doc["values"] == orig and doc["kernel"] == os.uname().release
        now = t.snapshot()
        assert all(now[k] == v for k, v in new.items())
    assert not os.path.exists(state_file)
    assert t.snapshot() == orig


def test_context_manager_restores_after_an_exception(state_file):
    orig = t.snapshot()
    with pytest.raises(RuntimeError, match="boom"), \
            t.host_thp_settings(changed_values(orig), state_file=state_file):
        raise RuntimeError("boom")
    assert not os.path.exists(state_file)
    assert t.snapshot() == orig


def test_failed_apply_is_undone(state_file):
    orig = t.snapshot()
    bad = {**changed_values(orig), "defrag": "bogus"}
    with pytest.raises(t.SysfsWriteError, match="defrag"), \
            t.host_thp_settings(bad, state_file=state_file):
        pass
    assert t.snapshot() == orig
    assert not os.path.exists(state_file)


def test_refuses_to_overwrite_a_stale_state_file(state_file):
    orig = t.snapshot()
    t.write_state_file(state_file, orig)
    with pytest.raises(HostUnavailable, match="host restore"), \
            t.host_thp_settings({"enabled": "never"}, state_file=state_file):
        pass
    assert t.snapshot() == orig
    assert t.restore_from_state_file(state_file) == []
    assert not os.path.exists(state_file)


def test_lock_excludes_other_processes(tmp_path):
    lock = str(tmp_path / "lock")
    code = textwrap.dedent(f"""
        import sys
        from thpsim.host.thp_sysfs import host_lock
        from thpsim.host.errors import HostBusy
        try:
            with host_lock({lock!r}, timeout=0.2):
                sys.exit(0)
        except HostBusy as e:
            print(e)
            sys.exit(3)
    """)
    with t.host_lock(lock), t.host_lock(lock):  # re-entrant in one process
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 3, r.stderr
        assert f"pid {os.getpid()}" in r.stdout
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert issubclass(HostBusy, HostUnavailable) and HostUnavailable.exit_code == 2


_RUNNER = textwrap.dedent("""
    import json, sys, time
    from thpsim.host.thp_sysfs import host_thp_settings
    with host_thp_settings(json.loads(sys.argv[1]), state_file=sys.argv[2]):
        print("READY", flush=True)
        time.sleep(60)
    print("NOT REACHED", flush=True)
""")


def _start_runner(values: dict[str, str], state_file: str,
                  sigint: Any = signal.SIG_DFL) -> subprocess.Popen:
    """The runner with SIGINT at ``sigint`` from the start (a job started in the
    background by a shell inherits SIG_IGN, whatever pytest itself had)."""
    p = subprocess.Popen([sys.executable, "-c", _RUNNER, json.dumps(values), state_file],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))
    line = p.stdout.readline()
    if line.strip() != "READY":
        p.kill()
        p.wait()
        pytest.fail(f"runner did not start: {line!r} {p.stderr.read()}")
    return p


def test_sigkill_leaves_a_state_file_that_restore_undoes(state_file):
    orig = t.snapshot()
    new = changed_values(orig)
    p = _start_runner(new, state_file)
    try:
        now = t.snapshot()
        assert all(now[k] == v for k, v in new.items())
    finally:
        p.kill()
        p.wait(timeout=30)
        p.stdout.close()
        p.stderr.close()
        if not os.path.exists(state_file):  # should not happen; do not leave the host changed
            t.restore(orig)
    try:
        assert os.path.exists(state_file)
        assert t.read_state_file(state_file)["values"] == orig
        assert t.snapshot() != orig
        written = t.restore_from_state_file(state_file)
        assert set(written) == set(new)
    finally:
        if t.snapshot() != orig:
            t.restore(orig)
    after = t.snapshot()
    for k in orig:
        assert after[k] == orig[k], k
    assert not os.path.exists(state_file)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_triggers_the_restore(state_file, sig):
    orig = t.snapshot()
    p = _start_runner(changed_values(orig), state_file)
    try:
        p.send_signal(sig)
        rc = p.wait(timeout=30)
        out, err = p.communicate()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if t.snapshot() != orig:
            t.restore(orig)
            pytest.fail(f"signal {sig.name} did not restore the knobs")
    assert "NOT REACHED" not in out
    if sig == signal.SIGTERM:
        assert rc == 128 + signal.SIGTERM, err
    else:
        assert rc in (-signal.SIGINT, 128 + signal.SIGINT, 1), err
        assert "KeyboardInterrupt" in err
    assert not os.path.exists(state_file)
    assert t.snapshot() == orig


def test_ignored_sigint_keeps_the_knobs_until_the_block_ends(state_file):
    """A process that ignores SIGINT (nohup, a background job) is not interrupted by
    it, so the knobs must stay applied; SIGTERM then still restores them."""
    orig = t.snapshot()
    new = changed_values(orig)
    p = _start_runner(new, state_file, sigint=signal.SIG_IGN)
    try:
        p.send_signal(signal.SIGINT)
        with pytest.raises(subprocess.TimeoutExpired):
            p.wait(timeout=1)
        now = t.snapshot()
        assert all(now[k] == v for k, v in new.items())
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
        p.stderr.close()
        if t.snapshot() != orig:
            t.restore(orig)
            pytest.fail("the knobs were not restored")
    assert not os.path.exists(state_file)


def test_cli_restore(state_file, capsys):
    assert t.cli_restore(state_file) == 0
    assert "nothing to restore" in capsys.readouterr().out
    orig = t.snapshot()
    t.write_state_file(state_file, orig)
    try:
        t.apply({"khugepaged/max_ptes_none": changed_values(orig)["khugepaged/max_ptes_none"]})
    finally:
        assert t.cli_restore(state_file) == 0
    assert "khugepaged/max_ptes_none" in capsys.readouterr().out
    assert t.snapshot() == orig and not os.path.exists(state_file)
