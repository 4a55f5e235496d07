"""Physical memory: a binary buddy allocator and a memory-cgroup charge limit.

Twin of ``mm/page_alloc.c`` (and of the charge side of ``mm/memcontrol.c``).
Large folios can only be allocated when the buddy allocator holds a naturally
aligned free block of the requested order, so THP/mTHP allocation failures and
fallbacks arise for the same reason as in the kernel: fragmentation.

What is modelled
----------------
* Per-node free areas, one free list per order ``0 .. max_order``.  An
  allocation takes a block from the smallest non-empty order ``>= order``
  (``__rmqueue_smallest``) and returns the unused upper halves to the lower
  free lists (``expand``).
* Freeing merges a block with its buddy (``pfn ^ (1 << order)``) while the
  buddy is free at the same order and in the same node (``__free_one_page``).
* Zone fallback across NUMA nodes (lowest node first, or the preferred node
  first).

Not modelled: migrate types, pcp lists, watermarks, reclaim and compaction.
A caller that wants those effects frees or reserves memory itself.

Representation
--------------
Per pfn there is a single ``int8``: the order of the free block whose head is
at that pfn, or ``-1``.  Each (node, order) free list is a NumPy-backed stack
of head pfns with *lazy deletion*: removing a buddy during coalescing only
clears its ``int8`` and decrements the list's count; the stale stack entry is
skipped when popped and dropped when the stack is compacted.  This keeps
scalar alloc/free O(max_order) and lets the bulk paths work on whole arrays.
"""

from __future__ import annotations

from bisect import bisect_right

import numpy as np

from thpsim.mm.geometry import GEOM_4K, Geometry

__all__ = ["BuddyAllocator", "MemCgroup"]

# Compaction slack: a stack may hold this many stale entries beyond 2x its count.
_STALE_SLACK = 64


class _FreeList:
    """One (node, order) free list: a growable stack of head pfns.

    ``count`` is the number of blocks really free; ``n`` the stack depth, which
    may be larger because of stale entries (see module docstring).
    """

    __slots__ = ("buf", "count", "mv", "n")

    def __init__(self, capacity: int = 16) -> None:
        self.buf = np.empty(max(capacity, 16), dtype=np.int64)
        # A memoryview reads/writes single items as Python ints, ~3x faster than numpy indexing.
        self.mv = memoryview(self.buf)
        self.n = 0
        self.count = 0

    def _reserve(self, extra: int) -> None:
        need = self.n + extra
        if need > self.buf.size:
            cap = max(need, 2 * self.buf.size)
            buf = np.empty(cap, dtype=np.int64)
            buf[: self.n] = self.buf[: self.n]
            self.buf = buf
            self.mv = memoryview(buf)

    def push(self, pfn: int) -> None:
        if self.n == self.buf.size:
            self._reserve(1)
        self.mv[self.n] = pfn
        self.n += 1

    def extend(self, pfns: np.ndarray) -> None:
        k = int(pfns.size)
        self._reserve(k)
        self.buf[self.n : self.n + k] = pfns
        self.n += k

    def replace(self, pfns: np.ndarray) -> None:
        """Replace the stack contents (used by compaction); shrink an oversized buffer."""
        k = int(pfns.size)
        if self.buf.size > 4 * max(k, 16):
            self.buf = np.empty(max(2 * k, 16), dtype=np.int64)
            self.mv = memoryview(self.buf)
        self.buf[:k] = pfns
        self.n = k


def _floor_log2(x: int) -> int:
    return x.bit_length() - 1


def _ctz(x: int) -> int:
    """Trailing zero bits of ``x > 0``."""
    return (x & -x).bit_length() - 1


class BuddyAllocator:
    """Binary buddy allocator over pfns ``0 .. total_pages - 1``.

    Parameters
    ----------
    total_pages : int
        Number of physical pages.  Need not be a multiple of ``2**max_order``:
        the ends of every node are carved into the largest aligned blocks that fit.
    max_order : int
        ``MAX_PAGE_ORDER``: the largest block order (10 on x86-64).
    nr_nodes : int
        NUMA nodes.  The pfn range is split evenly into ``nr_nodes``
        contiguous parts; each node has its own free lists and no block
        ever crosses a node boundary.

    Attributes
    ----------
    fail_orders : set[int]
        Failure injection: allocations of these orders always fail.
    reserved_pages : int
        Pages held by "someone else" (set up by :meth:`fragment`).
    """

    def __init__(self, total_pages: int, max_order: int = 10, nr_nodes: int = 1) -> None:
        if total_pages <= 0:
            raise ValueError("total_pages must be positive")
        if not 0 <= max_order <= 40:
            raise ValueError(f"max_order {max_order} out of range")
        if not 1 <= nr_nodes <= total_pages:
            raise ValueError(f"nr_nodes {nr_nodes} invalid for {total_pages} pages")
        self.total_pages = int(total_pages)
        self.max_order = int(max_order)
        self.nr_nodes = int(nr_nodes)
        self.fail_orders: set[int] = set()
        self.reserved_pages = 0
        #: stale stack entries tolerated beyond 2x the count before compacting
        self._stale_slack = _STALE_SLACK
        #: reserved block heads by order (see :meth:`fragment`, :meth:`release_reserved`)
        self._reserved: dict[int, np.ndarray] = {}

        self._bounds = [i * self.total_pages // self.nr_nodes for i in range(self.nr_nodes + 1)]
        self._bounds_np = np.asarray(self._bounds, dtype=np.int64)
        self._node_lo = self._bounds_np[:-1]
        self._node_hi = self._bounds_np[1:]
        all_nodes = tuple(range(self.nr_nodes))
        self._all_nodes = all_nodes
        self._fallback_seq = [(n, *(m for m in all_nodes if m != n)) for n in all_nodes]

        #: order of the free block headed at each pfn, -1 if none
        self._free_order = np.full(self.total_pages, -1, dtype=np.int8)
        self._fo = memoryview(self._free_order)
        self._lists = [[_FreeList() for _ in range(self.max_order + 1)] for _ in all_nodes]
        for node in all_nodes:
            self._carve_free(self._bounds[node], self._bounds[node + 1], node)

    @classmethod
    def for_geometry(
        cls, total_pages: int, geom: Geometry = GEOM_4K, nr_nodes: int = 1
    ) -> BuddyAllocator:
        """Allocator whose ``max_order`` is ``geom.max_page_order``."""
        return cls(total_pages, max_order=geom.max_page_order, nr_nodes=nr_nodes)

    # ------------------------------------------------------------------ helpers

    def _carve_free(self, start: int, end: int, node: int) -> None:
        """Put ``[start, end)`` on the free lists as the largest aligned blocks that fit.

        The caller guarantees none of the resulting blocks can merge with a free
        buddy (true for a whole node and for the tail of a split block).
        """
        top = 1 << self.max_order
        lists = self._lists[node]
        fo = self._fo
        pos = start
        while pos < end:
            if pos & (top - 1) == 0 and pos + top <= end:
                # the aligned middle: many max-order blocks at once
                stop = end & ~(top - 1)
                heads = np.arange(pos, stop, top, dtype=np.int64)
                self._free_order[heads] = self.max_order
                fl = lists[self.max_order]
                fl.extend(heads)
                fl.count += heads.size
                self._maybe_compact(fl, self.max_order)
                pos = stop
                continue
            o = min(self.max_order, _floor_log2(end - pos), _ctz(pos) if pos else self.max_order)
            fo[pos] = o
            fl = lists[o]
            fl.push(pos)
            fl.count += 1
            self._maybe_compact(fl, o)
            pos += 1 << o

    def _node_seq(self, node: int | None, fallback: bool) -> tuple[int, ...]:
        if node is None:
            return self._all_nodes
        if not 0 <= node < self.nr_nodes:
            raise ValueError(f"node {node} out of range (nr_nodes={self.nr_nodes})")
        return self._fallback_seq[node] if fallback else (node,)

    def _nodes_of(self, pfns: np.ndarray) -> np.ndarray:
        if self.nr_nodes == 1:
            return np.zeros(pfns.shape, dtype=np.int64)
        return np.searchsorted(self._bounds_np, pfns, side="right") - 1

    def _check_order(self, order: int) -> None:
        if not 0 <= order <= self.max_order:
            raise ValueError(f"order {order} out of range 0..{self.max_order}")

    def _pop(self, fl: _FreeList, order: int) -> int:
        """Remove and return one free head from a list with ``count > 0``."""
        fo = self._fo
        mv = fl.mv
        while True:
            if fl.n <= 0:
                raise AssertionError(f"order-{order} free list count {fl.count} but stack empty")
            fl.n -= 1
            pfn = mv[fl.n]
            if fo[pfn] == order:
                fo[pfn] = -1
                fl.count -= 1
                return pfn

    def _pop_many(self, fl: _FreeList, order: int, k: int) -> np.ndarray:
        """Remove and return ``k <= fl.count`` free heads from a list."""
        fo = self._free_order
        if fl.n == fl.count:
            # no stale entries, hence no duplicates: the top k are the answer
            heads = fl.buf[fl.n - k : fl.n].copy()
            fl.n -= k
            fo[heads] = -1
            fl.count -= k
            return heads
        got: list[np.ndarray] = []
        left = k
        while left:
            # over-read so that stale entries do not force many tiny rounds
            m = min(fl.n, 2 * left + 64)
            if not m:
                raise AssertionError(f"order-{order} free list count {fl.count} but stack empty")
            chunk = fl.buf[fl.n - m : fl.n]
            fl.n -= m
            chunk = np.unique(chunk[fo[chunk] == order])  # unique: a head may be listed twice
            extra = chunk[left:]
            chunk = chunk[:left]
            fl.buf[fl.n : fl.n + extra.size] = extra  # put back what is not needed
            fl.n += extra.size
            fo[chunk] = -1
            fl.count -= chunk.size
            left -= chunk.size
            got.append(chunk)
        return np.concatenate(got)

    def _maybe_compact(self, fl: _FreeList, order: int) -> None:
        if fl.n > 2 * fl.count + self._stale_slack:
            entries = fl.buf[: fl.n]
            fl.replace(np.unique(entries[self._free_order[entries] == order]))

    def _push_free(self, heads: np.ndarray, node: int, order: int) -> None:
        """Append already-marked free heads to ``node``'s order-``order`` list."""
        if heads.size:
            fl = self._lists[node][order]
            fl.extend(heads)
            fl.count += heads.size
            self._maybe_compact(fl, order)

    # --------------------------------------------------------------- allocation

    def alloc(self, order: int, node: int | None = None, fallback: bool = True) -> int:
        """Allocate a naturally aligned block of ``2**order`` pages.

        Parameters
        ----------
        order : int
            Block order; orders above ``max_order`` fail like the kernel's
            ``order > MAX_PAGE_ORDER`` check.
        node : int or None
            Preferred node; ``None`` means any node, lowest first.
        fallback : bool
            With a ``node``, fall back to the other nodes (ascending) when it
            has no suitable block; without fallback this is ``__GFP_THISNODE``.

        Returns
        -------
        int
            Head pfn of the block, or ``-1`` if no block is available.
        """
        if order < 0:
            raise ValueError(f"negative order {order}")
        if order > self.max_order or order in self.fail_orders:
            return -1
        fo = self._fo
        for nd in self._node_seq(node, fallback):
            lists = self._lists[nd]
            for o in range(order, self.max_order + 1):
                fl = lists[o]
                if fl.count:
                    pfn = self._pop(fl, o)
                    # expand(): the upper halves go back, one per lower order
                    while o > order:
                        o -= 1
                        buddy = pfn + (1 << o)
                        fo[buddy] = o
                        low = lists[o]
                        low.push(buddy)
                        low.count += 1
                        if low.n > 2 * low.count + self._stale_slack:
                            self._maybe_compact(low, o)
                    return pfn
        return -1

    def alloc_bulk(
        self, order: int, count: int, node: int | None = None, fallback: bool = True
    ) -> np.ndarray:
        """Allocate up to ``count`` blocks of ``2**order`` pages at once.

        Equivalent, in the resulting free-list counts, to ``count`` calls of
        :meth:`alloc`: lower free orders are used up first and at most one
        larger block is split partially, its unused tail going back to the
        free lists as :meth:`alloc` would leave it.

        Returns
        -------
        numpy.ndarray
            ``int64`` head pfns; fewer than ``count`` when memory runs out.
        """
        if order < 0:
            raise ValueError(f"negative order {order}")
        empty = np.empty(0, dtype=np.int64)
        if count <= 0 or order > self.max_order or order in self.fail_orders:
            return empty
        step = 1 << order
        need = int(count)
        out: list[np.ndarray] = []
        for nd in self._node_seq(node, fallback):
            lists = self._lists[nd]
            for o in range(order, self.max_order + 1):
                if not need:
                    break
                fl = lists[o]
                if not fl.count:
                    continue
                units = 1 << (o - order)
                whole = min(fl.count, need // units)
                if whole:
                    heads = self._pop_many(fl, o, whole)
                    if units > 1:
                        offs = np.arange(0, 1 << o, step, dtype=np.int64)
                        heads = (heads[:, None] + offs[None, :]).ravel()
                    out.append(heads)
                    need -= whole * units
                if 0 < need < units and fl.count:
                    head = self._pop(fl, o)
                    out.append(np.arange(head, head + need * step, step, dtype=np.int64))
                    # the rest of the split block, exactly as repeated expand() leaves it
                    self._carve_free(head + need * step, head + (1 << o), nd)
                    need = 0
            if not need:
                break
        if not out:
            return empty
        return out[0] if len(out) == 1 else np.concatenate(out)

    # ------------------------------------------------------------------ freeing

    def free(self, pfn: int, order: int) -> None:
        """Free the block of ``2**order`` pages at ``pfn``, merging with free buddies.

        Raises
        ------
        ValueError
            If the block is misaligned, out of range, crosses a node boundary
            or overlaps memory that is already free (double free).
        """
        self._check_order(order)
        pfn = int(pfn)
        size = 1 << order
        if pfn < 0 or pfn + size > self.total_pages or pfn & (size - 1):
            raise ValueError(f"bad block pfn={pfn} order={order}")
        node = self.node_of(pfn)
        lo, hi = self._bounds[node], self._bounds[node + 1]
        if pfn + size > hi:
            raise ValueError(f"block pfn={pfn} order={order} crosses a node boundary")
        if self.is_free(pfn) or (order and self._free_order[pfn + 1 : pfn + size].max() >= 0):
            raise ValueError(f"double free of pfn={pfn} order={order}")
        fo = self._fo
        lists = self._lists[node]
        while order < self.max_order:
            buddy = pfn ^ (1 << order)
            if not (lo <= buddy < hi) or fo[buddy] != order:
                break
            # take the buddy off its list (lazily: the stack entry goes stale)
            fo[buddy] = -1
            lists[order].count -= 1
            pfn &= ~(1 << order)
            order += 1
        fo[pfn] = order
        fl = lists[order]
        fl.push(pfn)
        fl.count += 1
        if fl.n > 2 * fl.count + self._stale_slack:
            self._maybe_compact(fl, order)

    def free_bulk(self, pfns: np.ndarray, order: int) -> None:
        """Free many blocks of the same order, merging buddies level by level.

        Raises
        ------
        ValueError
            As :meth:`free`, or if ``pfns`` contains duplicates.  Nothing is
            changed when validation fails.
        """
        self._check_order(order)
        cur = np.asarray(pfns, dtype=np.int64).ravel()
        if cur.size == 0:
            return
        size = 1 << order
        if cur.min() < 0 or cur.max() + size > self.total_pages or np.any(cur & (size - 1)):
            raise ValueError(f"bad block pfns for order {order}")
        # sorted: finds duplicates, splits by node, and makes the gathers cache friendly
        cur = np.sort(cur)
        if np.any(cur[1:] == cur[:-1]):
            raise ValueError("duplicate pfns in free_bulk")
        segments = self._split_by_node(cur)
        for node, seg in segments:
            if seg[-1] + size > self._bounds[node + 1]:
                raise ValueError("block crosses a node boundary")
        fo = self._free_order
        # double free: a free block containing a block head, or one inside a block
        for o in range(order, self.max_order + 1):
            if np.any(fo[cur & ~((1 << o) - 1)] == o):
                raise ValueError("double free in free_bulk")
        if size > 1 and np.any(fo[(cur[:, None] + np.arange(1, size)).ravel()] >= 0):
            raise ValueError("double free in free_bulk")
        for node, seg in segments:
            self._merge_free(seg, order, node)

    def _split_by_node(self, sorted_pfns: np.ndarray) -> list[tuple[int, np.ndarray]]:
        if self.nr_nodes == 1:
            return [(0, sorted_pfns)]
        cuts = np.searchsorted(sorted_pfns, self._bounds_np[1:-1]).tolist()
        parts = np.split(sorted_pfns, cuts)
        return [(n, part) for n, part in enumerate(parts) if part.size]

    def _merge_free(self, cur: np.ndarray, order: int, node: int) -> None:
        """Free validated, sorted, distinct blocks of one node, coalescing level by level."""
        fo = self._free_order
        lo, hi = self._bounds[node], self._bounds[node + 1]
        lists = self._lists[node]
        o = order
        while cur.size:
            if o == self.max_order:
                fo[cur] = o
                self._push_free(cur, node, o)
                break
            bit = 1 << o
            buddy = cur ^ bit
            # sorted input: only blocks at the node's ends can have a buddy outside it
            inside: np.ndarray | None = None
            bidx = buddy
            if cur[0] < lo + bit or cur[-1] >= hi - bit:
                inside = (buddy >= lo) & (buddy < hi)
                bidx = np.where(inside, buddy, cur)
            was_free = fo[bidx] == o
            # mark the batch free first, so a buddy that is also in the batch is seen
            fo[cur] = o
            merge = fo[bidx] == o
            if inside is not None:
                was_free &= inside
                merge &= inside
            fo[cur[merge]] = -1
            old = buddy[was_free]
            if old.size:
                fo[old] = -1  # taken off its list lazily: the stack entry goes stale
                lists[o].count -= old.size
            self._push_free(cur[~merge], node, o)
            # one parent per merged pair: the single member for an old buddy, else the low half
            parent = merge & (was_free | ((cur & bit) == 0))
            cur = cur[parent] & ~bit
            o += 1

    # ------------------------------------------------------------------ queries

    def node_of(self, pfn: int) -> int:
        """NUMA node of ``pfn``."""
        if not 0 <= pfn < self.total_pages:
            raise ValueError(f"pfn {pfn} out of range")
        if self.nr_nodes == 1:
            return 0
        return bisect_right(self._bounds, pfn) - 1

    def nr_free_pages(self, node: int | None = None) -> int:
        """Free pages in ``node`` (all nodes if ``None``)."""
        nodes = self._all_nodes if node is None else (node,)
        return sum(fl.count << o for n in nodes for o, fl in enumerate(self._lists[n]))

    def free_blocks(self, order: int) -> int:
        """Number of free blocks of exactly ``order``, summed over nodes."""
        self._check_order(order)
        return sum(self._lists[n][order].count for n in self._all_nodes)

    def buddyinfo(self) -> np.ndarray:
        """Free block counts, shape ``(nr_nodes, max_order + 1)`` (like ``/proc/buddyinfo``)."""
        return np.array(
            [[fl.count for fl in self._lists[n]] for n in self._all_nodes], dtype=np.int64
        )

    def can_alloc(self, order: int, node: int | None = None, fallback: bool = True) -> bool:
        """Would :meth:`alloc` with these arguments succeed?"""
        if order < 0 or order > self.max_order or order in self.fail_orders:
            return False
        return any(
            self._lists[n][o].count
            for n in self._node_seq(node, fallback)
            for o in range(order, self.max_order + 1)
        )

    def is_free(self, pfn: int) -> bool:
        """Is ``pfn`` inside some free block?"""
        if not 0 <= pfn < self.total_pages:
            raise ValueError(f"pfn {pfn} out of range")
        fo = self._fo
        return any(fo[pfn & ~((1 << o) - 1)] == o for o in range(self.max_order + 1))

    # --------------------------------------------------------- fragmentation

    def fragment(self, fraction_free: float, max_free_order: int = 0, seed: int = 0) -> None:
        """Bring a fresh allocator into a fragmented state.

        All memory is allocated as order-``max_free_order`` blocks (any smaller
        blocks at node edges are allocated too), then a random
        ``fraction_free`` of those blocks is freed, at most one of each buddy
        pair, so nothing coalesces above ``max_free_order``.  The rest stays
        allocated "by someone else" and is counted in :attr:`reserved_pages`.

        Parameters
        ----------
        fraction_free : float
            Fraction of the order-``max_free_order`` blocks to free, ``0 .. 0.5``
            (more would force buddies to be freed together).
        max_free_order : int
            The order of every free block afterwards.
        seed : int
            Seed of the random choice.
        """
        self._check_order(max_free_order)
        if not 0.0 <= fraction_free <= 0.5:
            raise ValueError("fraction_free must be within 0 .. 0.5 to avoid freeing buddies")
        if self.reserved_pages or self.nr_free_pages() != self.total_pages:
            raise ValueError("fragment() needs a fresh allocator")
        m = max_free_order
        fo = self._free_order
        heads = np.flatnonzero(fo >= 0)
        orders = fo[heads].astype(np.int64)
        # allocate everything: order-m blocks become bits of a map indexed by pfn >> m,
        # the smaller blocks at node edges are reserved as they are
        nr_slots = self.total_pages >> m
        present = np.zeros(nr_slots + (nr_slots & 1), dtype=bool)  # even: whole buddy pairs
        for o in np.unique(orders[orders >= m]).tolist():
            h = heads[orders == o] >> m
            present[(h[:, None] + np.arange(1 << (o - m))).ravel()] = True
        small = orders < m
        fo[heads] = -1
        for lists in self._lists:
            for fl in lists:
                fl.n = fl.count = 0

        nr_blocks = int(np.count_nonzero(present))
        nr_free = round(fraction_free * nr_blocks)
        if nr_free:
            # choose one random member of each buddy pair, then nr_free of those pairs
            pairs = present.reshape(-1, 2)
            groups = np.flatnonzero(pairs[:, 0] | pairs[:, 1])
            if nr_free > groups.size:
                raise ValueError("too many blocks to free without freeing buddies")
            rng = np.random.default_rng(seed)
            both = pairs[groups, 0] & pairs[groups, 1]
            member = np.where(both, rng.integers(0, 2, groups.size), pairs[groups, 1])
            pick = rng.choice(groups.size, nr_free, replace=False)
            freed = np.sort(2 * groups[pick] + member[pick])
            present[freed] = False
            for node, seg in self._split_by_node(freed << m):
                self._merge_free(seg, m, node)  # no buddies are free, so nothing merges
        self._add_reserved(np.flatnonzero(present).astype(np.int64) << m, m)
        for o in np.unique(orders[small]).tolist():
            self._add_reserved(heads[small & (orders == o)], o)

    def _add_reserved(self, heads: np.ndarray, order: int) -> None:
        if heads.size == 0:
            return
        old = self._reserved.get(order)
        self._reserved[order] = heads if old is None else np.concatenate([old, heads])
        self.reserved_pages += int(heads.size) << order

    def release_reserved(self, fraction: float = 1.0, seed: int = 0) -> int:
        """Free a random ``fraction`` of the reserved blocks (the other user exits).

        Returns
        -------
        int
            Pages returned to the free lists.
        """
        if not 0.0 <= fraction <= 1.0:
            raise ValueError("fraction must be within 0 .. 1")
        rng = np.random.default_rng(seed)
        released = 0
        for order in sorted(self._reserved):
            heads = self._reserved[order]
            k = round(fraction * heads.size)
            if not k:
                continue
            mask = np.zeros(heads.size, dtype=bool)
            mask[rng.choice(heads.size, k, replace=False)] = True
            for node, seg in self._split_by_node(np.sort(heads[mask])):
                self._merge_free(seg, order, node)
            self._reserved[order] = heads[~mask]
            released += k << order
        self._reserved = {o: h for o, h in self._reserved.items() if h.size}
        self.reserved_pages -= released
        return released

    # --------------------------------------------------------------- invariants

    def check(self) -> None:
        """Verify the allocator's invariants.

        Raises
        ------
        AssertionError
            If free blocks overlap, are misaligned, leave the pfn range, cross a
            node boundary or could have merged with a free buddy; or if the
            free lists disagree with the per-pfn state.
        """
        fo = self._free_order
        if fo.min() < -1 or fo.max() > self.max_order:
            raise AssertionError("free_order holds an impossible order")
        heads = np.flatnonzero(fo >= 0)  # ascending
        orders = fo[heads].astype(np.int64)
        sizes = np.left_shift(1, orders)
        if np.any(heads & (sizes - 1)):
            bad = heads[(heads & (sizes - 1)) != 0][0]
            raise AssertionError(f"free block at pfn {bad} is misaligned for order {fo[bad]}")
        ends = heads + sizes
        if heads.size and ends[-1] > self.total_pages:
            raise AssertionError("free block runs past the last pfn")
        if np.any(ends[:-1] > heads[1:]):
            i = int(np.flatnonzero(ends[:-1] > heads[1:])[0])
            raise AssertionError(f"free blocks at pfn {heads[i]} and {heads[i + 1]} overlap")
        nodes = self._nodes_of(heads)
        if np.any(self._nodes_of(ends - 1) != nodes):
            raise AssertionError("a free block crosses a node boundary")
        buddy = heads ^ sizes
        can = (orders < self.max_order) & (buddy >= self._node_lo[nodes])
        can &= buddy < self._node_hi[nodes]
        bidx = np.where(can, buddy, heads)
        mergeable = can & (fo[bidx] == orders)
        if mergeable.any():
            bad = heads[mergeable][0]
            raise AssertionError(f"free block at pfn {bad} should have merged with its buddy")
        expect = np.zeros((self.nr_nodes, self.max_order + 1), dtype=np.int64)
        np.add.at(expect, (nodes, orders), 1)
        for n in self._all_nodes:
            for o, fl in enumerate(self._lists[n]):
                if fl.count != expect[n, o]:
                    raise AssertionError(
                        f"node {n} order {o}: list count {fl.count} != {expect[n, o]} free blocks"
                    )
                if not 0 <= fl.n <= fl.buf.size:
                    raise AssertionError(f"node {n} order {o}: bad stack depth {fl.n}")
                entries = fl.buf[: fl.n]
                if entries.size and (entries.min() < 0 or entries.max() >= self.total_pages):
                    raise AssertionError(f"node {n} order {o}: stack entry out of range")
                live = np.unique(entries[fo[entries] == o])
                if live.size != fl.count or np.any(self._nodes_of(live) != n):
                    raise AssertionError(f"node {n} order {o}: stack misses free blocks")
        reserved = sum(int(h.size) << o for o, h in self._reserved.items())
        if reserved != self.reserved_pages:
            raise AssertionError("reserved_pages disagrees with the reserved blocks")
        if self.nr_free_pages() + self.reserved_pages > self.total_pages:
            raise AssertionError("free + reserved pages exceed total_pages")


class MemCgroup:
    """A memory cgroup with an optional limit (``memory.max``) in pages.

    Charge failures model ``SCAN_CGROUP_CHARGE_FAIL`` in khugepaged and the
    ``anon_fault_fallback_charge`` mTHP statistic in the fault path.

    Parameters
    ----------
    limit_pages : int or None
        ``memory.max`` in pages; ``None`` is unlimited.
    name : str
        Cgroup name, for reports.

    Attributes
    ----------
    usage : int
        Charged pages (``memory.current``).
    peak : int
        Highest usage seen (``memory.peak``).
    failcnt : int
        Failed charges, including injected ones.
    fail_orders : set[int]
        Failure injection: :meth:`try_charge_order` always fails for these orders.
    """

    def __init__(self, limit_pages: int | None = None, name: str = "root") -> None:
        if limit_pages is not None and limit_pages < 0:
            raise ValueError("limit_pages must be >= 0")
        self.name = name
        self.limit_pages = limit_pages
        self.usage = 0
        self.peak = 0
        self.failcnt = 0
        self.fail_orders: set[int] = set()

    def try_charge(self, nr_pages: int) -> bool:
        """Charge ``nr_pages``; ``False`` (and ``failcnt += 1``) if over the limit."""
        if nr_pages < 0:
            raise ValueError("cannot charge a negative number of pages")
        if self.limit_pages is not None and self.usage + nr_pages > self.limit_pages:
            self.failcnt += 1
            return False
        self.usage += nr_pages
        self.peak = max(self.peak, self.usage)
        return True

    def uncharge(self, nr_pages: int) -> None:
        """Return ``nr_pages`` of charge."""
        if nr_pages < 0 or nr_pages > self.usage:
            raise ValueError(f"uncharge of {nr_pages} pages with usage {self.usage}")
        self.usage -= nr_pages

    def try_charge_order(self, order: int) -> bool:
        """Charge a folio of ``2**order`` pages; orders in :attr:`fail_orders` always fail."""
        if order in self.fail_orders:
            self.failcnt += 1
            return False
        return self.try_charge(1 << order)

    def uncharge_order(self, order: int) -> None:
        """Uncharge a folio of ``2**order`` pages."""
        self.uncharge(1 << order)

    def __repr__(self) -> str:
        limit = "max" if self.limit_pages is None else self.limit_pages
        return f"MemCgroup({self.name!r}, usage={self.usage}, limit={limit})"
