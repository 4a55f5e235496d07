"""The worked examples of the specs, attempt by attempt.

* kernel-model.md §3, E1-E16, policy ``v11`` (the pure algorithm: no LRU batch).
* linux-7.2.md §10, E3-E21, policy ``linux-7.2``: "naive" = ``lru_batch=False``,
  "batch"/"real" = ``lru_batch=True``.

Every expected value below is transcribed by hand from the spec text.  Attempts
are written ``o<order>@<offset>:<result>`` as in the spec; pictures use the
explain alphabet (``.`` none, ``0`` order 0, ``S`` shared order 0, ``s`` swap,
``2``-``8`` a PTE-mapped folio of that order, ``H`` a PMD-mapped THP).
"""

from __future__ import annotations

import errno

import numpy as np
import pytest

from thpsim.explain import build_pmd, explain
from thpsim.mm import scan_result as sr
from thpsim.mm.pgtable import F_UFFD_WP
from thpsim.mm.policies.linux_7_2 import WARN_TEXT
from thpsim.system import System

PG = 4096
PMD = 2 << 20
ALL = "16K,32K,64K,128K,256K,512K,1M,2M"  # orders {2..9}
MTHP = "16K,32K,64K,128K,256K,512K,1M"  # orders {2..8}, PMD off
KB = {2: 16, 3: 32, 4: 64, 5: 128, 6: 256, 7: 512, 8: 1024, 9: 2048}

RES = {
    "ok": sr.SCAN_SUCCEED,
    "shared": sr.SCAN_EXCEED_SHARED_PTE,
    "count": sr.SCAN_PAGE_COUNT,
    "none": sr.SCAN_EXCEED_NONE_PTE,
    "swap": sr.SCAN_EXCEED_SWAP_PTE,
    "mapped": sr.SCAN_PTE_MAPPED_HUGEPAGE,
    "alloc": sr.SCAN_ALLOC_HUGE_PAGE_FAIL,
}


# --- helpers ---------------------------------------------------------------------------
def expand(text: str) -> str:
    """``"0*64 5*32 ."`` -> the 512-character picture (``C*N`` or literal tokens)."""
    out = []
    for tok in text.split():
        if "*" in tok:
            ch, n = tok.split("*")
            out.append(ch * int(n))
        else:
            out.append(tok)
    s = "".join(out)
    assert len(s) == 512, f"expected picture has {len(s)} PTEs"
    return s


def seq(text: str) -> list[tuple[int, int, str]]:
    """``"o8@0:shared o6@0:ok"`` -> ``[(8, 0, SCAN_EXCEED_SHARED_PTE), (6, 0, ...)]``."""
    out = []
    for tok in text.split():
        node, res = tok.split(":")
        order, off = node[1:].split("@")
        out.append((int(order), int(off), RES[res]))
    return out


def attempts(scan: dict) -> list[tuple[int, int, str]]:
    return [(a["order"], a["offset"], a["result"]) for a in scan["attempts"]]


def run(pattern: str, policy: str, enabled: str = ALL, mpn: int | None = None,
        scans: int = 1, batch: bool = False, knobs: dict | None = None, **kw) -> dict:
    k = dict(knobs or {})
    if mpn is not None:
        k["khugepaged/max_ptes_none"] = str(mpn)
    return explain(expand(pattern), policy=policy, enabled=enabled, knobs=k, scans=scans,
                   lru_batch=batch, **kw)


def mthp(res: dict, order: int, name: str) -> int:
    return res["counters"]["mthp"].get(f"{KB[order]}kB", {}).get(name, 0)


def vm(res: dict, name: str) -> int:
    return res["counters"]["vmstat"].get(name, 0)


def preorder(order: int = 9, off: int = 0):
    """Every (order, offset) node of the order tree 9..2, top-down, left half first."""
    yield order, off
    if order > 2:
        yield from preorder(order - 1, off)
        yield from preorder(order - 1, off + (1 << (order - 1)))


def scan_setup(setup, scans: int = 1) -> list[dict]:
    """``explain``'s loop over an already built PMD (for set-ups explain cannot make)."""
    kh = setup.sys.khugepaged
    vpn = setup.addr // PG
    out = []
    for _ in range(scans):
        na, ns, scanned = len(kh.attempts), len(kh.scans), kh.pages_scanned
        kh.run(full_scans=1)
        res = [r for v, r, _k in kh.scans[ns:] if v == vpn]
        out.append({
            "result": res[-1] if res else None,
            "attempts": [(a.order, a.offset, a.result) for a in kh.attempts[na:]
                         if a.pmd_addr == vpn],
            "picture": setup.proc.layout(setup.addr).pmds[0].picture,
            "pages_scanned": kh.pages_scanned - scanned,
        })
    return out


EVEN = "0." * 256                      # every other page present
EVERY16 = ("0" + "." * 15) * 32        # one page per 16
FIRST9 = ("0" * 9 + "." * 7) * 32      # first 9 of every 16
FIRST8 = ("0" * 8 + "." * 8) * 32      # first 8 of every 16
H = "H*512"


# =======================================================================================
# kernel-model.md §3 — v11
# =======================================================================================
def test_v11_e1_full_pmd_only():
    r = run("0*512", "v11", enabled="2M", mpn=511)
    (s,) = r["scans"]
    assert attempts(s) == seq("o9@0:ok")
    assert s["result"] == sr.SCAN_SUCCEED
    assert s["picture"] == expand(H)
    assert mthp(r, 9, "collapse_alloc") == 1
    assert vm(r, "thp_collapse_alloc") == 1


@pytest.mark.parametrize("mpn", [0, 255, 511])
def test_v11_e2_full_64k_only(mpn):
    r = run("0*512", "v11", enabled="64K", mpn=mpn)
    (s,) = r["scans"]
    assert attempts(s) == [(4, off, sr.SCAN_SUCCEED) for off in range(0, 512, 16)]
    assert s["picture"] == expand("4*512")
    assert mthp(r, 4, "collapse_alloc") == 32
    assert s["result"] == sr.SCAN_SUCCEED


@pytest.mark.parametrize("mpn, expect, picture", [
    (511, "o9@0:ok", H),
    (256, "o9@0:ok", H),
    (255, "o8@0:ok", "8*256 .*256"),
    (0, "o8@0:ok", "8*256 .*256"),
])
def test_v11_e3_first_half(mpn, expect, picture):
    (s,) = run("0*256 .*256", "v11", mpn=mpn)["scans"]
    assert attempts(s) == seq(expect)
    assert s["picture"] == expand(picture)


@pytest.mark.parametrize("enabled, mpn, expect, picture", [
    (ALL, 511, "o9@0:ok", H),
    (ALL, 255, "o6@0:ok", "6*64 .*448"),
    (ALL, 0, "o6@0:ok", "6*64 .*448"),
    ("64K", 0, "o4@0:ok o4@16:ok o4@32:ok o4@48:ok", "4*64 .*448"),
])
def test_v11_e4_first64(enabled, mpn, expect, picture):
    (s,) = run("0*64 .*448", "v11", enabled=enabled, mpn=mpn)["scans"]
    assert attempts(s) == seq(expect)
    assert s["picture"] == expand(picture)


@pytest.mark.parametrize("mpn, collapsed", [(511, True), (256, True), (255, False),
                                            (0, False)])
def test_v11_e5_even_pages(mpn, collapsed):
    (s,) = run(EVEN, "v11", mpn=mpn)["scans"]
    if collapsed:
        assert attempts(s) == seq("o9@0:ok")
        assert s["picture"] == expand(H)
    else:  # the creep cap: a half-full block never qualifies, no attempt at all
        assert attempts(s) == []
        assert s["result"] == sr.SCAN_FAIL
        assert s["picture"] == EVEN


@pytest.mark.parametrize("enabled, mpn, collapsed", [(ALL, 511, True), (ALL, 255, False),
                                                     ("64K", 511, False)])
def test_v11_e6_one_per_16(enabled, mpn, collapsed):
    (s,) = run(EVERY16, "v11", enabled=enabled, mpn=mpn)["scans"]
    if collapsed:
        assert attempts(s) == seq("o9@0:ok")
        assert s["picture"] == expand(H)
    else:
        assert attempts(s) == []
        assert s["result"] == sr.SCAN_FAIL
        assert s["picture"] == EVERY16


def test_v11_e7a_first9_of_16():
    (s,) = run(FIRST9, "v11", enabled="64K", mpn=511)["scans"]
    assert attempts(s) == [(4, off, sr.SCAN_SUCCEED) for off in range(0, 512, 16)]
    assert s["picture"] == expand("4*512")


def test_v11_e7b_first8_of_16_64k():
    (s,) = run(FIRST8, "v11", enabled="64K", mpn=511)["scans"]
    assert attempts(s) == []
    assert s["picture"] == FIRST8


def test_v11_e7c_first8_of_16_no_pmd():
    (s,) = run(FIRST8, "v11", enabled=MTHP, mpn=511)["scans"]
    assert attempts(s) == [(3, off, sr.SCAN_SUCCEED) for off in range(0, 512, 16)]
    assert s["picture"] == ("3" * 8 + "." * 8) * 32


def test_v11_e8_pmd_allocation_fails():
    r = run("0*512", "v11", mpn=0, alloc_fail="2M")
    (s,) = r["scans"]
    assert attempts(s) == seq("o9@0:alloc o8@0:ok o8@256:ok")
    assert s["result"] == sr.SCAN_SUCCEED
    assert s["picture"] == expand("8*512")
    assert mthp(r, 9, "collapse_alloc_failed") == 1
    assert vm(r, "thp_collapse_alloc_failed") == 1


def test_v11_e8_every_allocation_fails():
    setup = build_pmd(expand("0*512"), "v11", enabled=list(range(2, 10)),
                      knobs={"khugepaged/max_ptes_none": "0"}, lru_batch=False,
                      alloc_fail=list(range(2, 10)))
    (s,) = scan_setup(setup)
    assert len(s["attempts"]) == 255  # 1 + 2 + 4 + ... + 128
    assert s["attempts"] == [(o, off, sr.SCAN_ALLOC_HUGE_PAGE_FAIL) for o, off in preorder()]
    assert s["result"] == sr.SCAN_FAIL  # quirk 3: flattened
    assert setup.sys.khugepaged.alloc_sleeps == 0  # ... so no alloc-sleep
    assert s["picture"] == "0" * 512


@pytest.mark.parametrize("enabled, expect, picture", [
    ("64K", "o4@0:mapped " + " ".join(f"o4@{o}:ok" for o in range(16, 512, 16)), "4*512"),
    (ALL, "o9@0:ok", H),
])
def test_v11_e9_existing_64k_folio(enabled, expect, picture):
    r = run("4*16 0*496", "v11", enabled=enabled, mpn=0)
    (s,) = r["scans"]
    assert attempts(s) == seq(expect)
    assert s["picture"] == expand(picture)
    if enabled == "64K":
        assert mthp(r, 4, "collapse_alloc") == 32  # the skipped attempt allocated too
        assert mthp(r, 4, "nr_anon") == 31  # ... and freed its folio again


E10_NAIVE = ("o8@0:shared o7@0:shared o6@0:ok o6@64:shared o5@64:ok o5@96:shared "
             "o4@96:shared o3@96:shared o2@96:ok o2@100:shared o3@104:ok o4@112:ok "
             "o7@128:ok o8@256:ok")
E10_NAIVE_PICTURE = "6*64 5*32 2*4 S 0*3 3*8 4*16 7*128 8*256"


def test_v11_e10_shared_pte_no_pmd():
    r = run("0*100 S 0*411", "v11", enabled=MTHP, mpn=0)
    (s,) = r["scans"]
    assert attempts(s) == seq(E10_NAIVE)
    assert s["picture"] == expand(E10_NAIVE_PICTURE)
    assert s["picture"].count(".") == 0
    for order in range(2, 9):  # each failed order once: exceed_shared + its allocation
        assert mthp(r, order, "collapse_exceed_shared_pte") == 1
        assert mthp(r, order, "collapse_alloc") == 2


def test_v11_e10_shared_pte_with_pmd():
    (s,) = run("0*100 S 0*411", "v11", enabled=ALL, mpn=0)["scans"]
    assert attempts(s) == seq("o9@0:ok")
    assert s["picture"] == expand(H)


E11_A = "o8@0:ok o5@256:ok o3@288:ok o2@296:ok o4@304:ok o6@320:ok o7@384:ok"
E11_B = ("o8@0:ok o8@256:swap o7@256:swap o6@256:swap o5@256:ok o5@288:swap o4@288:swap "
         "o3@288:ok o3@296:swap o2@296:ok o2@300:swap o4@304:ok o6@320:ok o7@384:ok")
E11_PICTURE = "8*256 5*32 3*8 2*4 s 0*3 4*16 6*64 7*128"
E11_PATTERN = "0*300 s 0*211"


@pytest.mark.parametrize("enabled, mpn, expect", [
    (MTHP, 0, E11_A),
    (MTHP, 511, E11_B),
    ("2M", 0, ""),   # quirk 1: 511 present < 512, no attempt
    (ALL, 0, E11_A),  # o9 skipped (quirk 1), then the first bullet's sequence
])
def test_v11_e11_one_swap_entry(enabled, mpn, expect):
    r = run(E11_PATTERN, "v11", enabled=enabled, mpn=mpn)
    (s,) = r["scans"]
    assert attempts(s) == seq(expect)
    assert vm(r, "pswpin") == 0  # never swapped in
    if not expect:
        assert s["result"] == sr.SCAN_FAIL
        assert s["picture"] == expand(E11_PATTERN)
        return
    assert s["result"] == sr.SCAN_SUCCEED
    assert s["picture"] == expand(E11_PICTURE)
    failed = [o for o, _off, res in attempts(s) if res != sr.SCAN_SUCCEED]
    assert len(failed) == (7 if mpn == 511 else 0)
    for order in range(2, 9):
        assert mthp(r, order, "collapse_exceed_swap_pte") == failed.count(order)
    if mpn == 511:
        assert mthp(r, 8, "collapse_exceed_swap_pte") == 1


def test_v11_e12_first128_mpn64():
    (s,) = run("0*128 .*384", "v11", mpn=64)["scans"]
    assert attempts(s) == seq("o7@0:ok")
    assert s["picture"] == expand("7*128 .*384")


def test_v11_e13_first96_no_pmd():
    (s,) = run("0*96 .*416", "v11", enabled=MTHP, mpn=511)["scans"]
    assert attempts(s) == seq("o7@0:ok")
    assert s["picture"] == expand("7*128 .*384")


def test_v11_e14_creep_cap():
    r = run("0*33 .*479", "v11", mpn=384, scans=3)
    s1, s2, s3 = r["scans"]
    assert attempts(s1) == seq("o6@0:ok")
    assert s1["picture"] == expand("6*64 .*448")
    for s in (s2, s3):  # no promotion; the o6 re-attempt is rejected, layout stable
        assert attempts(s) == seq("o6@0:mapped")
        assert s["picture"] == expand("6*64 .*448")
        assert s["result"] == sr.SCAN_FAIL
    assert mthp(r, 6, "collapse_alloc") == 3  # one order-6 allocation per scan
    assert r["warnings"] == []


@pytest.mark.parametrize("policy, mpn, rc", [
    ("v11", 0, -errno.EINVAL),  # quirk 2: the o9 bitmap threshold needs 512
    ("v11", 511, 0),
    ("legacy", 0, 0),  # baseline: limits ignored
])
def test_e15_madv_collapse_first100(policy, mpn, rc):
    setup = build_pmd(expand("0*100 .*412"), policy,
                      knobs={"khugepaged/max_ptes_none": str(mpn)}, lru_batch=False)
    p, a = setup.proc, setup.addr
    assert p.madvise(a, PMD, "collapse") == rc
    pic = p.layout(a).pmds[0].picture
    if rc:
        assert setup.sys.khugepaged.attempts == []  # no attempt at all
        assert pic == expand("0*100 .*412")
    else:
        assert pic == expand(H)


@pytest.mark.parametrize("enabled", [ALL, "64K", "2M"])
@pytest.mark.parametrize("pattern", ["0*256 .*256", "0*511 z", "z 0*511"])
def test_v11_e16_uffd_none_aborts_scan(enabled, pattern):
    r = run(pattern, "v11", enabled=enabled, mpn=511, uffd=True)
    (s,) = r["scans"]
    assert s["result"] == sr.SCAN_EXCEED_NONE_PTE
    assert attempts(s) == []
    assert vm(r, "thp_scan_exceed_none_pte") == 1


def test_v11_e16_uffd_full_pmd_like_e1():
    r = run("0*512", "v11", enabled=ALL, mpn=511, uffd=True)
    (s,) = r["scans"]
    assert attempts(s) == seq("o9@0:ok")
    assert s["picture"] == expand(H)


@pytest.mark.parametrize("policy", ["v11", "linux-7.2"])
def test_e16_uffd_wp_bit_aborts_scan(policy):
    setup = build_pmd(expand("0*512"), policy, enabled=list(range(2, 10)), lru_batch=False)
    p, a = setup.proc, setup.addr
    assert p.uffd_register(a, PMD, "wp") == 0
    pt = p.mm.pt
    pt.flags[pt.row(a // PMD), 200] |= F_UFFD_WP  # UFFDIO_WRITEPROTECT of one page
    (s,) = scan_setup(setup)
    assert s["result"] == sr.SCAN_PTE_UFFD_WP
    assert s["attempts"] == []


# =======================================================================================
# linux-7.2.md §10 — linux-7.2
# =======================================================================================
L72 = "linux-7.2"
BOTH = pytest.mark.parametrize("batch", [False, True], ids=["naive", "batch"])


@BOTH
@pytest.mark.parametrize("mpn, expect, picture, warn", [
    (511, "o9@0:ok", H, False),
    (256, "o9@0:ok", H, False),
    (255, "o8@0:ok", "8*256 .*256", True),
    (0, "o8@0:ok", "8*256 .*256", False),
])
def test_72_e3_first_half(batch, mpn, expect, picture, warn):
    r = run("0*256 .*256", L72, mpn=mpn, scans=3, batch=batch)
    s1, s2, s3 = r["scans"]
    assert attempts(s1) == seq(expect)
    assert s1["result"] == sr.SCAN_SUCCEED
    for s in r["scans"]:
        assert s["picture"] == expand(picture)
    assert r["warnings"] == ([WARN_TEXT] if warn else [])
    if expect.startswith("o8"):
        # 1 new folio, then 2 PTE_MAPPED_HUGEPAGE re-attempts
        assert attempts(s2) == attempts(s3) == seq("o8@0:mapped")
        assert mthp(r, 8, "collapse_alloc") == 3
        assert s2["result"] == s3["result"] == sr.SCAN_FAIL


def test_72_warning_text():
    assert WARN_TEXT == ("mTHP collapse does not support max_ptes_none values other than "
                         "0 or 511, defaulting to 0.")


@BOTH
@pytest.mark.parametrize("mpn, collapsed", [(511, True), (256, True), (255, False),
                                            (0, False)])
def test_72_e5_even_pages(batch, mpn, collapsed):
    (s,) = run(EVEN, L72, mpn=mpn, batch=batch)["scans"]
    if collapsed:
        assert attempts(s) == seq("o9@0:ok")
        assert s["picture"] == expand(H)
    else:
        assert attempts(s) == []
        assert s["result"] == sr.SCAN_FAIL  # status "failed"
        assert s["picture"] == EVEN


@BOTH
def test_72_e6_one_per_16(batch):
    (s,) = run(EVERY16, L72, mpn=511, batch=batch)["scans"]
    assert attempts(s) == seq("o9@0:ok")
    assert s["picture"] == expand(H)
    r = run(EVERY16, L72, mpn=255, batch=batch)
    (s,) = r["scans"]
    assert attempts(s) == []
    assert s["result"] == sr.SCAN_FAIL
    assert s["picture"] == EVERY16
    assert r["warnings"] == [WARN_TEXT]


@BOTH
def test_72_e6_one_per_16_64k(batch):
    r = run(EVERY16, L72, enabled="64K", mpn=511, scans=3, batch=batch)
    s1, s2, s3 = r["scans"]
    assert attempts(s1) == [(4, off, sr.SCAN_SUCCEED) for off in range(0, 512, 16)]
    for s in (s2, s3):
        assert attempts(s) == [(4, off, sr.SCAN_PTE_MAPPED_HUGEPAGE)
                               for off in range(0, 512, 16)]
        assert s["result"] == sr.SCAN_FAIL
    for s in r["scans"]:
        assert s["picture"] == expand("4*512")
    assert mthp(r, 4, "collapse_alloc") == 96
    assert mthp(r, 4, "nr_anon") == 32


@BOTH
@pytest.mark.parametrize("pattern", [FIRST9, FIRST8], ids=["e7a", "e7b"])
def test_72_e7ab_64k(batch, pattern):
    (s,) = run(pattern, L72, enabled="64K", mpn=511, batch=batch)["scans"]
    assert attempts(s) == [(4, off, sr.SCAN_SUCCEED) for off in range(0, 512, 16)]
    assert s["picture"] == expand("4*512")


@BOTH
def test_72_e7c_no_pmd(batch):
    (s,) = run(FIRST8, L72, enabled=MTHP, mpn=511, batch=batch)["scans"]
    assert attempts(s) == seq("o8@0:ok o8@256:ok")
    assert s["picture"] == expand("8*512")


@BOTH
def test_72_e8_pmd_allocation_fails(batch):
    setup = build_pmd(expand("0*512"), L72, enabled=list(range(2, 10)),
                      knobs={"khugepaged/max_ptes_none": "0"}, lru_batch=batch,
                      alloc_fail=[9])
    c0 = setup.sys.counters.snapshot()
    (s,) = scan_setup(setup)
    assert s["attempts"] == seq("o9@0:alloc o8@0:ok o8@256:ok")
    assert s["result"] == sr.SCAN_SUCCEED
    assert s["picture"] == expand("8*512")
    assert setup.sys.khugepaged.alloc_sleeps == 0
    c = setup.sys.counters
    assert c.mthp_value(9, "collapse_alloc_failed") == 1
    assert c.vmstat["thp_collapse_alloc_failed"] - c0["vmstat"].get(
        "thp_collapse_alloc_failed", 0) == 1


@pytest.mark.parametrize("enabled, fail, expect", [
    (list(range(2, 10)), list(range(2, 10)), list(preorder())),
    ([4], [4], [(4, off) for off in range(0, 512, 16)]),
])
def test_72_e8_every_allocation_fails(enabled, fail, expect):
    setup = build_pmd(expand("0*512"), L72, enabled=enabled,
                      knobs={"khugepaged/max_ptes_none": "0"}, lru_batch=True,
                      alloc_fail=fail)
    (s,) = scan_setup(setup)
    assert s["attempts"] == [(o, off, sr.SCAN_ALLOC_HUGE_PAGE_FAIL) for o, off in expect]
    assert len(s["attempts"]) == (255 if len(enabled) > 1 else 32)
    assert s["result"] == sr.SCAN_ALLOC_HUGE_PAGE_FAIL
    assert setup.sys.khugepaged.alloc_sleeps == 1  # once in this pass
    assert s["picture"] == "0" * 512


def test_72_e8_second_alloc_failure_ends_the_pass():
    """Every allocation fails, three full PMDs: the first failure sleeps once, the
    second PMD's failure ends the pass, the third is not scanned in it."""
    sys = System(memory="512M", policy=L72)
    sys.settings.write("enabled", "madvise")
    sys.settings.write("khugepaged/max_ptes_none", "0")
    p = sys.spawn()
    a = p.mmap(3 * PMD)
    assert a % PMD == 0
    p.madvise(a, 3 * PMD, "nohugepage")
    p.touch(a, 3 * PMD)
    p.madvise(a, 3 * PMD, "hugepage")
    kh = sys.khugepaged
    kh.alloc_fail_orders = {9}
    kh.run(passes=1)
    assert [r for _v, r, _k in kh.scans] == [sr.SCAN_ALLOC_HUGE_PAGE_FAIL] * 2
    assert kh.alloc_sleeps == 1


E10_BATCH_1 = (
    "o8@0:shared o7@0:count o6@0:count o5@0:count o4@0:count o3@0:count o2@0:count "
    "o2@4:count o3@8:ok o4@16:ok o5@32:ok "
    "o6@64:shared o5@64:count o4@64:count o3@64:count o2@64:count o2@68:count "
    "o3@72:ok o4@80:ok "
    "o5@96:shared o4@96:count o3@96:count o2@96:count o2@100:shared "
    "o3@104:ok o4@112:ok o7@128:ok o8@256:ok")
E10_BATCH_1_PICTURE = ("0*8 3*8 4*16 5*32 0*8 3*8 4*16 0*4 S 0*3 3*8 4*16 7*128 8*256")
# scan 2, spelled out in the spec up to o2@100 ("then re-attempts": the folios made
# in scan 1 at 104, 112, 128 and 256 are re-attempted and found mapped)
E10_BATCH_2 = (
    "o8@0:shared o7@0:shared o6@0:ok o6@64:shared o5@64:ok o5@96:shared "
    "o4@96:count o3@96:count o2@96:count o2@100:shared "
    "o3@104:mapped o4@112:mapped o7@128:mapped o8@256:mapped")
# scan 3 (layout final, status exceed_shared_pte): derived from §3.1/§4.6 — o6@0 and
# o5@64 are now mapped, 96-99 are pinned again by o5@96's release
E10_BATCH_3 = (
    "o8@0:shared o7@0:shared o6@0:mapped o6@64:shared o5@64:mapped o5@96:shared "
    "o4@96:count o3@96:count o2@96:count o2@100:shared "
    "o3@104:mapped o4@112:mapped o7@128:mapped o8@256:mapped")
E10_FINAL_PICTURE = "6*64 5*32 0*4 S 0*3 3*8 4*16 7*128 8*256"


def test_72_e10_with_pmd():
    for batch in (False, True):
        (s,) = run("0*100 S 0*411", L72, enabled=ALL, mpn=0, batch=batch)["scans"]
        assert attempts(s) == seq("o9@0:ok")
        assert s["picture"] == expand(H)


def test_72_e10_naive():
    (s,) = run("0*100 S 0*411", L72, enabled=MTHP, mpn=0)["scans"]
    assert attempts(s) == seq(E10_NAIVE)  # the same as v11's E10
    assert s["picture"] == expand(E10_NAIVE_PICTURE)
    assert s["result"] == sr.SCAN_SUCCEED


def test_72_e10_batch_three_scans():
    r = run("0*100 S 0*411", L72, enabled=MTHP, mpn=0, scans=3, batch=True)
    s1, s2, s3 = r["scans"]
    assert attempts(s1) == seq(E10_BATCH_1)
    assert s1["picture"] == expand(E10_BATCH_1_PICTURE)
    assert attempts(s2) == seq(E10_BATCH_2)
    assert s2["picture"] == expand(E10_FINAL_PICTURE)
    assert attempts(s3) == seq(E10_BATCH_3)
    assert s3["picture"] == expand(E10_FINAL_PICTURE)
    assert [s["result"] for s in r["scans"]] == [
        sr.SCAN_SUCCEED, sr.SCAN_SUCCEED, sr.SCAN_EXCEED_SHARED_PTE]


@BOTH
@pytest.mark.parametrize("mpn, expect", [(0, E11_A), (511, E11_B)], ids=["e11a", "e11b"])
def test_72_e11ab_one_swap_entry_no_pmd(batch, mpn, expect):
    r = run(E11_PATTERN, L72, enabled=MTHP, mpn=mpn, batch=batch)
    (s,) = r["scans"]
    assert attempts(s) == seq(expect)
    assert s["result"] == sr.SCAN_SUCCEED
    assert s["picture"] == expand(E11_PICTURE)
    assert vm(r, "pswpin") == 0
    failed = [o for o, _off, res in attempts(s) if res != sr.SCAN_SUCCEED]
    assert len(failed) == (7 if mpn else 0)
    for order in range(2, 9):
        assert mthp(r, order, "collapse_exceed_swap_pte") == failed.count(order)
        assert mthp(r, order, "collapse_alloc") == 1 + failed.count(order)


@BOTH
@pytest.mark.parametrize("enabled", ["2M", ALL], ids=["e11c", "e11d"])
def test_72_e11cd_one_swap_entry_pmd(batch, enabled):
    r = run(E11_PATTERN, L72, enabled=enabled, mpn=0, batch=batch)
    (s,) = r["scans"]
    assert attempts(s) == seq("o9@0:ok")  # 511 + 1 swap = 512 occupied
    assert s["picture"] == expand(H)
    assert vm(r, "pswpin") == 1


@BOTH
def test_72_e13_first96_no_pmd(batch):
    (s,) = run("0*96 .*416", L72, enabled=MTHP, mpn=511, batch=batch)["scans"]
    assert attempts(s) == seq("o8@0:ok")  # 96 >= 1
    assert s["picture"] == expand("8*256 .*256")


@BOTH
def test_72_e14_mpn384(batch):
    r = run("0*33 .*479", L72, mpn=384, scans=2, batch=batch)
    s1, s2 = r["scans"]
    assert attempts(s1) == seq("o5@0:ok")
    assert s1["picture"] == expand("5*32 0 .*479")  # page 32 stays order 0
    assert attempts(s2) == seq("o5@0:mapped")
    assert s2["result"] == sr.SCAN_FAIL
    assert s2["picture"] == s1["picture"]
    assert mthp(r, 5, "collapse_alloc") == 2  # one wasted 128K allocation per rescan
    assert r["warnings"] == [WARN_TEXT]


def test_72_e15_madv_collapse_first100():
    setup = build_pmd(expand("0*100 .*412"), L72,
                      knobs={"khugepaged/max_ptes_none": "0"})
    p, a = setup.proc, setup.addr
    assert p.madvise(a, PMD, "collapse") == 0
    assert p.layout(a).pmds[0].picture == expand(H)


@BOTH
def test_72_e16_uffd_pmd_only(batch):
    setup = build_pmd(expand("0*256 .*256"), L72, lru_batch=batch, uffd=True)
    c = setup.sys.counters
    for s in scan_setup(setup, scans=2):  # on every scan
        assert s["result"] == sr.SCAN_EXCEED_NONE_PTE
        assert s["attempts"] == []
        assert s["pages_scanned"] == 257  # aborts at PTE 256
    assert c.vmstat["thp_scan_exceed_none_pte"] == 2
    assert c.mthp_value(9, "collapse_exceed_none_pte") == 2


def test_72_e16_uffd_naive():
    r = run("0*256 .*256", L72, mpn=511, uffd=True)
    (s,) = r["scans"]
    assert attempts(s) == seq("o9@0:none o8@0:ok")
    assert s["picture"] == expand("8*256 .*256")
    assert vm(r, "thp_scan_exceed_none_pte") == 1
    assert mthp(r, 9, "collapse_exceed_none_pte") == 1


def test_72_e16_uffd_batch_three_scans():
    r = run("0*256 .*256", L72, mpn=511, uffd=True, scans=3, batch=True)
    s1, s2, s3 = r["scans"]
    assert attempts(s1) == seq(
        "o9@0:none o8@0:count o7@0:count o6@0:count o5@0:count o4@0:count o3@0:count "
        "o2@0:count o2@4:count o3@8:ok o4@16:ok o5@32:ok o6@64:ok o7@128:ok")
    assert s1["picture"] == expand("0*8 3*8 4*16 5*32 6*64 7*128 .*256")
    assert attempts(s2) == seq("o9@0:none o8@0:ok")
    assert s2["picture"] == expand("8*256 .*256")
    assert attempts(s3) == seq("o9@0:none o8@0:mapped")
    assert s3["picture"] == expand("8*256 .*256")
    assert [s["result"] for s in r["scans"]] == [
        sr.SCAN_SUCCEED, sr.SCAN_SUCCEED, sr.SCAN_EXCEED_NONE_PTE]


def _shared_64k_setup(enabled: list[int], mpn: int):
    """E18: PTEs 0-15 map a 64K folio also mapped by a child (fault before fork),
    PTEs 16-511 are order 0 and exclusive again (the child dropped them)."""
    setup = build_pmd(expand("4*16 0*496"), L72, enabled=enabled,
                      knobs={"khugepaged/max_ptes_none": str(mpn)})
    p, a = setup.proc, setup.addr
    child = p.fork("holder")
    assert child.madvise(a, PMD, "nohugepage") == 0  # the holder is not a candidate
    assert child.madvise(a + 16 * PG, PMD - 16 * PG, "dontneed") == 0
    lay = p.layout(a).pmds[0]
    assert lay.shared == "S" * 16 + "-" * 496
    return setup


def test_72_e18_shared_64k_folio_small_orders():
    setup = _shared_64k_setup([2, 3, 4], 0)
    c = setup.sys.counters
    s1, s2 = scan_setup(setup, scans=2)
    fails = seq("o4@0:shared o3@0:shared o2@0:shared o2@4:shared o3@8:shared o2@8:shared "
                "o2@12:shared")
    assert s1["attempts"] == fails + [(4, off, sr.SCAN_SUCCEED) for off in range(16, 512, 16)]
    assert s1["picture"] == expand("4*512")
    assert s1["result"] == sr.SCAN_SUCCEED
    assert s2["attempts"][:7] == fails
    assert s2["result"] == sr.SCAN_EXCEED_SHARED_PTE
    assert s2["picture"] == expand("4*512")
    # per scan: 64kB/32kB/16kB collapse_exceed_shared_pte +1/+2/+4
    assert [c.mthp_value(o, "collapse_exceed_shared_pte") for o in (4, 3, 2)] == [2, 4, 8]


def test_72_e18_shared_64k_folio_64k_only():
    setup = _shared_64k_setup([4], 511)
    (s,) = scan_setup(setup)
    assert s["attempts"] == seq("o4@0:shared") + [(4, off, sr.SCAN_SUCCEED)
                                                  for off in range(16, 512, 16)]
    assert s["picture"] == expand("4*512")


def test_72_e19_all_zero_page_khugepaged():
    setup = build_pmd("z" * 512, L72, enabled=list(range(2, 10)))
    c = setup.sys.counters
    tr = setup.sys.khugepaged.enable_trace()
    for s in scan_setup(setup, scans=2):  # +1 per scan
        assert s["result"] == sr.SCAN_EXCEED_NONE_PTE
        assert s["attempts"] == []
        assert s["pages_scanned"] == 512  # aborts at the 512th PTE
    assert c.vmstat["thp_scan_exceed_none_pte"] == 2
    assert c.mthp_value(9, "collapse_exceed_none_pte") == 2
    pmd_ev = [e for e in tr if e["event"] == "mm_khugepaged_scan_pmd"]
    assert pmd_ev and all(e["scan_pfn"] == -1 for e in pmd_ev)


def test_v11_e19_all_zero_page_lacks_referenced():
    (s,) = run("z*512", "v11", mpn=511)["scans"]
    assert s["result"] == sr.SCAN_LACK_REFERENCED_PAGE
    assert attempts(s) == []


def test_72_e19b_madv_collapse_zero_pages():
    setup = build_pmd("z" * 512, L72, knobs={"khugepaged/max_ptes_none": "0"})
    p, a = setup.proc, setup.addr
    assert p.madvise(a, PMD, "collapse") == 0
    assert p.layout(a).pmds[0].picture == expand(H)
    assert not p.peek(a, PMD).any()  # zero-filled


def _lazyfree_setup():
    setup = build_pmd(expand("0*512"), L72, enabled=list(range(2, 10)))
    assert setup.proc.madvise(setup.addr, 16 * PG, "free") == 0
    return setup


def test_72_e20_lazyfree_aborts_scan():
    setup = _lazyfree_setup()
    for s in scan_setup(setup, scans=2):
        assert s["result"] == sr.SCAN_PAGE_LAZYFREE
        assert s["attempts"] == []
        assert s["pages_scanned"] == 1  # aborts at PTE 0
        assert s["picture"] == "0" * 512


def test_72_e20_madv_collapse_ignores_lazyfree():
    setup = _lazyfree_setup()
    p, a = setup.proc, setup.addr
    assert p.madvise(a, PMD, "collapse") == 0
    assert p.layout(a).pmds[0].picture == expand(H)


def test_72_e21_registration():
    sys = System(memory="256M", policy=L72)
    s = sys.settings
    s.write("enabled", "never")
    for kb in (16, 32, 64, 128, 256, 512, 1024, 2048):
        s.write(f"hugepages-{kb}kB/enabled", "never")
    p = sys.spawn()
    a = p.mmap(PMD)
    assert a % PMD == 0
    p.touch(a, pages=np.arange(0, 512, 16))
    s.write("hugepages-64kB/enabled", "always")
    kh = sys.khugepaged
    trace = kh.enable_trace()
    kh.run(seconds=1.5)
    assert trace == []
    assert not p.mm.registered
    assert p.layout(a).pmds[0].picture == EVERY16
    assert p.madvise(a, PMD, "hugepage") == 0
    assert p.mm.registered
    kh.run(full_scans=2)
    assert p.layout(a).pmds[0].picture == expand("4*512")
