"""``thpsim explain``: one PMD, step by step.

A PATTERN describes one PMD in the layout alphabet plus ``S``:

====  ==============================================================
char  page state built before khugepaged runs
====  ==============================================================
``.`` pte_none
``z`` the zero page (read fault)
``s`` a swap entry (written, then MADV_PAGEOUT)
``0`` an exclusive order-0 page
``S`` an order-0 page also mapped by another process (a holder child)
``2``-``9``, ``a``-``d``  a page of an existing, naturally aligned, exclusive folio
      of that order (the run must cover the whole aligned block)
``H`` a PMD-mapped THP (the whole PMD)
====  ==============================================================

Either PTRS_PER_PTE characters, or whitespace-separated tokens that are runs of
alphabet characters or ``C*N`` (``0*64 .*448``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from thpsim.layout import ORDER_CHARS
from thpsim.mm import scan_result as sr
from thpsim.mm.counters import counter_delta
from thpsim.mm.trace import format_line
from thpsim.system import DEFAULT_POLICY, System

__all__ = ["ExplainSetup", "build_pmd", "explain", "new_system", "parse_pattern", "parse_sizes"]

ALPHABET = set(".zs0SH23456789abcd")
_TOKEN = re.compile(r"^(.)\*(\d+)$")


def parse_pattern(text: str, nr: int = 512) -> str:
    """Expand ``text`` to exactly ``nr`` characters; ``ValueError`` says what is wrong."""
    text = text.strip()
    tokens = text.split()
    out = []
    for tok in tokens:
        m = _TOKEN.match(tok)
        if m:
            out.append(m.group(1) * int(m.group(2)))
        else:
            out.append(tok)
    pat = "".join(out)
    bad = sorted(set(pat) - ALPHABET)
    if bad:
        raise ValueError(f"pattern: unknown character(s) {''.join(bad)!r} "
                         f"(alphabet: . z s 0 S H 2-9 a-d, or C*N)")
    if len(pat) != nr:
        raise ValueError(f"pattern: {len(pat)} PTEs given, a PMD has {nr}")
    if "H" in pat and pat != "H" * nr:
        raise ValueError("pattern: H must cover the whole PMD")
    for order, ch in enumerate(ORDER_CHARS):
        if order < 2 or ch not in pat:
            continue
        n = 1 << order
        if n > nr:
            raise ValueError(f"pattern: order {order} is larger than a PMD")
        idx = np.flatnonzero(np.frombuffer(pat.encode(), dtype=np.uint8) == ord(ch))
        blocks = set((idx // n).tolist())
        for b in blocks:
            if pat[b * n : (b + 1) * n] != ch * n:
                raise ValueError(f"pattern: order-{order} run at {b * n} must cover the "
                                 f"whole aligned block {b * n}-{(b + 1) * n - 1}")
    return pat


def parse_sizes(text: str, sys: System) -> list[int]:
    """``"16K,64K,2M"`` -> orders (sizes of this geometry's anon orders)."""
    g = sys.geometry
    orders = []
    for item in text.split(","):
        item = item.strip().upper().removesuffix("B")
        if not item:
            continue
        m = re.match(r"^(\d+)([KMG])$", item)
        if not m:
            raise ValueError(f"size {item!r}: use e.g. 16K, 64K, 2M")
        kb = int(m.group(1)) * {"K": 1, "M": 1024, "G": 1 << 20}[m.group(2)]
        try:
            order = g.order_of_kb(kb)
        except ValueError:
            raise ValueError(f"size {item}: not a folio size") from None
        if order not in g.anon_orders:
            raise ValueError(f"size {item}: not an anonymous THP size (orders "
                             f"{g.anon_orders[0]}..{g.anon_orders[-1]})")
        orders.append(order)
    return sorted(set(orders))


@dataclass
class ExplainSetup:
    sys: System
    proc: object
    addr: int


def _set(settings, path: str, value: str) -> None:
    """Write a knob only if it changes (batch mode writes thousands of patterns)."""
    if path == "enabled":
        if settings.enabled != value:
            settings.write(path, value)
    elif path.startswith("hugepages-") and path.endswith("/enabled"):
        kb = int(path[len("hugepages-"):].split("kB")[0])
        if settings.order_setting(settings.geometry.order_of_kb(kb)) != value:
            settings.write(path, value)
    else:
        settings.write(path, value)


def _restore(settings, saved: dict[str, str]) -> None:
    current = settings.as_dict()
    changed = {k: v for k, v in saved.items() if current.get(k) != v}
    if changed:
        settings.apply(changed)


def new_system(policy: str = DEFAULT_POLICY, page_size: int | str = 4096) -> System:
    """A machine sized for explaining PMDs (enough memory and swap for one PMD each)."""
    small = str(page_size) in ("4096", "4K")
    return System(memory="512M" if small else "8G", page_size=page_size,
                  swap="64M" if small else "1G", policy=policy)


def build_pmd(pattern: str, policy: str = DEFAULT_POLICY, enabled: list[int] | None = None,
              knobs: dict[str, str] | None = None, page_size: int | str = 4096,
              lru_batch: bool = True, alloc_fail: list[int] | None = None,
              uffd: bool = False, sys: System | None = None) -> ExplainSetup:
    """Build one khugepaged-eligible PMD in a MADV_HUGEPAGE VMA from ``pattern``.

    With ``uffd`` the VMA is registered with userfaultfd (missing mode) after it
    is populated, so khugepaged sees a uffd-armed VMA.  With ``sys`` the PMD is
    built in a new process of that machine (batch mode reuses one machine).
    """
    if sys is None:
        sys = new_system(policy, page_size)
    g = sys.geometry
    nr = g.hpage_pmd_nr
    pat = parse_pattern(pattern, nr)
    if enabled is None:
        enabled = [g.pmd_order]
    s = sys.settings
    _set(s, "enabled", "never")
    for o in g.anon_orders:
        _set(s, f"hugepages-{g.size_kb(o)}kB/enabled", "never")
    p = sys.spawn("main")
    a = p.mmap(g.pmd_size)
    arr = np.frombuffer(pat.encode(), dtype=np.uint8)

    def pages(chars: str) -> np.ndarray:
        return np.flatnonzero(np.isin(arr, np.frombuffer(chars.encode(), dtype=np.uint8)))

    if pat == "H" * nr:
        s.write("enabled", "always")
        p.touch(a, pages=[0])
        s.write("enabled", "never")
    else:
        for order in range(g.pmd_order, 1, -1):  # existing folios first (blocks are none)
            ch = ORDER_CHARS[order]
            if ch not in pat:
                continue
            size = f"hugepages-{g.size_kb(order)}kB/enabled"
            s.write(size, "always")
            p.touch(a, pages=np.unique(pages(ch) // (1 << order)) * (1 << order))
            s.write(size, "never")
        p.touch(a, pages=pages("0sS"))
        if not pages("0sS23456789abcd").size:
            # a VMA needs an anon_vma: one write then MADV_DONTNEED of that page (the
            # first none page, or page 0 before the zero-page reads); the table stays
            first = int(np.flatnonzero(arr == ord(".")).min()) if "." in pat else 0
            p.touch(a, pages=[first])
            p.madvise(a + first * g.page_size, g.page_size, "dontneed")
        if "z" in pat:
            p.touch(a, pages=pages("z"), write=False)
        for i in pages("s").tolist():
            p.madvise(a + i * g.page_size, g.page_size, "pageout")
        if "S" in pat:
            holder = p.fork("holder")
            keep = np.zeros(nr, dtype=bool)
            keep[pages("S")] = True
            # the holder keeps only the S pages; everything else goes back to exclusive
            i = 0
            while i < nr:
                if keep[i]:
                    i += 1
                    continue
                j = i
                while j < nr and not keep[j]:
                    j += 1
                holder.madvise(a + i * g.page_size, (j - i) * g.page_size, "dontneed")
                i = j
    _set(s, "enabled", "madvise")
    for o in enabled:
        _set(s, f"hugepages-{g.size_kb(o)}kB/enabled", "madvise")
    for k, v in (knobs or {}).items():
        s.write(k, v)
    p.madvise(a, g.pmd_size, "hugepage")
    if uffd:
        p.uffd_register(a, g.pmd_size, "missing")
    # "all present pages young": the construction above leaves every PTE young
    sys.khugepaged.lru_batch.enabled = lru_batch
    sys.khugepaged.alloc_fail_orders = set(alloc_fail or ())
    return ExplainSetup(sys, p, a)


def explain_picture(proc, addr: int) -> str:
    """Picture in the input alphabet: shared order-0 pages stay ``S``."""
    lay = proc.layout(addr).pmds[0]
    return "".join("S" if (c == "0" and sh == "S") else c
                   for c, sh in zip(lay.picture, lay.shared, strict=True))


def explain(pattern: str, policy: str = DEFAULT_POLICY, enabled: str = "2M",
            knobs: dict[str, str] | None = None, alloc_fail: str = "", scans: int = 1,
            lru_batch: bool = True, page_size: int | str = 4096, uffd: bool = False,
            trace: bool = False, sys: System | None = None) -> dict:
    """Run ``scans`` khugepaged full scans over one PMD and report every step.

    Returns the JSON object of the issue: ``{"policy", "scans": [{"result",
    "attempts": [{"order", "offset", "result"}], "picture"}], "counters"}``
    (plus ``"warnings"``, and ``"trace"`` lines with ``trace``).  Passing a
    machine from :func:`new_system` reuses it (the processes exit afterwards).
    """
    if sys is None:
        sys = new_system(policy, page_size)
    elif sys.policy != policy:
        raise ValueError(f"machine runs policy {sys.policy!r}, not {policy!r}")
    saved = sys.settings.as_dict()
    orders = parse_sizes(enabled, sys)
    fail = parse_sizes(alloc_fail, sys) if alloc_fail else []
    try:
        setup = build_pmd(pattern, policy, orders, knobs, page_size, lru_batch, fail, uffd,
                          sys=sys)
    except Exception:
        for proc in list(sys.processes.values()):
            proc.exit()
        _restore(sys.settings, saved)
        raise
    p, a = setup.proc, setup.addr
    kh = sys.khugepaged
    events = kh.enable_trace() if trace else None
    n_events = len(events) if events is not None else 0
    before_counters = sys.counters.snapshot()
    before_collapsed, before_full = kh.pages_collapsed, kh.full_scans
    out_scans = []
    pmd_vpn = a // sys.geometry.page_size
    for _ in range(scans):
        n_att, n_scan = len(kh.attempts), len(kh.scans)
        kh.run(full_scans=1)
        atts = [at for at in kh.attempts[n_att:] if at.pmd_addr == pmd_vpn]
        results = [r for vpn, r, _k in kh.scans[n_scan:] if vpn == pmd_vpn]
        out_scans.append({
            "result": results[-1] if results else sr.SCAN_FAIL,
            "attempts": [{"order": at.order, "offset": at.offset, "result": at.result}
                         for at in atts],
            "picture": explain_picture(p, a),
        })
    delta = counter_delta(sys.counters.snapshot(), before_counters)
    kcount = {"pages_collapsed": kh.pages_collapsed - before_collapsed,
              "full_scans": kh.full_scans - before_full}
    out = {"policy": policy, "scans": out_scans,
           "counters": {"vmstat": delta["vmstat"], "mthp": delta["mthp"],
                        "khugepaged": {k: v for k, v in kcount.items() if v}},
           "warnings": list(kh.warnings)}
    if events is not None:
        out["trace"] = [format_line(ev, policy, pid=1) for ev in events[n_events:]]
    for proc in list(sys.processes.values()):
        proc.exit()
    _restore(sys.settings, saved)
    return out
