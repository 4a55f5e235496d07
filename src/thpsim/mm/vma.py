"""VMAs and the per-mm VMA list: lookup, split and merge (twin of mm/vma.c).

Addresses inside the model are virtual page numbers (vpn); the public API
converts from bytes.  Only private anonymous mappings are modelled.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass, field

__all__ = [
    "VMA",
    "VM_DROPPABLE",
    "VM_HUGEPAGE",
    "VM_LOCKED",
    "VM_NOHUGEPAGE",
    "VM_READ",
    "VM_SPECIAL",
    "VM_STACK_INCOMPLETE_SETUP",
    "VM_UFFD_MINOR",
    "VM_UFFD_MISSING",
    "VM_UFFD_WP",
    "VM_WRITE",
    "VMAList",
    "vm_flags_str",
]

VM_READ = 1 << 0
VM_WRITE = 1 << 1
VM_HUGEPAGE = 1 << 2
VM_NOHUGEPAGE = 1 << 3
VM_UFFD_MISSING = 1 << 4
VM_UFFD_WP = 1 << 5
VM_UFFD_MINOR = 1 << 6
VM_DROPPABLE = 1 << 7
VM_SPECIAL = 1 << 8  # VM_NO_KHUGEPAGED: special/hugetlb mappings
VM_STACK_INCOMPLETE_SETUP = 1 << 9  # temporary stack during exec
VM_LOCKED = 1 << 10
VM_UFFD_ANY = VM_UFFD_MISSING | VM_UFFD_WP | VM_UFFD_MINOR

_anon_vma_ids = itertools.count(1)


def new_anon_vma_id() -> int:
    """A fresh ``anon_vma`` identity (0 means "none")."""
    return next(_anon_vma_ids)


@dataclass(eq=False)
class VMA:
    """One ``vm_area_struct``: ``[start, end)`` in virtual page numbers."""

    start: int
    end: int
    flags: int = VM_READ | VM_WRITE
    anon_vma: int = 0
    name: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def nr_pages(self) -> int:
        return self.end - self.start

    @property
    def uffd_armed(self) -> bool:
        """``userfaultfd_armed``: registered in any uffd mode."""
        return bool(self.flags & VM_UFFD_ANY)

    def contains(self, vpn: int) -> bool:
        return self.start <= vpn < self.end

    def copy(self, **changes) -> VMA:
        v = VMA(self.start, self.end, self.flags, self.anon_vma, self.name, dict(self.extra))
        for k, val in changes.items():
            setattr(v, k, val)
        return v


def vm_flags_str(flags: int) -> str:
    """smaps ``VmFlags`` style mnemonics (``rd wr mr mw me ac hg nh ...``)."""
    out = []
    if flags & VM_READ:
        out.append("rd")
    if flags & VM_WRITE:
        out.append("wr")
    out += ["mr", "mw", "me", "ac"]
    if flags & VM_LOCKED:
        out.append("lo")
    if flags & VM_HUGEPAGE:
        out.append("hg")
    if flags & VM_NOHUGEPAGE:
        out.append("nh")
    if flags & VM_UFFD_MISSING:
        out.append("um")
    if flags & VM_UFFD_WP:
        out.append("uw")
    if flags & VM_UFFD_MINOR:
        out.append("ui")
    return " ".join(out)


class VMAList:
    """Sorted, non-overlapping VMAs of one mm (the maple tree's role)."""

    def __init__(self) -> None:
        self._vmas: list[VMA] = []

    def __iter__(self):
        return iter(list(self._vmas))

    def __len__(self) -> int:
        return len(self._vmas)

    def _starts(self) -> list[int]:
        return [v.start for v in self._vmas]

    def find(self, vpn: int) -> VMA | None:
        """The VMA containing ``vpn`` (``vma_lookup``)."""
        i = bisect.bisect_right(self._starts(), vpn) - 1
        if i >= 0 and self._vmas[i].contains(vpn):
            return self._vmas[i]
        return None

    def find_from(self, vpn: int) -> VMA | None:
        """First VMA ending above ``vpn`` (``find_vma``)."""
        for v in self._vmas:
            if v.end > vpn:
                return v
        return None

    def overlapping(self, start: int, end: int) -> list[VMA]:
        return [v for v in self._vmas if v.start < end and v.end > start]

    def insert(self, vma: VMA) -> None:
        assert not self.overlapping(vma.start, vma.end), "overlapping VMA"
        i = bisect.bisect_left(self._starts(), vma.start)
        self._vmas.insert(i, vma)

    def remove(self, vma: VMA) -> None:
        self._vmas.remove(vma)

    def neighbours(self, vma: VMA) -> tuple[VMA | None, VMA | None]:
        i = self._vmas.index(vma)
        prev = self._vmas[i - 1] if i > 0 else None
        nxt = self._vmas[i + 1] if i + 1 < len(self._vmas) else None
        return prev, nxt

    def split(self, vma: VMA, at: int) -> tuple[VMA, VMA]:
        """``__split_vma``: cut ``vma`` at ``at``; both halves keep flags and anon_vma."""
        assert vma.start < at < vma.end
        tail = vma.copy(start=at)
        vma.end = at
        i = self._vmas.index(vma)
        self._vmas.insert(i + 1, tail)
        return vma, tail

    @staticmethod
    def mergeable(a: VMA, b: VMA) -> bool:
        """Adjacent, same flags, compatible anon_vma (equal, or one side has none)."""
        return (
            a.end == b.start
            and a.flags == b.flags
            and (a.anon_vma == b.anon_vma or not a.anon_vma or not b.anon_vma)
            and a.name == b.name
        )

    def try_merge(self, vma: VMA) -> tuple[VMA, bool]:
        """Merge ``vma`` with mergeable neighbours; returns the surviving VMA and
        whether a merge happened."""
        merged = False
        prev, nxt = self.neighbours(vma)
        if prev is not None and self.mergeable(prev, vma):
            prev.end = vma.end
            prev.anon_vma = prev.anon_vma or vma.anon_vma
            self._vmas.remove(vma)
            vma = prev
            merged = True
        _, nxt = self.neighbours(vma)
        if nxt is not None and self.mergeable(vma, nxt):
            vma.end = nxt.end
            vma.anon_vma = vma.anon_vma or nxt.anon_vma
            self._vmas.remove(nxt)
            merged = True
        return vma, merged
