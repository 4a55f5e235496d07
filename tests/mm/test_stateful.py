"""Stateful (hypothesis) tests: random syscall/access sequences against a reference model.

A :class:`~hypothesis.stateful.RuleBasedStateMachine` drives a small checked
``System`` (64 MiB, 16 MiB swap, invariants checked after every process call
and after every step; any collapse policy) through random sequences of mmap
(also ``MAP_FIXED`` over existing mappings), munmap, mprotect, madvise
(including ``MADV_COLLAPSE``), single-page and batched touches, fork, child
exit, THP setting changes, ``PR_SET_THP_DISABLE``, userfaultfd registration,
injected large-folio allocation failures, khugepaged passes and the
deferred-split shrinker.

Next to the model it keeps a reference of what every page must contain,
per process: the VMA protection of each page of a 4-PMD arena, the expected
content token and a "lazy" mask.  The rules the reference follows:

* a write stores a fresh token, larger than every token seen before;
* never-written, unmapped-then-remapped and ``MADV_DONTNEED``-ed pages read 0;
* fork copies the parent's reference to the child;
* after ``MADV_FREE`` a page holds either its old token or 0 until it is
  written again (reclaim may discard a clean lazy-free folio); once it is seen
  as 0 it stays 0;
* everything else (pageout and swap-in, COW, splits, mprotect, THP settings,
  the shrinker, khugepaged and MADV_COLLAPSE) preserves content exactly;
* an access outside a VMA, a write to a read-only or ``PROT_NONE`` VMA and a
  read of a ``PROT_NONE`` VMA raise ``SegvError`` and change nothing; no PTE
  or huge PMD is writable inside a VMA without ``VM_WRITE``.

Every few steps and at the end ``Process.peek`` of every page of every
process is compared with the reference; at the end every process exits and
nothing (folios, memcg charge, swap slots, deferred-split entries) may be left.

Model behaviour the reference follows as is: ``mprotect`` over a range with a
hole returns ``-ENOMEM`` without changing anything (the kernel would have
changed the VMAs before the hole).
"""

from __future__ import annotations

import errno
import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from thpsim.mm.memory import SegvError
from thpsim.mm.pgtable import F_WRITE
from thpsim.mm.settings import POLICIES
from thpsim.mm.vma import VM_WRITE
from thpsim.system import System

PAGE = 4096
PMD_PAGES = 512
PMD_ORDER = 9
N = 4 * PMD_PAGES  # the arena: 4 PMDs of 4K pages (8 MiB)
BASE = 1 << 30  # mm.mmap_base: where mmap(NULL) starts looking, PMD aligned
MAX_PROCS = 3
#: compare the whole content every this many steps (and at the end)
COMPARE_EVERY = 3

UNMAPPED = -1
PROTS = {"none": 0, "r": 1, "rw": 3}
SIZES_KB = (16, 32, 64, 128, 256, 512, 1024, 2048)

# --- strategies ---------------------------------------------------------------------
pages = st.one_of(
    st.integers(0, N - 1),
    st.builds(lambda k, a: (k * a) % N, st.integers(0, N), st.sampled_from([4, 16, 64, 512])),
)
lengths = st.one_of(
    st.integers(1, 40),
    st.sampled_from([4, 16, 64, 256, 512, 513, 1024, N]),
    st.integers(1, N),
)
who = st.integers(0, MAX_PROCS - 1)
prots = st.sampled_from(sorted(PROTS))
setting_changes = st.one_of(
    st.tuples(st.just("enabled"), st.sampled_from(["always", "madvise", "never"])),
    st.tuples(st.sampled_from([f"hugepages-{kb}kB/enabled" for kb in SIZES_KB]),
              st.sampled_from(["always", "madvise", "inherit", "never"])),
    st.tuples(st.just("use_zero_page"), st.sampled_from(["0", "1"])),
    st.tuples(st.just("shrink_underused"), st.sampled_from(["0", "1"])),
    st.tuples(st.sampled_from(["khugepaged/max_ptes_none", "khugepaged/max_ptes_swap",
                               "khugepaged/max_ptes_shared"]),
              st.one_of(st.sampled_from(["0", "1", "64", "255", "511"]),
                        st.integers(0, 511).map(str))),
    st.tuples(st.just("khugepaged/pages_to_scan"), st.sampled_from(["8", "64", "512", "4096"])),
)
PRESETS = {
    "default": {},
    "never": {"enabled": "never"},
    "mthp": {f"hugepages-{kb}kB/enabled": "always" for kb in SIZES_KB},
    "mixed": {"hugepages-16kB/enabled": "always", "hugepages-64kB/enabled": "madvise",
              "hugepages-512kB/enabled": "inherit", "hugepages-2048kB/enabled": "never",
              "enabled": "madvise"},
    "small": {"hugepages-16kB/enabled": "always", "hugepages-2048kB/enabled": "never",
              "khugepaged/max_ptes_none": "0"},
}


class Ref:
    """What one process's arena must look like."""

    def __init__(self) -> None:
        self.prot = np.full(N, UNMAPPED, dtype=np.int8)
        self.tok = np.zeros(N, dtype=np.int64)
        #: MADV_FREE-d: the page holds ``tok`` or 0
        self.lazy = np.zeros(N, dtype=bool)

    def copy(self) -> Ref:
        r = Ref()
        r.prot, r.tok, r.lazy = self.prot.copy(), self.tok.copy(), self.lazy.copy()
        return r

    def clear(self, s: int, e: int) -> None:
        self.tok[s:e] = 0
        self.lazy[s:e] = False


def _addr(page: int) -> int:
    return BASE + page * PAGE


def _step(fn):
    """Mark the machine dirty while a rule runs (see :meth:`THPMachine.teardown`)."""

    @functools.wraps(fn)
    def wrapper(self, **kw):
        self.clean = False
        return fn(self, **kw)

    return wrapper


def _span(start: int, length: int) -> tuple[int, int]:
    return start, min(N, start + length)


class THPMachine(RuleBasedStateMachine):
    """Random sequences on a checked 64 MiB system, compared with :class:`Ref`."""

    def __init__(self) -> None:
        super().__init__()
        self.max_token = 0
        self.steps = 0
        self.clean = True
        self._boot("v11")

    def _boot(self, policy: str) -> None:
        self.sys = System(memory="64M", swap="16M", policy=policy, check=True)
        self.procs: dict = {}
        self.refs: dict[int, Ref] = {}
        root = self.sys.spawn("main")
        self.root = root.pid
        self.procs[root.pid] = root
        self.refs[root.pid] = Ref()

    # --- helpers ------------------------------------------------------------------
    def _pick(self, i: int):
        pids = sorted(self.procs)
        pid = pids[i % len(pids)]
        return self.procs[pid], self.refs[pid]

    def _pick_with(self, i: int, mask_of):
        """A process (index ``i`` modulo the candidates) whose ``mask_of(ref)`` has pages."""
        cands = [pid for pid in sorted(self.procs) if mask_of(self.refs[pid]).any()]
        if not cands:
            return None, None
        pid = cands[i % len(cands)]
        return self.procs[pid], self.refs[pid]

    def _new_tokens(self, toks: np.ndarray) -> None:
        assert toks.size == np.unique(toks).size, f"duplicate tokens written: {toks}"
        assert (toks > self.max_token).all(), (
            f"a write produced an old token: {toks[toks <= self.max_token]}"
            f" (max so far {self.max_token})")
        self.max_token = int(toks.max())

    def _write(self, p, ref: Ref, sel: np.ndarray) -> None:
        assert p.touch(BASE, pages=sel) == sel.size
        self._record_writes(p, ref, sel)

    def _record_writes(self, p, ref: Ref, sel: np.ndarray) -> None:
        toks = np.array([p.peek(_addr(int(pg)))[0] for pg in sel], dtype=np.int64)
        self._new_tokens(toks)
        ref.tok[sel] = toks
        ref.lazy[sel] = False

    def _expect(self, ref: Ref, page_idx: np.ndarray, got: np.ndarray, what: str) -> None:
        """``got`` (tokens of ``page_idx``) must match the reference; resolve lazy pages."""
        want = ref.tok[page_idx]
        lazy = ref.lazy[page_idx]
        ok = (got == want) | (lazy & (got == 0))
        if not ok.all():
            bad = np.flatnonzero(~ok)[:8]
            pairs = [(int(page_idx[b]), int(got[b]), int(want[b]), bool(lazy[b])) for b in bad]
            raise AssertionError(f"{what}: content differs (page, got, want, lazy): {pairs}")
        zero = lazy & (got == 0)
        ref.tok[page_idx[zero]] = 0
        ref.lazy[page_idx[zero]] = False

    def _snapshot(self):
        out = {}
        for pid, p in self.procs.items():
            out[pid] = (p.peek(BASE, N * PAGE), p.layout(BASE, N * PAGE).pictures(),
                        p.rss_anon, p.rss_swap, [(v.start, v.end, v.flags) for v in p.mm.vmas])
        return out

    # --- setup --------------------------------------------------------------------
    @initialize(preset=st.sampled_from(["default", "default", "mthp", "mthp", "mixed", "small",
                                        "never"]),
                initial=st.sampled_from(["all", "all", "half", "two", "none"]),
                pattern=st.sampled_from(["dense", "sparse", "blocks", "none"]),
                policy=st.sampled_from(POLICIES))
    def setup(self, preset, initial, pattern, policy):
        if policy != self.sys.policy:
            self._boot(policy)
        for path, val in PRESETS[preset].items():
            self.sys.settings.write(path, val)
        p, ref = self.procs[self.root], self.refs[self.root]
        spans = {"none": [], "all": [(0, N)], "half": [(0, N // 2)],
                 "two": [(100, 700), (1024, N)]}[initial]
        for s, e in spans:
            assert p.mmap((e - s) * PAGE, addr=_addr(s)) == _addr(s)
            ref.prot[s:e] = PROTS["rw"]
        idx = np.arange(N)
        sel = {"dense": idx, "sparse": idx[::7], "blocks": idx[(idx // 64) % 3 == 1],
               "none": idx[:0]}[pattern]
        sel = sel[ref.prot[sel] == PROTS["rw"]]
        if sel.size:
            self._write(p, ref, sel)

    # --- address space ------------------------------------------------------------
    @rule(i=who, start=pages, length=lengths, prot=prots)
    @_step
    def mmap_fixed(self, i, start, length, prot):
        p, ref = self._pick(i)
        s, e = _span(start, length)
        assert p.mmap((e - s) * PAGE, addr=_addr(s), prot=prot) == _addr(s)
        ref.prot[s:e] = PROTS[prot]
        ref.clear(s, e)

    @rule(i=who, length=lengths, prot=prots)
    @_step
    def mmap_anywhere(self, i, length, prot):
        p, ref = self._pick(i)
        length = min(length, N)
        # the lowest free range above mmap_base (the arena's start), PMD aligned if the
        # length is a multiple of the PMD size (thp_get_unmapped_area, Linux 6.12+)
        align = PMD_PAGES if length % PMD_PAGES == 0 else 1
        free = ref.prot == UNMAPPED
        for cand in range(0, N - length + 1, align):
            if free[cand : cand + length].all():
                break
        else:
            return  # would land outside the arena
        assert p.mmap(length * PAGE, prot=prot) == _addr(cand)
        ref.prot[cand : cand + length] = PROTS[prot]
        ref.clear(cand, cand + length)

    @rule(i=who, start=pages, length=lengths)
    @_step
    def munmap(self, i, start, length):
        p, ref = self._pick(i)
        s, e = _span(start, length)
        assert p.munmap(_addr(s), (e - s) * PAGE) == 0
        ref.prot[s:e] = UNMAPPED
        ref.clear(s, e)

    @rule(i=who, start=pages, length=lengths, prot=prots)
    @_step
    def mprotect(self, i, start, length, prot):
        p, ref = self._pick(i)
        s, e = _span(start, length)
        ret = p.mprotect(_addr(s), (e - s) * PAGE, prot)
        if (ref.prot[s:e] == UNMAPPED).any():
            assert ret == -errno.ENOMEM
        else:
            assert ret == 0
            ref.prot[s:e] = PROTS[prot]

    def _madvise(self, i, start, length, advice):
        p, ref = self._pick(i)
        s, e = _span(start, length)
        ret = p.madvise(_addr(s), (e - s) * PAGE, advice)
        mapped = ref.prot[s:e] != UNMAPPED
        assert ret == (0 if mapped.all() else -errno.ENOMEM)
        idx = s + np.flatnonzero(mapped)
        if advice == "dontneed":
            ref.tok[idx] = 0
            ref.lazy[idx] = False
        elif advice == "free":
            ref.lazy[idx] |= ref.tok[idx] != 0

    @rule(i=who, start=pages, length=lengths,
          advice=st.sampled_from(["hugepage", "nohugepage", "dontneed"]))
    @_step
    def madvise(self, i, start, length, advice):
        self._madvise(i, start, length, advice)

    @rule(i=who, start=pages, length=lengths)
    @_step
    def madvise_collapse(self, i, start, length):
        p, _ = self._pick(i)
        s, e = _span(start, length)
        p.madvise(_addr(s), (e - s) * PAGE, "collapse")  # any result; content is kept

    @rule(passes=st.integers(1, 4))
    @_step
    def khugepaged(self, passes):
        self.sys.khugepaged.run(passes=passes)

    @rule(i=who, start=pages, length=lengths,
          advice=st.sampled_from(["pageout", "pageout", "free", "cold"]))
    @_step
    def madvise_reclaim(self, i, start, length, advice):
        self._madvise(i, start, length, advice)

    # --- accesses -----------------------------------------------------------------
    @rule(i=who, pick=st.integers(0, N - 1))
    @_step
    def write_page(self, i, pick):
        p, ref = self._pick_with(i, lambda r: r.prot == PROTS["rw"])
        if p is None:
            return
        ok = np.flatnonzero(ref.prot == PROTS["rw"])
        page = int(ok[pick % ok.size])
        tok = p.write(_addr(page))
        self._new_tokens(np.array([tok]))
        ref.tok[page] = tok
        ref.lazy[page] = False

    @rule(i=who, start=pages, length=lengths, stride=st.sampled_from([1, 1, 1, 2, 3, 17]),
          how=st.sampled_from(["pages", "pages", "range", "populate"]))
    @_step
    def write_batch(self, i, start, length, stride, how):
        p, ref = self._pick_with(i, lambda r: r.prot == PROTS["rw"])
        if p is None:
            return
        s, e = _span(start, length)
        ok = np.flatnonzero(ref.prot == PROTS["rw"])
        sel = ok[(ok >= s) & (ok < e) & ((ok - s) % stride == 0)]
        if sel.size == 0:
            sel = ok[start % ok.size : start % ok.size + 1]
        contiguous = sel[-1] - sel[0] + 1 == sel.size
        if how == "populate":
            # MADV_POPULATE_WRITE-like: faults pages in writable, keeps the content
            assert p.touch(BASE, pages=sel, populate=True) == sel.size
            got = np.array([p.peek(_addr(int(pg)))[0] for pg in sel], dtype=np.int64)
            self._expect(ref, sel, got, "populate")
        elif how == "range" and contiguous:
            assert p.touch(_addr(int(sel[0])), sel.size * PAGE) == sel.size
            self._record_writes(p, ref, sel)
        else:
            # duplicates and any order: each page is written once
            pages_arg = np.concatenate([sel[::-1], sel[: stride]])
            assert p.touch(BASE, pages=pages_arg) == sel.size
            self._record_writes(p, ref, sel)

    write_batch_too = write_batch

    @rule(i=who, pick=st.integers(0, N - 1))
    @_step
    def read_page(self, i, pick):
        p, ref = self._pick_with(i, lambda r: r.prot > 0)
        if p is None:
            return
        ok = np.flatnonzero(ref.prot > 0)
        page = int(ok[pick % ok.size])
        got = p.read(_addr(page))
        self._expect(ref, np.array([page]), np.array([got]), f"read of page {page}")

    @rule(i=who, start=pages, length=lengths, stride=st.sampled_from([1, 1, 2, 5]))
    @_step
    def read_batch(self, i, start, length, stride):
        p, ref = self._pick_with(i, lambda r: r.prot > 0)
        if p is None:
            return
        s, e = _span(start, length)
        ok = np.flatnonzero(ref.prot > 0)
        sel = ok[(ok >= s) & (ok < e) & ((ok - s) % stride == 0)]
        if sel.size == 0:
            return
        assert p.touch(BASE, pages=sel, write=False) == sel.size
        got = np.array([p.peek(_addr(int(pg)))[0] for pg in sel], dtype=np.int64)
        self._expect(ref, sel, got, "batched read")

    @rule(i=who, start=pages, length=st.integers(1, 40), write=st.booleans(),
          single=st.booleans())
    @_step
    def bad_access(self, i, start, length, write, single):
        """Accesses that must SIGSEGV: outside any VMA, or against the protection."""
        p, ref = self._pick(i)
        need = PROTS["rw"] if write else PROTS["r"]
        bad = (ref.prot == UNMAPPED) | ((ref.prot & need) != need)
        bad_idx = np.flatnonzero(bad)
        if bad_idx.size == 0:
            return
        if single:
            sel = bad_idx[start % bad_idx.size : start % bad_idx.size + 1]
        else:
            s, e = _span(start, length)
            sel = bad_idx[(bad_idx >= s) & (bad_idx < e)]
            if sel.size == 0:
                return
        before = self._snapshot()
        with pytest.raises(SegvError):
            if single and write:
                p.write(_addr(int(sel[0])))
            elif single:
                p.read(_addr(int(sel[0])))
            else:
                p.touch(BASE, pages=sel, write=write)
        after = self._snapshot()
        for pid in before:
            b, a = before[pid], after[pid]
            assert np.array_equal(b[0], a[0]), "a faulting access changed content"
            assert b[1:] == a[1:], "a faulting access changed the mapping"

    # --- processes ----------------------------------------------------------------
    @rule(i=who)
    @_step
    def fork(self, i):
        if len(self.procs) >= MAX_PROCS:
            return  # (a precondition would make hypothesis retry and discard draws)
        p, ref = self._pick(i)
        child = p.fork()
        assert child.pid not in self.procs
        self.procs[child.pid] = child
        self.refs[child.pid] = ref.copy()

    @rule(i=who)
    @_step
    def exit_child(self, i):
        pids = sorted(pid for pid in self.procs if pid != self.root)
        if not pids:
            return
        pid = pids[i % len(pids)]
        self.procs.pop(pid).exit()
        del self.refs[pid]
        assert pid not in self.sys.processes

    # --- system -------------------------------------------------------------------
    @rule(change=setting_changes)
    @_step
    def set_setting(self, change):
        path, val = change
        self.sys.settings.write(path, val)

    @rule(nr=st.one_of(st.none(), st.integers(1, 4)))
    @_step
    def shrink(self, nr):
        self.sys.shrink_deferred_split(nr)

    @rule(buddy=st.sets(st.integers(1, PMD_ORDER), max_size=4),
          memcg=st.sets(st.integers(1, PMD_ORDER), max_size=2))
    @_step
    def fail_allocations(self, buddy, memcg):
        """Injected large-folio allocation and charge failures (never order 0)."""
        self.sys.buddy.fail_orders = set(buddy)
        self.sys.memcg.fail_orders = set(memcg)

    @rule(i=who, mode=st.sampled_from(["completely", "except-advised", "none"]))
    @_step
    def prctl_thp_disable(self, i, mode):
        p, _ = self._pick(i)
        assert p.prctl_thp_disable(mode) == 0

    @rule(i=who, start=pages, length=lengths, mode=st.sampled_from(["missing", "wp", "minor"]))
    @_step
    def uffd_register(self, i, start, length, mode):
        """Registration only (no handler): faults fall back to order 0, content is kept."""
        p, _ = self._pick(i)
        s, e = _span(start, length)
        assert p.uffd_register(_addr(s), (e - s) * PAGE, mode) == 0

    # --- checks -------------------------------------------------------------------
    def _compare_all(self) -> None:
        """``Process.peek`` of every page of every arena against the reference."""
        for pid, p in self.procs.items():
            ref = self.refs[pid]
            self._expect(ref, np.arange(N), p.peek(BASE, N * PAGE), f"pid {pid} arena")
            mapped = int(np.count_nonzero(ref.prot != UNMAPPED))
            assert p.rss_anon + p.rss_swap <= mapped, f"pid {pid}: RSS above the mapped size"

    def _check_write_protected(self) -> None:
        """No PTE or huge PMD is writable inside a VMA without ``VM_WRITE``."""
        for p in self.procs.values():
            pt = p.mm.pt
            for vma in p.mm.vmas:
                if vma.flags & VM_WRITE:
                    continue
                for pmd in range(vma.start >> PMD_ORDER, ((vma.end - 1) >> PMD_ORDER) + 1):
                    huge = pt.huge.get(pmd)
                    if huge is not None:
                        assert not huge[1] & F_WRITE, f"pid {p.pid}: writable PMD {pmd}"
                    row = pt.row(pmd)
                    if row is None:
                        continue
                    ws = pmd << PMD_ORDER
                    lo, hi = max(vma.start, ws) - ws, min(vma.end, ws + PMD_PAGES) - ws
                    w = np.flatnonzero(pt.flags[row, lo:hi] & F_WRITE)
                    assert not w.size, f"pid {p.pid}: writable PTEs at {ws + lo + w[:4]}"

    @invariant()
    def consistent(self):
        self.sys.check()
        assert set(self.sys.processes) == set(self.procs)
        self._check_write_protected()
        self.steps += 1
        if self.steps % COMPARE_EVERY == 0:
            self._compare_all()
        self.clean = True

    def teardown(self):
        # Compare once more at the end, unless a failing step left the machine dirty
        # (a second error would hide the first one).
        if not self.clean:
            return
        if self.steps % COMPARE_EVERY:
            self._compare_all()
        # When every process has exited nothing may be left behind.
        for pid in sorted(self.procs, reverse=True):
            self.procs.pop(pid).exit()
        system = self.sys
        assert not system.processes
        system.khugepaged.lru_batch.drain()  # its transient references
        system.check()
        assert system.folios.nr_live == 0, f"{system.folios.nr_live} folios leaked"
        assert system.memcg.usage == 0
        assert not system.deferred
        assert system.swap.nr_free == system.swap.nr_slots, "swap slots leaked"


THPMachine.TestCase.settings = settings(
    max_examples=2000,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_thp_machine = THPMachine.TestCase
