"""The host executor (thpsim.scenario.host_exec) on the machine's kernel.

Result shape and values for a handful of scenarios (fault-path order choice, a
khugepaged PMD collapse, MADV_COLLAPSE 0/EINVAL, fork and the shared string, zram
and MADV_PAGEOUT, SIGSEGV, tracing), and a run killed with SIGKILL inside a
khugepaged wait: ``thpsim host restore`` then leaves every knob and the swap list
as they were.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import pytest

from tests.scenario_host.conftest import host_state, locked_host_state
from thpsim.cli import main
from thpsim.scenario import check_expectations, load_scenario, parse_scenario, run_scenario

CORPUS = Path(__file__).resolve().parents[1] / "scenarios"
SRC = Path(__file__).resolve().parents[2] / "src"


def scenario(text: str, name: str = "t"):
    return parse_scenario(tomllib.loads(f'name = "{name}"\n' + textwrap.dedent(text)),
                          f"<{name}>")


def host_run(sc, **kw) -> dict:
    t = time.monotonic()
    res = run_scenario(sc, "host", **kw)
    res["_seconds"] = time.monotonic() - t
    return res


def pmd(res: dict, label: str, region: str = "r", i: int = 0) -> dict:
    return res["snapshots"][label]["regions"][region]["pmds"][i]


# ------------------------------------------------------------------ without a host


def test_cli_host_unavailable_is_one_line_exit_2(monkeypatch, capsys):
    from thpsim.host import thp_sysfs
    from thpsim.host.errors import HostUnavailable

    def no_host(*a, **k):
        raise HostUnavailable("the host bridge needs root (THP sysfs writes)")

    monkeypatch.setattr(thp_sysfs, "require_host", no_host)
    ex = str(CORPUS / "fault_order_choice.toml")
    assert main(["scenario", "run", ex, "--on", "host"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "thpsim: error: --on host: the host bridge needs root (THP sysfs writes)"
    assert main(["scenario", "diff", ex, "--on", "host", "--vs", "model"]) == 2
    assert "\n" not in capsys.readouterr().err.strip()


def test_host_settings_overlay():
    from thpsim.scenario.host_exec import (
        FAST_PAGES_TO_SCAN,
        IDLE_SCAN_SLEEP_MS,
        host_run_settings,
    )

    try:
        sc = scenario('''
            [settings]
            "enabled" = "madvise"
            "khugepaged/scan_sleep_millisecs" = "10"
            "khugepaged/pages_to_scan" = "4096"
            [[region]]
            name = "r"
            pmds = 1
            [[step]]
            op = "write"
            region = "r"
            ''')
        v = host_run_settings(sc)
    except Exception as e:  # no THP sysfs here
        pytest.skip(f"no host knobs: {e}")
    assert v["enabled"] == "madvise"
    assert v["hugepages-2048kB/enabled"] == "inherit"  # the model's defaults
    # khugepaged's pace is the executor's: asleep between steps, fast passes when woken
    assert v["khugepaged/scan_sleep_millisecs"] == str(IDLE_SCAN_SLEEP_MS)
    assert v["khugepaged/pages_to_scan"] == str(FAST_PAGES_TO_SCAN)
    assert "anon_beside_full" not in v  # vendor knobs are left alone


# ------------------------------------------------------------------ on the host


def test_result_shape_matches_the_model(unchanged_host):
    sc = load_scenario(CORPUS / "fault_order_choice.toml")
    h = host_run(sc)
    m = run_scenario(sc, "model", policy="legacy")
    h.pop("_seconds")
    assert (h["executor"], h["kernel_or_policy"]) == ("host", os.uname().release)
    assert set(h) == set(m)
    assert [s.keys() for s in h["steps"]] == [s.keys() for s in m["steps"]]
    assert set(h["snapshots"]) == set(m["snapshots"])
    for label, snap in h["snapshots"].items():
        ms = m["snapshots"][label]
        assert set(snap) == set(ms) and snap["process"] == ms["process"]
        assert set(snap["counters"]) == {"vmstat", "mthp", "khugepaged"}
        assert set(snap["counters"]["khugepaged"]) == {"pages_collapsed", "full_scans"}
        for name, reg in snap["regions"].items():
            assert len(reg["pmds"]) == len(ms["regions"][name]["pmds"])
            for p in reg["pmds"]:
                assert set(p) == {"picture", "shared", "folios"}
                assert len(p["picture"]) == len(p["shared"]) == 512
                assert all(isinstance(f, list) and len(f) == 4 for f in p["folios"])
    assert json.loads(json.dumps(h)) == h
    assert isinstance(h["dmesg"], list)


def test_fault_path_order_choice(unchanged_host):
    """real-kernel.md §2: largest enabled order whose aligned block is all pte_none."""
    sc = load_scenario(CORPUS / "fault_order_choice.toml")
    res = host_run(sc)
    rep = check_expectations(sc, res, "legacy")
    assert rep.checked and rep.ok, rep.failures
    assert all(s["ret"] is None or s["errno"] is None for s in res["steps"])


def test_khugepaged_pmd_collapse_fast(unchanged_host):
    sc = scenario('''
        [settings]
        "enabled" = "madvise"
        [[region]]
        name = "r"
        pmds = 2
        [[step]]
        op = "madvise"
        region = "r"
        advice = "nohugepage"
        [[step]]
        op = "write"
        region = "r"
        pages = "0-511, 512-600"
        [[step]]
        op = "snapshot"
        label = "before"
        [[step]]
        op = "madvise"
        region = "r"
        advice = "hugepage"
        [[step]]
        op = "khugepaged"
        [[step]]
        op = "snapshot"
        label = "after"
        ''')
    res = host_run(sc)
    assert pmd(res, "before")["picture"] == "0" * 512
    assert pmd(res, "after")["picture"] == "H" * 512
    assert pmd(res, "after")["folios"] == [[0, 9, 512, 1]]
    assert pmd(res, "after", i=1)["picture"] == "H" * 512  # 89 present, max_ptes_none 511
    kh = res["steps"][4]
    assert kh["full_scans"] >= 2 and kh["timed_out"] is False
    c = res["snapshots"]["after"]["counters"]
    assert c["khugepaged"]["pages_collapsed"] >= 2
    assert c["vmstat"].get("thp_collapse_alloc", 0) >= 2
    assert res["_seconds"] < 5  # scan_sleep 10 ms, large pages_to_scan


def test_madv_collapse_rc0_and_einval(unchanged_host):
    sc = scenario('''
        [settings]
        "enabled" = "never"
        [[region]]
        name = "r"
        pmds = 1
        [[region]]
        name = "never_written"
        pmds = 1
        [[region]]
        name = "nohuge"
        pmds = 1
        [[step]]
        op = "write"
        region = "r"
        pages = "0-99"
        [[step]]
        op = "madvise"
        region = "r"
        advice = "collapse"
        [[step]]
        op = "madvise"
        region = "never_written"
        advice = "collapse"
        [[step]]
        op = "write"
        region = "nohuge"
        pages = "0"
        [[step]]
        op = "madvise"
        region = "nohuge"
        advice = "nohugepage"
        [[step]]
        op = "madvise"
        region = "nohuge"
        advice = "collapse"
        [[step]]
        op = "snapshot"
        label = "s"
        ''')
    res = host_run(sc)
    st = res["steps"]
    assert (st[1]["ret"], st[1]["errno"], st[1]["advice"]) == (0, None, "collapse")
    assert (st[2]["ret"], st[2]["errno"]) == (-1, "EINVAL")  # no anon_vma
    assert (st[5]["ret"], st[5]["errno"]) == (-1, "EINVAL")  # MADV_NOHUGEPAGE
    assert pmd(res, "s")["picture"] == "H" * 512
    assert pmd(res, "s", "never_written")["picture"] == "." * 512
    assert pmd(res, "s", "nohuge")["picture"] == "0" + "." * 511


def test_fork_shared_string(unchanged_host):
    sc = scenario('''
        [settings]
        "hugepages-2048kB/enabled" = "never"
        "hugepages-64kB/enabled" = "always"
        [[region]]
        name = "r"
        pmds = 1
        [[step]]
        op = "write"
        region = "r"
        pages = "0-63"
        [[step]]
        op = "fork"
        [[step]]
        op = "write"
        process = "child"
        region = "r"
        pages = "3, 16-31"
        [[step]]
        op = "snapshot"
        process = "child"
        label = "child"
        [[step]]
        op = "snapshot"
        label = "parent"
        [[step]]
        op = "exit"
        process = "child"
        [[step]]
        op = "snapshot"
        label = "exited"
        ''')
    res = host_run(sc)
    assert res["steps"][1] == {"op": "fork", "process": "main", "ret": 0, "errno": None,
                               "child": "child"}
    child = pmd(res, "child")
    # COW of a shared 64K folio gives order-0 copies (real-kernel.md §2)
    assert child["picture"][:32] == "4" * 3 + "0" + "4" * 12 + "0" * 16
    assert child["shared"][:64] == "SSS-" + "S" * 12 + "-" * 16 + "S" * 32
    parent = pmd(res, "parent")
    assert parent["picture"][:64] == "4" * 64
    # khugepaged's view is per folio: the parent's first 64K folio is still mapped by
    # the child (all pages but 3), the second one only by the parent
    assert parent["shared"][:64] == "S" * 16 + "-" * 16 + "S" * 32
    assert pmd(res, "exited")["shared"] == "-" * 512
    assert res["snapshots"]["child"]["process"] == "child"
    model = run_scenario(sc, "model", policy="legacy")
    for label in ("child", "parent", "exited"):
        assert pmd(res, label) == pmd(model, label), label


def test_zram_pageout_swap_entries(unchanged_host):
    sc = scenario('''
        swap_mb = 16
        [[region]]
        name = "r"
        pmds = 1
        [[step]]
        op = "madvise"
        region = "r"
        advice = "nohugepage"
        [[step]]
        op = "write"
        region = "r"
        pages = "0-63"
        [[step]]
        op = "madvise"
        region = "r"
        advice = "pageout"
        pages = "0-15, 32-35"
        [[step]]
        op = "snapshot"
        label = "out"
        [[step]]
        op = "read"
        region = "r"
        pages = "0"
        [[step]]
        op = "snapshot"
        label = "in"
        ''')
    res = host_run(sc)
    assert res["steps"][2]["ret"] == 0
    assert pmd(res, "out")["picture"][:64] == "s" * 16 + "0" * 16 + "ssss" + "0" * 28
    assert res["snapshots"]["out"]["counters"]["vmstat"].get("pswpout", 0) >= 20
    # swap-in faults bring pages back as order 0 (real-kernel.md §2)
    assert pmd(res, "in")["picture"][0] == "0"


def test_sigsegv_and_munmap(unchanged_host):
    sc = scenario('''
        [settings]
        "enabled" = "never"
        [[region]]
        name = "r"
        pmds = 1
        [[step]]
        op = "mprotect"
        region = "r"
        prot = "r"
        pages = "8-15"
        [[step]]
        op = "write"
        region = "r"
        pages = "0-31"
        [[step]]
        op = "read"
        region = "r"
        pages = "0-31"
        [[step]]
        op = "munmap"
        region = "r"
        pages = "256-511"
        [[step]]
        op = "read"
        region = "r"
        pages = "300"
        [[step]]
        op = "mprotect"
        region = "r"
        prot = "none"
        pages = "0-1"
        [[step]]
        op = "snapshot"
        label = "s"
        ''')
    res = host_run(sc)
    rets = [(s["ret"], s["errno"]) for s in res["steps"]]
    assert rets[:6] == [(0, None), (-1, "SIGSEGV"), (32, None), (0, None), (-1, "SIGSEGV"),
                        (0, None)]
    p = pmd(res, "s")["picture"]
    assert p[:32] == "0" * 8 + "z" * 24 and p[32:256] == "." * 224
    assert p[256:] == "x" * 256
    model = run_scenario(sc, "model", policy="legacy")
    assert [(s["ret"], s["errno"]) for s in model["steps"]] == rets
    assert pmd(model, "s") == pmd(res, "s")


def test_trace_is_filtered_and_cleaned_up(unchanged_host):
    sc = load_scenario(CORPUS / "selftest_collapse_max_ptes_swap_K.toml")
    res = host_run(sc, trace=True)
    lines = res["trace"]
    assert any("status=exceed_swap_pte" in ln and "unmapped=65" in ln for ln in lines)
    assert any("mm_collapse_huge_page:" in ln and "status=succeeded" in ln for ln in lines)
    # only khugepaged's lines about this scenario's mm: one mm pointer
    mms = {ln.split("mm=")[1].split(",")[0] for ln in lines if "mm=" in ln}
    assert len(mms) == 1
    per_snapshot = [ln for s in res["snapshots"].values() for ln in s["trace"]]
    assert set(per_snapshot) <= set(lines)
    assert not os.path.exists(f"/sys/kernel/tracing/instances/thpsim-{os.getpid()}")


# ------------------------------------------------------------------ killed runs

LONG_WAIT = '''
name = "long_wait"
description = "a khugepaged wait that cannot end in time: the run is killed inside it"
swap_mb = 16

[settings]
"enabled" = "madvise"
"khugepaged/max_ptes_none" = "100"

[[region]]
name = "r"
pmds = 1

[[step]]
op = "write"
region = "r"
pages = "0-63"

[[step]]
op = "madvise"
region = "r"
advice = "pageout"
pages = "0-7"

[[step]]
op = "fork"

[[step]]
op = "khugepaged"
full_scans = 1000000
timeout_s = 120

[[step]]
op = "snapshot"
label = "never"
'''


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from thpsim.cli import main; "
            "sys.exit(main(sys.argv[1:]))", *args]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(SRC), str(SRC.parent), os.environ.get("PYTHONPATH", "")])}


def _descendants(pid: int) -> set[int]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    out, todo = set(), [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.add(k)
            todo.append(k)
    return out


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_inside_khugepaged_wait_restores(sig, unchanged_host, tmp_path):
    before = unchanged_host
    f = tmp_path / "long_wait.toml"
    f.write_text(LONG_WAIT)
    proc = subprocess.Popen(_cli("scenario", "run", str(f), "--on", "host", "--trace",
                                 str(tmp_path / "trace.txt")),
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # inside the wait: the fork child exists, knobs and zram are set up
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            names = {_comm(p) for p in _descendants(proc.pid)}
            if "child" in names and "/dev/zram0" in host_state()["swaps"]:
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        else:
            pytest.fail("the run never reached its khugepaged wait")
        time.sleep(0.5)  # the steps before the wait take milliseconds
        during = host_state()
        assert during["knobs"]["khugepaged/max_ptes_none"] == "100"
        assert during["knobs"]["khugepaged/scan_sleep_millisecs"] == "10"
        assert during["state_file"] and proc.poll() is None
        helpers = _descendants(proc.pid)  # worker, holder, anchor, janitor
        assert {"main", "child", "thpsim-anchor"} <= {_comm(p) for p in helpers}
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -sig if sig == signal.SIGKILL else proc.returncode == 143, err
    if sig == signal.SIGKILL:
        r = subprocess.run(_cli("host", "restore"), env=_env(), capture_output=True,
                           text=True, timeout=90)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("restored THP settings from ")
    # the janitor (SIGKILL) or the supervisor (SIGTERM) removed swap and tracefs
    assert locked_host_state() == before
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in helpers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in helpers if _alive(p)], "helper processes outlived the run"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_cli_run_and_diff_on_host(unchanged_host, capsys):
    ex = str(CORPUS / "64k_only_mpn511.toml")
    assert main(["scenario", "run", ex, "--on", "host"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"scenario 64k_only_mpn511 on host:{os.uname().release}: ")
    # --policy names the model side when only --vs is the model
    assert main(["scenario", "diff", ex, "--on", "host", "--vs", "model",
                 "--policy", "legacy"]) == 0
    assert capsys.readouterr().out.strip() == \
        f"scenario 64k_only_mpn511: host:{os.uname().release} vs model:legacy: equal"
    # the 7.2 model collapses the 64K blocks, the host does not: exit 1
    assert main(["scenario", "diff", ex, "--on", "host", "--vs", "model",
                 "--policy-vs", "linux-7.2"]) == 1
    assert "vs model:linux-7.2: " in capsys.readouterr().out
