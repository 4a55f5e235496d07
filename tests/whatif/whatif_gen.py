"""Random small snapshots and settings for the whatif property tests."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from thpsim.snapshot.core import HUGE_ZERO, NONE, PRESENT, SWAP, ZERO, Snapshot, SnapshotVma

NR = 512
PS = 4096


def random_snapshot(seed: int, n_vmas: int, mix: int) -> Snapshot:
    """A few VMAs of 1-4 PMDs (sometimes unaligned or adjacent) with random page
    states, large folios (aligned or not), PMD mappings, huge zero PMDs, swap and
    shared pages.  ``mix`` picks how dense/large-folio-heavy the windows are."""
    rng = np.random.default_rng(seed)
    vmas = []
    addr = (1 << 30) + int(rng.integers(0, 4)) * (1 << 30) // 4
    for _ in range(n_vmas):
        npmd = int(rng.integers(1, 5))
        shift = int(rng.choice([0, 0, 0, 16, 300]))
        start = addr + shift * PS
        size = npmd * NR - (int(rng.integers(0, 40)) if rng.random() < 0.2 else 0)
        flags = "rd wr mr mw me ac" + str(rng.choice(["", "", "", " hg", " hg", " nh"]))
        if rng.random() < 0.1:
            flags = "rd mr mw me ac"
        name = str(rng.choice(["", "[heap]", "", "/usr/lib/libc.so"])) if rng.random() < 0.2 \
            else ""
        vmas.append(SnapshotVma(start, start + size * PS, flags, None, name))
        addr = start + size * PS + (0 if rng.random() < 0.3 else int(rng.integers(1, 3)) * NR * PS)
    n = sum((v.end - v.start) // PS for v in vmas)
    state = np.zeros(n, np.uint8)
    order = np.full(n, -1, np.int8)
    fi = np.zeros(n, np.int32)
    pm = np.zeros(n, bool)
    mc = np.zeros(n, np.uint16)
    pos = 0
    for v in vmas:
        size = (v.end - v.start) // PS
        vpn0 = v.start // PS
        sl = slice(pos, pos + size)
        s, o, f, m, pmv = state[sl], order[sl], fi[sl], mc[sl], pm[sl]
        dens = rng.choice([0.0, 0.05, 0.5, 0.8, 0.95, 1.0], p=[.1, .1, .2, .2, .2, .2]) \
            if mix % 2 else rng.random()
        u = rng.random(size)
        s[u < dens] = PRESENT
        r2 = rng.random(size)
        s[(s == NONE) & (r2 < 0.3)] = ZERO
        s[(s == NONE) & (r2 > 0.97)] = SWAP
        o[s == PRESENT] = 0
        # large folios at random places (some unaligned / overlapping -> split)
        for _ in range(int(rng.integers(0, 6 + 6 * (mix % 3)))):
            k = int(rng.choice([1, 2, 3, 4, 5, 9]))
            n_k = 1 << k
            at = int(rng.integers(0, max(1, size - n_k + 1)))
            if rng.random() < 0.8:
                at -= (vpn0 + at) % n_k
                at = max(at, 0) if (vpn0 + max(at, 0)) % n_k == 0 else at + n_k
            if at < 0 or at + n_k > size:
                continue
            blk = slice(at, at + n_k)
            s[blk] = PRESENT
            o[blk] = k
            f[blk] = np.arange(n_k)
            holes = rng.random(n_k) < rng.choice([0.0, 0.0, 0.3])
            s[blk][holes] = NONE
            o[blk][holes] = -1
            f[blk][holes] = 0
            if k == 9 and not holes.any() and rng.random() < 0.6:
                pmv[blk] = True
        # a whole huge zero window now and then
        if rng.random() < 0.15:
            first = (-vpn0) % NR
            if first + NR <= size:
                w = slice(first, first + NR)
                s[w] = HUGE_ZERO
                o[w] = -1
                f[w] = 0
                pmv[w] = False
        pres = s == PRESENT
        m[pres] = 1
        sh = pres & (rng.random(size) < rng.choice([0.0, 0.0, 0.01, 0.2]))
        m[sh] = 2
        pmv[~pres] = False
        pos += size
    snap = Snapshot(vmas, state, order, fi, pm, mc, mc == 1)
    snap.validate()
    return snap


snapshots = st.builds(random_snapshot, st.integers(0, 2**32 - 1), st.integers(1, 3),
                      st.integers(0, 5))

_SIZES = [16, 32, 64, 128, 256, 512, 1024]


@st.composite
def combos(draw):
    """(policy, settings overrides)."""
    policy = draw(st.sampled_from(["legacy", "v11", "linux-7.2"]))
    s = {"enabled": draw(st.sampled_from(["always"] * 6 + ["madvise", "never"])),
         "khugepaged/max_ptes_none": str(draw(st.sampled_from([0, 255, 511, 511, 100]))),
         "khugepaged/max_ptes_swap": str(draw(st.sampled_from([0, 64, 511]))),
         "khugepaged/max_ptes_shared": str(draw(st.sampled_from([0, 256, 511]))),
         "khugepaged/pages_to_scan": str(draw(st.sampled_from([4096, 1024, 600, 64]))),
         "hugepages-2048kB/enabled": draw(st.sampled_from(["inherit", "inherit", "never",
                                                           "madvise"]))}
    for kb in draw(st.lists(st.sampled_from(_SIZES), max_size=5, unique=True)):
        s[f"hugepages-{kb}kB/enabled"] = draw(st.sampled_from(["always", "madvise"]))
    return policy, s


def shared_heavy(seed: int, n_vmas: int, share: float) -> Snapshot:
    """:func:`random_snapshot` with many shared pages: mTHP attempts then fail after
    isolating pages, which leaves them in the LRU batch (the hybrid engine's case)."""
    snap = random_snapshot(seed, n_vmas, 1)
    rng = np.random.default_rng(seed + 1)
    present = snap.state == PRESENT
    snap.mapcount[present & (rng.random(snap.nr_pages) < share)] = 2
    snap.exclusive[:] = snap.mapcount == 1
    return snap


shared_snapshots = st.builds(shared_heavy, st.integers(0, 2**32 - 1), st.integers(1, 3),
                             st.sampled_from([0.05, 0.2, 0.5]))


@st.composite
def mthp_combos(draw):
    """Combinations with small mTHP sizes enabled (walks with many attempts)."""
    policy, s = draw(combos())
    s["enabled"] = "always"
    for kb in draw(st.lists(st.sampled_from([16, 32, 64]), min_size=1, max_size=3,
                            unique=True)):
        s[f"hugepages-{kb}kB/enabled"] = "always"
    return policy, s
