"""``whatif`` against the real kernel: predict, then let the host's khugepaged do it.

A child populates four PMDs with order-0 pages under MADV_NOHUGEPAGE (300, 200, 512
and 257 present pages) and is captured.  The prediction is made for the layout as it is
about to become -- the same snapshot with the VMA marked ``hg``, which the child's
``MADV_HUGEPAGE`` then makes true -- under ``legacy`` (the host's pre-mTHP khugepaged)
with ``max_ptes_none`` 256.  Then the host's khugepaged runs (fast settings) and the
child is captured again: the PMD-mapped windows, the collapses and RSS must be what
``whatif`` said.  Independently of the model, the rule "collapse when at most 256 PTEs
are none" gives PMDs 0, 2 and 3.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import time

from tests.snapshot.test_snapshot_capture import (  # noqa: F401  (host, thp: fixtures)
    MADV_HUGEPAGE,
    MADV_NOHUGEPAGE,
    NR,
    PAGE,
    PMD,
    _libc,
    host,
    thp,
    write,
)
from thpsim.snapshot.capture import capture
from thpsim.snapshot.core import PRESENT
from thpsim.whatif.run import Combo, whatif

COUNTS = (300, 200, 512, 257)
KNOBS = {"enabled": "madvise", "khugepaged/max_ptes_none": "256",
         "khugepaged/scan_sleep_millisecs": "10", "khugepaged/pages_to_scan": "65536"}


def _child(cmd_r: int, rep_w: int) -> None:
    """Populate, report the address, MADV_HUGEPAGE on 'h', exit on EOF."""
    raw = _libc.mmap(None, 6 * PMD, 3, 0x22, -1, 0)
    a = (raw + PMD - 1) // PMD * PMD
    _libc.madvise(a, 4 * PMD, MADV_NOHUGEPAGE)
    for k, n in enumerate(COUNTS):
        write(a + k * PMD, range(n))
    os.write(rep_w, f"{a}\n".encode())
    while os.read(cmd_r, 1) == b"h":
        rc = _libc.madvise(a, 4 * PMD, MADV_HUGEPAGE)
        os.write(rep_w, f"{rc if rc == 0 else ctypes.get_errno()}\n".encode())


def _windows(snap, a):
    """Per PMD of the region: PMD-mapped?, present pages."""
    off = snap.vma_offsets()
    for i, v in enumerate(snap.vmas):
        if v.start <= a < v.end:
            s = int(off[i]) + (a - v.start) // PAGE
            pm = snap.pmd_mapped[s : s + 4 * NR].reshape(4, NR)
            pr = (snap.state[s : s + 4 * NR] == PRESENT).reshape(4, NR)
            return pm.all(axis=1), pr.sum(axis=1)
    raise AssertionError("region not captured")


def _only_vma(snap, a):
    """``snap`` cut down to the VMA holding ``a``, marked ``hg`` instead of ``nh``."""
    off = snap.vma_offsets()
    (i,) = [i for i, v in enumerate(snap.vmas) if v.start <= a < v.end]
    cols = {c: getattr(snap, c)[off[i] : off[i + 1]].copy() for c in snap.COLUMNS}
    vma = dataclasses.replace(snap.vmas[i], flags=snap.vmas[i].flags.replace("nh", "hg"))
    out = dataclasses.replace(snap, vmas=[vma], **cols)
    out.validate()
    return out


def _full_scans() -> int:
    with open("/sys/kernel/mm/transparent_hugepage/khugepaged/full_scans") as f:
        return int(f.read())


def test_whatif_legacy_predicts_the_host_khugepaged(thp):  # noqa: F811
    with thp(KNOBS):
        cmd_r, cmd_w = os.pipe()
        rep_r, rep_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # never returns into pytest
            try:
                os.close(cmd_w)
                os.close(rep_r)
                _child(cmd_r, rep_w)
            finally:
                os._exit(0)
        os.close(cmd_r)
        os.close(rep_w)
        rep = os.fdopen(rep_r)
        try:
            a = int(rep.readline())
            before = capture(pid)
            pm0, pr0 = _windows(before, a)
            assert not pm0.any() and pr0.tolist() == list(COUNTS)
            # the region's VMA alone (the forked child also holds whatever pytest had
            # mapped), as the child's MADV_HUGEPAGE is about to make it
            about = _only_vma(before, a)
            combo = Combo.of("legacy", {"khugepaged/max_ptes_none": "256"})
            (pred,) = whatif(about, [combo])
            assert pred.registered

            os.write(cmd_w, b"h")
            assert rep.readline().strip() == "0"
            f0, t0 = _full_scans(), time.monotonic()
            while _full_scans() < f0 + 2 and time.monotonic() - t0 < 60:
                time.sleep(0.05)
            assert _full_scans() >= f0 + 2, "khugepaged did not finish two full scans"
            after = capture(pid)
        finally:
            os.close(cmd_w)
            rep.close()
            os.waitpid(pid, 0)
    pm1, pr1 = _windows(after, a)
    # the rule, independently of the model: at most 256 none PTEs -> collapse
    assert pm1.tolist() == [n >= NR - 256 for n in COUNTS] == [True, False, True, True]
    # and what whatif said
    assert pred.collapses == {9: int(pm1.sum())}
    assert pred.pmds_touched == int(pm1.sum())
    assert pred.bloat_pages == sum(NR - n for n, m in zip(COUNTS, pm1, strict=True) if m)
    rss_real = int(pr1.sum())
    assert pred.before["rss_anon_pages"] + pred.bloat_pages == pred.after["rss_anon_pages"]
    assert rss_real == sum(NR if m else n for n, m in zip(COUNTS, pm1, strict=True))
