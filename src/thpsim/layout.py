"""The layout format: thpsim's common language with the real kernel.

For each PMD-aligned window a ``picture`` (one character per PTE), a
``shared`` string of the same length and a folio list:

=====  =====================================================
char   meaning
=====  =====================================================
``.``  pte_none
``z``  the 4K shared zero page
``Z``  the huge zero page (PMD-mapped)
``s``  swap (or other non-present) entry
``0``  an order-0 page
``2``  page of a PTE-mapped folio of that order (``1``-``9``, ``a``-``d`` for 10-13)
``H``  page of a PMD-mapped THP
``f``  a non-anonymous page (never produced by the model)
``x``  outside the VMA/range (only where a window is partly covered)
``S``  (shared string) the page's folio is maybe mapped by another process
=====  =====================================================

Folio list entries are ``[first_index, order, nr_mapped_in_this_pmd, pmd_mapped]``
where ``first_index`` is the first PTE of the window mapping the folio.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from thpsim.mm.pgtable import HUGE_ZERO_PFN, PTE_PRESENT, PTE_SWAP, PTE_ZERO
from thpsim.mm.rmap import shared_mask_row

if TYPE_CHECKING:
    from thpsim.mm.mm import MM
    from thpsim.system import System

__all__ = ["ORDER_CHARS", "Layout", "PMDLayout", "layout_of", "order_char"]

ORDER_CHARS = "0123456789abcd"


def order_char(order: int) -> str:
    return ORDER_CHARS[order]


@dataclass
class PMDLayout:
    """One PMD-aligned window."""

    addr: int
    picture: str
    shared: str
    folios: list[list[int]] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"addr": self.addr, "picture": self.picture, "shared": self.shared,
                "folios": self.folios}

    def summary(self) -> str:
        """Compact notation of real-kernel.md §3: ``0-63:o4x4 64-95:o0x32 300:swap``.

        Folios of one order that follow each other are merged (``xK`` = K folios);
        PMD-mapped THPs are ``o9`` (the PMD order), swap/zero runs are named.
        """
        items: list[tuple[int, int, str, int]] = []  # (first, last, label, count)
        for first, order, nmapped, _pmd_mapped in self.folios:
            last = first + (nmapped - 1)
            label = f"o{order}"
            if items and items[-1][2] == label and items[-1][1] + 1 == first:
                a, _, lab, k = items[-1]
                items[-1] = (a, last, lab, k + 1)
            else:
                items.append((first, last, label, 1))
        pic = self.picture
        for ch, label in (("s", "swap"), ("z", "zero"), ("Z", "hugezero")):
            i = pic.find(ch)
            while i >= 0:
                j = i
                while j + 1 < len(pic) and pic[j + 1] == ch:
                    j += 1
                items.append((i, j, label, 1))
                i = pic.find(ch, j + 1)
        out = []
        for a, b, label, k in sorted(items):
            rng = f"{a}" if a == b else f"{a}-{b}"
            out.append(f"{rng}:{label}" + (f"x{k}" if k > 1 else ""))
        return " ".join(out) if out else "empty"

    def rows(self, width: int = 64) -> list[str]:
        """Human form: the picture cut into rows of ``width`` characters."""
        return [self.picture[i : i + width] for i in range(0, len(self.picture), width)]


@dataclass
class Layout:
    """The windows of a range, in address order."""

    pmds: list[PMDLayout]

    def pictures(self) -> list[str]:
        return [p.picture for p in self.pmds]

    def to_json(self) -> list[dict]:
        return [p.to_json() for p in self.pmds]

    def render(self, width: int = 64) -> str:
        out = []
        for p in self.pmds:
            out.append(f"PMD {p.addr:#x}")
            pic = p.rows(width)
            sh = [p.shared[i : i + width] for i in range(0, len(p.shared), width)]
            for i, (a, b) in enumerate(zip(pic, sh, strict=True)):
                out.append(f"  {i * width:5d} {a}" + (f"  {b}" if "S" in b else ""))
        return "\n".join(out)


def _window_layout(sys: System, mm: MM, pmd: int, inside: np.ndarray) -> PMDLayout:
    g = sys.geometry
    nr = g.hpage_pmd_nr
    f = sys.folios
    pt = mm.pt
    pic = np.full(nr, ord("."), dtype=np.uint8)
    shared = np.full(nr, ord("-"), dtype=np.uint8)
    folios: list[list[int]] = []
    huge = pt.huge.get(pmd)
    row = pt.row(pmd)
    if huge is not None:
        head = huge[0]
        if head == HUGE_ZERO_PFN:
            pic[:] = ord("Z")
        else:
            pic[:] = ord("H")
            if f.folio_mapcount(head) > 1:
                shared[:] = ord("S")
            folios.append([0, int(f.order[head]), nr, 1])
    elif row is not None:
        kinds = pt.kind[row]
        pic[kinds == PTE_ZERO] = ord("z")
        pic[kinds == PTE_SWAP] = ord("s")
        present = np.flatnonzero(kinds == PTE_PRESENT)
        if present.size:
            pf = pt.pfn[row, present].astype(np.int64)
            heads = f.heads_of(pf)
            orders = f.order[heads]
            chars = np.frombuffer(ORDER_CHARS.encode(), dtype=np.uint8)
            pic[present] = chars[orders]
            sh = shared_mask_row(sys, kinds, pt.pfn[row])
            shared[sh] = ord("S")
            uh, first, cnt = np.unique(heads, return_index=True, return_counts=True)
            for h, fi, c in sorted(zip(uh.tolist(), first.tolist(), cnt.tolist(),
                                       strict=True), key=lambda t: present[t[1]]):
                folios.append([int(present[fi]), int(f.order[h]), int(c), 0])
    pic[~inside] = ord("x")
    shared[~inside] = ord("-")
    folios = [fl for fl in folios if inside[fl[0]]]
    return PMDLayout((pmd << g.pmd_order) * g.page_size, pic.tobytes().decode(),
                     shared.tobytes().decode(), folios)


def layout_of(sys: System, mm: MM, addr: int | None = None, length: int | None = None) -> Layout:
    """Layout of ``[addr, addr+length)`` (bytes; one PMD if no length), or of every VMA.

    Positions outside the range or outside any VMA are ``x``.
    """
    g = sys.geometry
    nr = g.hpage_pmd_nr
    if addr is None:
        ranges = [(v.start, v.end) for v in mm.vmas]
    else:
        s = addr // g.page_size
        e = -(-(addr + (length or g.pmd_size)) // g.page_size)
        ranges = [(s, e)]
    out: list[PMDLayout] = []
    for s, e in ranges:
        for pmd in range(s >> g.pmd_order, ((e - 1) >> g.pmd_order) + 1):
            ws = pmd << g.pmd_order
            vpns = np.arange(ws, ws + nr)
            inside = (vpns >= s) & (vpns < e)
            vm = np.zeros(nr, dtype=bool)
            for v in mm.vmas.overlapping(ws, ws + nr):
                vm |= (vpns >= v.start) & (vpns < v.end)
            out.append(_window_layout(sys, mm, pmd, inside & vm))
    return Layout(out)


def picture_counts(picture: str) -> dict[str, int]:
    """Histogram of picture characters (handy in tests and reports)."""
    return {c: picture.count(c) for c in sorted(set(picture))}

