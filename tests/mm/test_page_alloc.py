"""Tests of the buddy allocator and the memcg charge limit.

Expected free-block layouts are either worked out by hand in the comments or
computed by :func:`oracle_buddyinfo`, a brute-force reference that knows
nothing of free lists: in a correctly coalesced buddy allocator the free
blocks are exactly the maximal naturally aligned runs of free pages (of order
at most ``max_order``) that stay inside one node.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from thpsim.mm.geometry import GEOM_4K, GEOM_64K
from thpsim.mm.page_alloc import BuddyAllocator, MemCgroup

# ---------------------------------------------------------------------------- reference model


def even_bounds(total: int, nr_nodes: int) -> np.ndarray:
    return np.array([i * total // nr_nodes for i in range(nr_nodes + 1)], dtype=np.int64)


def oracle_buddyinfo(free: np.ndarray, bounds: np.ndarray, max_order: int) -> np.ndarray:
    """Free block counts per (node, order) implied by the set of free pages alone."""
    total = free.size
    nr_nodes = bounds.size - 1
    counts = np.zeros((nr_nodes, max_order + 1), dtype=np.int64)
    covered = np.zeros(total, dtype=bool)
    csum = np.concatenate([[0], np.cumsum(free.astype(np.int64))])
    for o in range(max_order, -1, -1):
        size = 1 << o
        starts = np.arange(0, total - size + 1, size, dtype=np.int64)
        ends = starts + size
        ns = np.searchsorted(bounds, starts, side="right") - 1
        ne = np.searchsorted(bounds, ends - 1, side="right") - 1
        ok = (ns == ne) & (csum[ends] - csum[starts] == size) & ~covered[starts]
        np.add.at(counts, (ns[ok], o), 1)
        covered[(starts[ok][:, None] + np.arange(size)).ravel()] = True
    return counts


def node_has_run(free: np.ndarray, lo: int, hi: int, order: int) -> bool:
    """Is there a naturally aligned, entirely free run of 2**order pages in [lo, hi)?"""
    size = 1 << order
    first = -(-lo // size) * size
    return any(free[s : s + size].all() for s in range(first, hi - size + 1, size))


def fresh_free_map(a: BuddyAllocator) -> np.ndarray:
    return np.array([a.is_free(p) for p in range(a.total_pages)])


# ---------------------------------------------------------------------------- layout


def test_fresh_layout_hand_computed() -> None:
    # 5 * 1024 + 37 pages: five order-10 blocks, then 37 = 32 + 4 + 1 at 5120, 5152, 5156
    a = BuddyAllocator(5 * 1024 + 37, max_order=10)
    a.check()
    expect = [0] * 11
    expect[10], expect[5], expect[2], expect[0] = 5, 1, 1, 1
    assert a.buddyinfo().tolist() == [expect]
    assert [a.free_blocks(o) for o in range(11)] == expect
    assert a.nr_free_pages() == 5 * 1024 + 37
    assert a._free_order[5120] == 5 and a._free_order[5152] == 2 and a._free_order[5156] == 0
    assert all(a.is_free(p) for p in (0, 1023, 5120, 5156))
    assert a.reserved_pages == 0


def test_for_geometry_and_memory_budget() -> None:
    assert BuddyAllocator.for_geometry(4096, GEOM_4K).max_order == 10
    assert BuddyAllocator.for_geometry(1 << 14, GEOM_64K).max_order == 13
    big = BuddyAllocator(1 << 24)  # 64 GiB of 4K pages
    assert big._free_order.nbytes <= 2 * big.total_pages
    assert big.free_blocks(10) == (1 << 24) >> 10
    assert big.nr_free_pages() == 1 << 24


def test_constructor_validation() -> None:
    with pytest.raises(ValueError):
        BuddyAllocator(0)
    with pytest.raises(ValueError):
        BuddyAllocator(10, nr_nodes=11)


# ---------------------------------------------------------------------------- scalar paths


def test_split_returns_buddies_to_lower_lists() -> None:
    a = BuddyAllocator(1024, max_order=10)
    assert a.alloc(0) == 0
    # splitting the order-10 block leaves one block at each order 0..9: 1, 2, 4, ..., 512
    assert a.buddyinfo().tolist() == [[1] * 10 + [0]]
    for o in range(10):
        assert a._free_order[1 << o] == o
    assert not a.is_free(0)
    assert all(a.is_free(p) for p in range(1, 1024))
    # smallest order first: no further split is needed for these
    assert a.alloc(0) == 1
    assert a.alloc(1) == 2
    assert a.alloc(3) == 8
    a.check()
    assert a.nr_free_pages() == 1024 - 1 - 1 - 2 - 8


def test_alloc_free_round_trip_restores_initial_state() -> None:
    total = 3 * 1024 + 100  # 100 = 64 + 32 + 4
    a = BuddyAllocator(total, max_order=10)
    expect = [[0] * 11]
    expect[0][10], expect[0][6], expect[0][5], expect[0][2] = 3, 1, 1, 1
    assert a.buddyinfo().tolist() == expect
    rng = np.random.default_rng(1)
    held = []
    while True:
        order = int(rng.integers(0, 6))
        pfn = a.alloc(order)
        if pfn < 0:
            break
        held.append((pfn, order))
    a.check()
    for i in rng.permutation(len(held)):
        a.free(*held[i])
    a.check()
    assert a.buddyinfo().tolist() == expect
    assert a.nr_free_pages() == total


def test_alignment_and_disjointness_of_every_block() -> None:
    a = BuddyAllocator(8192 + 777, max_order=10, nr_nodes=2)
    rng = np.random.default_rng(7)
    owned = np.zeros(a.total_pages, dtype=bool)
    for _ in range(2000):
        order = int(rng.integers(0, 11))
        pfn = a.alloc(order)
        if pfn < 0:
            continue
        assert pfn % (1 << order) == 0
        assert not owned[pfn : pfn + (1 << order)].any()
        owned[pfn : pfn + (1 << order)] = True
    a.check()
    free = ~owned
    assert a.nr_free_pages() == int(free.sum())
    np.testing.assert_array_equal(
        a.buddyinfo(), oracle_buddyinfo(free, even_bounds(a.total_pages, 2), 10)
    )


def test_exhaustion_returns_minus_one() -> None:
    a = BuddyAllocator(64, max_order=3)
    got = [a.alloc(3) for _ in range(8)]
    assert sorted(got) == list(range(0, 64, 8))
    assert a.alloc(3) == -1
    assert a.alloc(0) == -1
    assert not a.can_alloc(0)
    assert a.nr_free_pages() == 0
    assert a.alloc_bulk(0, 5).size == 0
    a.free(8, 3)
    assert a.can_alloc(3) and not a.can_alloc(4)
    assert a.alloc(4) == -1  # above max_order: fails like order > MAX_PAGE_ORDER
    with pytest.raises(ValueError):
        a.alloc(-1)


def test_free_validation() -> None:
    a = BuddyAllocator(64, max_order=3)
    p = a.alloc(2)
    with pytest.raises(ValueError):
        a.free(p + 1, 2)  # misaligned
    with pytest.raises(ValueError):
        a.free(p + 4, 2)  # already free
    with pytest.raises(ValueError):
        a.free(p, 4)  # order above max_order
    a.free(p, 2)
    with pytest.raises(ValueError):
        a.free(p, 2)  # double free
    with pytest.raises(ValueError):
        a.free(p, 0)  # inside a free block
    a.check()
    assert a.nr_free_pages() == 64


def test_free_bulk_validation_leaves_state_unchanged() -> None:
    a = BuddyAllocator(256, max_order=4)
    pfns = a.alloc_bulk(0, 100)
    before = a.buddyinfo().copy()
    with pytest.raises(ValueError):
        a.free_bulk(np.array([pfns[0], pfns[0]]), 0)
    with pytest.raises(ValueError):
        never = np.setdiff1d(np.arange(256), pfns)[0]  # never handed out, so still free
        a.free_bulk(np.array([pfns[0], never]), 0)
    with pytest.raises(ValueError):
        a.free_bulk(np.array([1]), 1)  # misaligned
    np.testing.assert_array_equal(a.buddyinfo(), before)
    a.check()
    a.free_bulk(np.array([], dtype=np.int64), 0)
    a.free_bulk(pfns, 0)
    assert a.buddyinfo().tolist() == [[0] * 4 + [16]]


# ---------------------------------------------------------------------------- bulk paths


@pytest.mark.parametrize(
    ("total", "nr_nodes", "order", "count"),
    [
        (4096, 1, 0, 1000),
        (4096, 1, 2, 333),
        (5000, 3, 0, 4999),
        (5000, 3, 1, 1234),
        (5000, 2, 3, 10_000),  # more than available
        (1 << 14, 1, 9, 7),
    ],
)
def test_bulk_matches_scalar(total: int, nr_nodes: int, order: int, count: int) -> None:
    s = BuddyAllocator(total, max_order=10, nr_nodes=nr_nodes)
    b = BuddyAllocator(total, max_order=10, nr_nodes=nr_nodes)
    # start both from the same partially used state
    for a in (s, b):
        for o in (0, 3, 1, 5):
            a.alloc(o)
    scalar = []
    for _ in range(count):
        p = s.alloc(order)
        if p < 0:
            break
        scalar.append(p)
    bulk = b.alloc_bulk(order, count)
    assert bulk.dtype == np.int64
    assert bulk.size == len(scalar)
    assert np.unique(bulk).size == bulk.size
    assert np.all(bulk % (1 << order) == 0)
    np.testing.assert_array_equal(s.buddyinfo(), b.buddyinfo())
    s.check()
    b.check()
    # freeing: scalar frees on one, a bulk free on the other, same resulting free lists
    for p in scalar:
        s.free(p, order)
    b.free_bulk(bulk, order)
    s.check()
    b.check()
    np.testing.assert_array_equal(s.buddyinfo(), b.buddyinfo())
    assert b.nr_free_pages() == total - 1 - 8 - 2 - 32


def test_bulk_on_fragmented_memory_matches_scalar() -> None:
    s = BuddyAllocator(1 << 13)
    b = BuddyAllocator(1 << 13)
    for a in (s, b):
        a.fragment(0.4, max_free_order=1, seed=3)
        # free some reserved memory back so that several orders are populated
        a.release_reserved(0.3, seed=4)
    np.testing.assert_array_equal(s.buddyinfo(), b.buddyinfo())
    scalar = [s.alloc(0) for _ in range(1500)]
    bulk = b.alloc_bulk(0, 1500)
    assert -1 not in scalar
    np.testing.assert_array_equal(s.buddyinfo(), b.buddyinfo())
    for p in scalar[::2]:
        s.free(p, 0)
    b.free_bulk(bulk[::2], 0)
    s.check()
    b.check()
    assert s.nr_free_pages() == b.nr_free_pages()


def test_bulk_free_coalesces_completely() -> None:
    a = BuddyAllocator(1 << 16, max_order=10)
    pfns = a.alloc_bulk(0, 1 << 16)
    assert np.array_equal(np.sort(pfns), np.arange(1 << 16))
    assert a.nr_free_pages() == 0
    rng = np.random.default_rng(0)
    a.free_bulk(pfns[rng.permutation(pfns.size)], 0)
    a.check()
    assert a.buddyinfo().tolist() == [[0] * 10 + [64]]


def test_bulk_free_merges_with_already_free_buddies() -> None:
    a = BuddyAllocator(16, max_order=4)
    pfns = a.alloc_bulk(0, 16)
    a.free_bulk(pfns[pfns % 2 == 0], 0)  # 8 lone order-0 blocks
    assert a.buddyinfo().tolist() == [[8, 0, 0, 0, 0]]
    a.free_bulk(pfns[pfns % 2 == 1], 0)  # each meets an old buddy, up to one order-4 block
    assert a.buddyinfo().tolist() == [[0, 0, 0, 0, 1]]
    a.check()


def test_bulk_speed_smoke() -> None:
    import time

    a = BuddyAllocator(1 << 21)
    t0 = time.perf_counter()
    pfns = a.alloc_bulk(0, 1_000_000)
    t1 = time.perf_counter()
    a.free_bulk(pfns, 0)
    t2 = time.perf_counter()
    assert pfns.size == 1_000_000
    assert a.nr_free_pages() == 1 << 21
    # generous bounds: only catches an accidental per-page Python loop
    assert t1 - t0 < 3.0 and t2 - t1 < 3.0


def test_long_mixed_workload_against_oracle() -> None:
    """Scalar and bulk operations interleaved, with stale free-list entries piling up."""
    total, nr_nodes = (1 << 14) + 333, 2
    a = BuddyAllocator(total, max_order=10, nr_nodes=nr_nodes)
    a._stale_slack = 8
    rng = np.random.default_rng(42)
    owned = np.zeros(total, dtype=bool)
    held: dict[int, list[int]] = {o: [] for o in range(5)}
    for step in range(600):
        order = int(rng.integers(0, 5))
        kind = rng.integers(0, 4)
        if kind == 0:
            p = a.alloc(order, node=int(rng.integers(0, nr_nodes)))
            got = [p] if p >= 0 else []
        elif kind == 1:
            got = a.alloc_bulk(order, int(rng.integers(1, 200))).tolist()
        elif kind == 2 and held[order]:
            i = int(rng.integers(0, len(held[order])))
            p = held[order].pop(i)
            a.free(p, order)
            owned[p : p + (1 << order)] = False
            got = []
        else:
            lst = held[order]
            rng.shuffle(lst)
            k = len(lst) // 2
            a.free_bulk(np.array(lst[:k], dtype=np.int64), order)
            for p in lst[:k]:
                owned[p : p + (1 << order)] = False
            held[order] = lst[k:]
            got = []
        for p in got:
            assert p % (1 << order) == 0 and not owned[p : p + (1 << order)].any()
            owned[p : p + (1 << order)] = True
            held[order].append(p)
        if step % 50 == 0:
            a.check()
    a.check()
    np.testing.assert_array_equal(
        a.buddyinfo(), oracle_buddyinfo(~owned, even_bounds(total, nr_nodes), 10)
    )
    for lists in a._lists:
        for o, fl in enumerate(lists):  # compaction keeps stale entries bounded
            assert fl.n <= 2 * (total >> o) + 8 + 1


def test_stale_entries_stay_bounded() -> None:
    # each alloc splits an order-10 block and each free merges it back, leaving
    # one stale entry per lower order per cycle unless the lists are compacted
    a = BuddyAllocator(1024)
    for _ in range(5000):
        a.free(a.alloc(0), 0)
    a.check()
    assert max(fl.n for fl in a._lists[0]) <= 2 + 64 + 1
    assert a.buddyinfo().tolist() == [[0] * 10 + [1]]


# ---------------------------------------------------------------------------- nodes


def test_node_layout_hand_computed() -> None:
    a = BuddyAllocator(3000, max_order=10, nr_nodes=3)  # nodes [0,1000) [1000,2000) [2000,3000)
    a.check()
    assert [a.node_of(p) for p in (0, 999, 1000, 1999, 2000, 2999)] == [0, 0, 1, 1, 2, 2]
    info = a.buddyinfo()
    # node 0: 1000 = 512@0 + 256@512 + 128@768 + 64@896 + 32@960 + 8@992
    assert info[0].tolist() == [0, 0, 0, 1, 0, 1, 1, 1, 1, 1, 0]
    # node 1: 8@1000 16@1008 512@1024 256@1536 128@1792 64@1920 16@1984
    assert info[1].tolist() == [0, 0, 0, 1, 2, 0, 1, 1, 1, 1, 0]
    assert [a.nr_free_pages(n) for n in range(3)] == [1000, 1000, 1000]


def test_blocks_never_cross_nodes() -> None:
    a = BuddyAllocator(2000, max_order=10, nr_nodes=2)
    assert a.free_blocks(10) == 0  # 1000 pages per node: no order-10 block fits
    pfns = a.alloc_bulk(0, 2000)
    assert pfns.size == 2000
    a.free(999, 0)  # buddy 998 is allocated
    a.free(1000, 0)  # buddy 1001 is allocated
    a.free(998, 0)  # 998 + 999 merge into an order-1 block; 1000 stays alone
    assert a.buddyinfo().tolist() == [[0, 1] + [0] * 9, [1] + [0] * 10]
    # 992..999 (order 3) merges no further: its buddy 1000..1007 is in node 1
    a.free_bulk(np.arange(992, 998), 0)
    a.free_bulk(np.arange(1001, 1008), 0)
    assert a.buddyinfo().tolist() == [[0, 0, 0, 1] + [0] * 7, [0, 0, 0, 1] + [0] * 7]
    a.check()


def test_node_preference_and_fallback() -> None:
    a = BuddyAllocator(3000, max_order=10, nr_nodes=3)
    taken = a.alloc_bulk(0, 1000, node=1, fallback=False)
    assert taken.size == 1000 and np.all((taken >= 1000) & (taken < 2000))
    assert a.alloc(0, node=1, fallback=False) == -1
    assert not a.can_alloc(0, node=1, fallback=False)
    p = a.alloc(0, node=1)  # falls back to node 0 first (ascending order of the others)
    assert a.node_of(p) == 0
    q = a.alloc(2)  # any node: lowest first
    assert a.node_of(q) == 0
    r = a.alloc(0, node=2)
    assert a.node_of(r) == 2
    # bulk with fallback: the preferred node is drained completely before the others
    rest = a.alloc_bulk(0, 1500, node=2)
    assert rest.size == 1500
    assert np.all(rest[:999] >= 2000)
    assert np.all(rest[999:] < 1000)
    a.check()
    with pytest.raises(ValueError):
        a.alloc(0, node=3)


# ---------------------------------------------------------------------------- fragment()


def test_fragment_order0_blocks_higher_orders() -> None:
    a = BuddyAllocator(4096)
    a.fragment(0.5, 0, seed=11)
    a.check()
    assert a.nr_free_pages() == 2048
    assert a.reserved_pages == 2048
    assert a.free_blocks(0) == 2048
    assert not a.can_alloc(1)
    assert a.alloc(1) == -1
    assert a.alloc(9) == -1
    assert a.alloc_bulk(1, 4).size == 0
    free = fresh_free_map(a)
    assert free.sum() == 2048
    assert not np.any(free[0::2] & free[1::2])  # no two free buddies
    assert a.alloc(0) >= 0


def test_fragment_higher_order_and_determinism() -> None:
    a = BuddyAllocator(4096)
    a.fragment(0.25, max_free_order=2, seed=5)
    a.check()
    # 1024 order-2 blocks, a quarter of them free
    assert a.buddyinfo().tolist() == [[0, 0, 256] + [0] * 8]
    assert a.alloc(3) == -1 and a.alloc(2) >= 0
    b = BuddyAllocator(4096)
    b.fragment(0.25, max_free_order=2, seed=5)
    c = BuddyAllocator(4096)
    c.fragment(0.25, max_free_order=2, seed=6)
    d = BuddyAllocator(4096)
    d.fragment(0.25, max_free_order=2, seed=5)
    fb, fc = fresh_free_map(b), fresh_free_map(c)
    assert fb.sum() == fc.sum() == 1024
    assert not np.array_equal(fb, fc)  # the seed matters ...
    assert np.array_equal(fb, fresh_free_map(d))  # ... and is all that matters


def test_fragment_with_ragged_edges_reserves_small_blocks() -> None:
    a = BuddyAllocator(1003, max_order=10)
    fresh = a.buddyinfo().copy()
    a.fragment(0.5, max_free_order=3, seed=0)
    a.check()
    # 1003 = 125 order-3 blocks + an order-1 block at 1000 + an order-0 block at 1002;
    # the two small ones are reserved, and 62 (round(62.5)) order-3 blocks are freed
    assert a.buddyinfo().tolist() == [[0, 0, 0, 62] + [0] * 7]
    assert a.nr_free_pages() == 62 * 8
    assert a.reserved_pages == 1003 - 62 * 8
    assert not a.is_free(1000) and not a.is_free(1002)
    assert a.release_reserved() == 1003 - 62 * 8
    a.check()
    np.testing.assert_array_equal(a.buddyinfo(), fresh)


def test_fragment_release_restores_fresh_layout() -> None:
    a = BuddyAllocator(5000, nr_nodes=2)
    fresh = a.buddyinfo().copy()
    a.fragment(0.3, seed=2)
    reserved = a.reserved_pages
    assert a.release_reserved(1.0) == reserved
    assert a.reserved_pages == 0
    a.check()
    np.testing.assert_array_equal(a.buddyinfo(), fresh)


def test_fragment_rejects_bad_use() -> None:
    a = BuddyAllocator(1024)
    with pytest.raises(ValueError):
        a.fragment(0.6)
    a.alloc(0)
    with pytest.raises(ValueError):
        a.fragment(0.5)  # not fresh


# ---------------------------------------------------------------------------- failure injection


def test_fail_orders() -> None:
    a = BuddyAllocator(4096)
    a.fail_orders = {9}
    assert a.alloc(9) == -1
    assert a.alloc_bulk(9, 2).size == 0
    assert not a.can_alloc(9)
    assert a.nr_free_pages() == 4096
    assert a.alloc(8) >= 0 and a.alloc(10) >= 0
    a.fail_orders.clear()
    assert a.alloc(9) >= 0
    a.check()


# ---------------------------------------------------------------------------- check()


def test_check_detects_overlap() -> None:
    a = BuddyAllocator(1024)
    a._free_order[4] = 2  # inside the free order-10 block at 0
    a._lists[0][2].push(4)
    a._lists[0][2].count += 1
    with pytest.raises(AssertionError, match="overlap"):
        a.check()


def test_check_detects_misalignment() -> None:
    a = BuddyAllocator(1024)
    a.alloc_bulk(0, 1024)
    a._free_order[6] = 2
    a._lists[0][2].push(6)
    a._lists[0][2].count += 1
    with pytest.raises(AssertionError, match="misaligned"):
        a.check()


def test_check_detects_missed_coalescing() -> None:
    a = BuddyAllocator(16, max_order=4)
    a.alloc_bulk(0, 16)
    for p in (4, 5):  # two free order-0 buddies that were never merged
        a._free_order[p] = 0
        a._lists[0][0].push(p)
    a._lists[0][0].count += 2
    with pytest.raises(AssertionError, match="merged"):
        a.check()


def test_check_detects_count_mismatch() -> None:
    a = BuddyAllocator(1024)
    a.alloc(0)
    a._lists[0][3].count += 1
    with pytest.raises(AssertionError, match="count"):
        a.check()


def test_check_detects_node_crossing() -> None:
    a = BuddyAllocator(2048, max_order=11, nr_nodes=2)  # nodes [0,1024) and [1024,2048)
    assert a.buddyinfo().tolist() == [[0] * 10 + [1, 0]] * 2
    a.alloc_bulk(0, 2048)
    a._free_order[0] = 11  # an aligned order-11 block [0, 2048) spanning both nodes
    a._lists[0][11].push(0)
    a._lists[0][11].count += 1
    with pytest.raises(AssertionError, match="node boundary"):
        a.check()


def test_check_detects_unlisted_free_block() -> None:
    a = BuddyAllocator(1024)
    a.alloc(0)
    a._lists[0][5].n = 0  # the block at 32 loses its list entry, counts unchanged
    with pytest.raises(AssertionError, match="stack"):
        a.check()


# ---------------------------------------------------------------------------- stateful test


class BuddyMachine(RuleBasedStateMachine):
    """Random alloc/free sequences checked against a per-page ownership model."""

    @initialize(
        total=st.integers(1, 300),
        max_order=st.integers(0, 5),
        nr_nodes=st.integers(1, 3),
        frag=st.sampled_from([None, (0.5, 0), (0.3, 1), (0.2, 2)]),
        seed=st.integers(0, 3),
        stale_slack=st.sampled_from([0, 3, 64]),
    )
    def setup(
        self,
        total: int,
        max_order: int,
        nr_nodes: int,
        frag: tuple[float, int] | None,
        seed: int,
        stale_slack: int,
    ) -> None:
        assume(nr_nodes <= total)
        self.a = BuddyAllocator(total, max_order=max_order, nr_nodes=nr_nodes)
        self.a._stale_slack = stale_slack  # small values exercise free-list compaction
        self.bounds = even_bounds(total, nr_nodes)
        self.reserved = np.zeros(total, dtype=bool)
        if frag is not None and frag[1] <= max_order:
            self.a.fragment(frag[0], frag[1], seed=seed)
            for order, heads in self.a._reserved.items():
                for h in heads.tolist():
                    self.reserved[h : h + (1 << order)] = True
        self.owned = np.zeros(total, dtype=bool)
        self.held: list[tuple[int, int]] = []

    def free_map(self) -> np.ndarray:
        return ~self.owned & ~self.reserved

    def node_order(self, node: int | None, fallback: bool) -> list[int]:
        nodes = list(range(self.a.nr_nodes))
        if node is None:
            return nodes
        return [node, *(n for n in nodes if n != node)] if fallback else [node]

    def take(self, pfn: int, order: int) -> None:
        size = 1 << order
        assert pfn % size == 0
        assert not self.owned[pfn : pfn + size].any(), "pfn handed out twice"
        assert not self.reserved[pfn : pfn + size].any(), "reserved pfn handed out"
        self.owned[pfn : pfn + size] = True
        self.held.append((pfn, order))

    @rule(order=st.integers(0, 6), node=st.none() | st.integers(0, 2), fallback=st.booleans())
    def alloc(self, order: int, node: int | None, fallback: bool) -> None:
        node = None if node is None else node % self.a.nr_nodes
        free = self.free_map()
        candidates = [
            n
            for n in self.node_order(node, fallback)
            if order <= self.a.max_order
            and node_has_run(free, int(self.bounds[n]), int(self.bounds[n + 1]), order)
        ]
        pfn = self.a.alloc(order, node=node, fallback=fallback)
        if not candidates:
            assert pfn == -1
            return
        assert pfn >= 0
        assert self.a.node_of(pfn) == candidates[0]
        assert self.bounds[candidates[0]] <= pfn < self.bounds[candidates[0] + 1]
        self.take(pfn, order)

    @rule(order=st.integers(0, 4), count=st.integers(0, 80), node=st.none() | st.integers(0, 2))
    def alloc_bulk(self, order: int, count: int, node: int | None) -> None:
        node = None if node is None else node % self.a.nr_nodes
        info = oracle_buddyinfo(self.free_map(), self.bounds, self.a.max_order)
        avail = 0
        if order <= self.a.max_order:
            avail = sum(
                int(info[n, o]) << (o - order)
                for n in range(self.a.nr_nodes)
                for o in range(order, self.a.max_order + 1)
            )
        pfns = self.a.alloc_bulk(order, count, node=node)
        assert pfns.size == min(count, avail)
        for p in pfns.tolist():
            self.take(p, order)

    @rule(data=st.data())
    def free_one(self, data: st.DataObject) -> None:
        if not self.held:
            return
        i = data.draw(st.integers(0, len(self.held) - 1))
        pfn, order = self.held.pop(i)
        self.a.free(pfn, order)
        self.owned[pfn : pfn + (1 << order)] = False

    @rule(data=st.data(), order=st.integers(0, 4))
    def free_bulk(self, data: st.DataObject, order: int) -> None:
        idx = [i for i, (_, o) in enumerate(self.held) if o == order]
        if not idx:
            return
        chosen = data.draw(st.lists(st.sampled_from(idx), unique=True, min_size=1))
        pfns = np.array([self.held[i][0] for i in chosen], dtype=np.int64)
        self.a.free_bulk(pfns, order)
        for p in pfns.tolist():
            self.owned[p : p + (1 << order)] = False
        keep = set(chosen)
        self.held = [h for i, h in enumerate(self.held) if i not in keep]

    @rule(data=st.data())
    def double_free_is_rejected(self, data: st.DataObject) -> None:
        free = np.flatnonzero(self.free_map())
        if free.size == 0:
            return
        pfn = int(data.draw(st.sampled_from(free.tolist())))
        before = self.a.buddyinfo().copy()
        with pytest.raises(ValueError):
            self.a.free(pfn, 0)
        with pytest.raises(ValueError):
            self.a.free_bulk(np.array([pfn]), 0)
        np.testing.assert_array_equal(self.a.buddyinfo(), before)

    @invariant()
    def consistent(self) -> None:
        a = self.a
        a.check()
        free = self.free_map()
        assert a.nr_free_pages() + int(self.owned.sum()) + a.reserved_pages == a.total_pages
        assert a.nr_free_pages() == int(free.sum())
        assert a.reserved_pages == int(self.reserved.sum())
        np.testing.assert_array_equal(
            a.buddyinfo(), oracle_buddyinfo(free, self.bounds, a.max_order)
        )
        assert [a.is_free(p) for p in range(a.total_pages)] == free.tolist()


BuddyMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestBuddyMachine = BuddyMachine.TestCase


# ---------------------------------------------------------------------------- memcg


def test_memcg_limit_and_failcnt() -> None:
    cg = MemCgroup(limit_pages=10, name="test")
    assert cg.try_charge(6)
    assert not cg.try_charge(5)  # 11 > 10
    assert (cg.usage, cg.failcnt) == (6, 1)
    assert cg.try_charge(4)  # exactly at the limit is allowed
    assert cg.usage == 10 and cg.peak == 10
    assert not cg.try_charge(1)
    assert cg.failcnt == 2
    cg.uncharge(10)
    assert cg.usage == 0 and cg.peak == 10
    assert cg.try_charge_order(3)  # 8 pages
    assert not cg.try_charge_order(2)  # 8 + 4 > 10
    assert cg.failcnt == 3
    cg.uncharge_order(3)
    with pytest.raises(ValueError):
        cg.uncharge(1)


def test_memcg_unlimited_and_injection() -> None:
    cg = MemCgroup()
    assert cg.limit_pages is None and cg.name == "root"
    assert cg.try_charge(1 << 30)
    cg.fail_orders = {9}
    assert not cg.try_charge_order(9)
    assert cg.failcnt == 1
    assert cg.usage == 1 << 30  # the injected failure charged nothing
    assert cg.try_charge_order(4)
    assert cg.usage == (1 << 30) + 16
