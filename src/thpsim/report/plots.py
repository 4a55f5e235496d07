"""Plots of simulation runs and sweeps (matplotlib, Agg canvas, no pyplot state).

Every ``*_figure`` function returns a :class:`matplotlib.figure.Figure`; :func:`save_png`
writes one atomically.  Figures are built without :mod:`matplotlib.pyplot`, so they are
safe in worker processes and never open a window.

Address-space map
    One image row per PMD that the layout covers (rows are *present* PMDs in address
    order, not a linear address axis: gaps between mappings are skipped), one column per
    PTE slot, colour = the state of the page (:data:`CATEGORY_COLOURS`).  A narrow strip
    left of the map is black for PMD-mapped rows.  Layouts with more than ``max_rows``
    PMDs are *downsampled*: consecutive PMDs are grouped into bins of
    ``ceil(n_pmd / max_rows)`` rows, each pixel shows the most common state of that PTE
    slot in the bin (ties go to the larger order, so a lone THP is not hidden behind
    empty slots), and the strip shows the fraction of PMD-mapped rows as a grey level.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from thpsim.commands import write_atomic_bytes

__all__ = [
    "CATEGORY_COLOURS",
    "DPI",
    "address_map_figure",
    "category_index",
    "compare_figure",
    "layout_image",
    "run_timeseries_figure",
    "save_png",
    "sweep_summary_figure",
]

DPI = 100

#: layout codes below 0 (see RunResult.layouts) and their names
SPECIAL_CODES = {-1: "none", -2: "zero page", -3: "swap"}
MAX_ORDER = 13

#: colour per category: "none", "zero page", "swap", then "order 0" .. "order 13"
CATEGORY_COLOURS: dict[str, str] = {
    "none": "#f0f0f0",
    "zero page": "#9e9e9e",
    "swap": "#8c510a",
    "order 0": "#440154",
    "order 1": "#482878",
    "order 2": "#3e4989",
    "order 3": "#31688e",
    "order 4": "#26828e",
    "order 5": "#1f9e89",
    "order 6": "#35b779",
    "order 7": "#6ece58",
    "order 8": "#b5de2b",
    "order 9": "#fde725",
    "order 10": "#fca50a",
    "order 11": "#f37651",
    "order 12": "#e03b50",
    "order 13": "#b5367a",
}
_CAT_NAMES = list(CATEGORY_COLOURS)
_PALETTE = np.array([to_rgb(c) for c in CATEGORY_COLOURS.values()])
_PMD_STRIP = np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])  # not mapped / PMD-mapped


def category_index(order: np.ndarray) -> np.ndarray:
    """Map layout codes (-1 none, -2 zero, -3 swap, 0..13 order) to palette indices."""
    order = np.asarray(order, dtype=np.int16)
    if order.size and (order.min() < -3 or order.max() > MAX_ORDER):
        raise ValueError(f"layout order codes out of range: {int(order.min())}..{int(order.max())}")
    # -1 -> 0, -2 -> 1, -3 -> 2, k >= 0 -> 3 + k
    return np.where(order < 0, -order - 1, order + 3).astype(np.intp)


def _downsample(cat: np.ndarray, pmd_mapped: np.ndarray, max_rows: int):
    """Bin consecutive rows: per-slot mode (ties -> larger category), mapped fraction."""
    n, cols = cat.shape
    k = math.ceil(n / max_rows)
    if k <= 1:
        return cat, pmd_mapped.astype(float), 1
    bins = np.arange(n) // k
    nb = int(bins[-1]) + 1
    ncat = len(_CAT_NAMES)
    key = (bins[:, None] * cols + np.arange(cols)[None, :]) * ncat + cat
    counts = np.bincount(key.ravel(), minlength=nb * cols * ncat).reshape(nb, cols, ncat)
    mode = ncat - 1 - np.argmax(counts[..., ::-1], axis=2)
    frac = np.bincount(bins, weights=pmd_mapped.astype(float), minlength=nb) / np.bincount(bins)
    return mode, frac, k


def layout_image(layout: Mapping[str, np.ndarray], max_rows: int = 256):
    """RGB image of a layout and of its PMD-mapped strip, downsampled to ``max_rows``.

    Parameters
    ----------
    layout : mapping
        ``{"vpn0": int64[n], "order": int8[n, ptes], "pmd_mapped": bool[n]}``.
    max_rows : int
        Most image rows; more PMDs are binned (see the module docstring).

    Returns
    -------
    map_rgb : ndarray, float[rows, ptes, 3]
    strip_rgb : ndarray, float[rows, 1, 3]
    rows_per_bin : int
    categories : ndarray of int
        Palette indices present in the image.
    """
    order = np.asarray(layout["order"])
    if order.ndim != 2:
        raise ValueError("layout 'order' must be 2-D (PMDs x PTEs)")
    mapped = np.asarray(layout["pmd_mapped"], dtype=bool)
    cat, frac, k = _downsample(category_index(order), mapped, max(1, max_rows))
    grey = 1.0 - frac  # 0 -> white, 1 -> black
    strip = np.repeat(grey[:, None, None], 3, axis=2)
    return _PALETTE[cat], strip, k, np.unique(cat)


def _map_panel(fig: Figure, spec, layout, title: str, max_rows: int):
    rgb, strip, k, cats = layout_image(layout, max_rows)
    vpn0 = np.asarray(layout["vpn0"], dtype=np.int64)
    sub = spec.subgridspec(1, 2, width_ratios=[1, 24], wspace=0.02)
    ax_s = fig.add_subplot(sub[0])
    ax = fig.add_subplot(sub[1])
    rows, cols = rgb.shape[:2]
    ax.imshow(rgb, aspect="auto", interpolation="nearest",
              extent=(-0.5, cols - 0.5, rows - 0.5, -0.5))
    ax_s.imshow(strip, aspect="auto", interpolation="nearest",
                extent=(-0.5, 0.5, rows - 0.5, -0.5))
    ax_s.set_xticks([0], ["PMD"])
    ax_s.set_ylabel("PMD (first VPN)" + (f", {k} per row" if k > 1 else ""))
    ticks = np.unique(np.linspace(0, max(rows - 1, 0), num=min(rows, 8)).round().astype(int))
    ax_s.set_yticks(ticks, [f"{vpn0[min(t * k, vpn0.size - 1)]:#x}" for t in ticks])
    ax.set_yticks([])
    ax.set_xlabel("PTE index within the PMD")
    ax.set_title(title)
    ax.set_xlim(-0.5, cols - 0.5)
    return ax, cats


def address_map_figure(layouts: Mapping[str, Mapping[str, np.ndarray]], title: str = "",
                       max_rows: int = 256) -> Figure:
    """Address-space map: one panel per layout (``"before"``, ``"after"``) side by side.

    Parameters
    ----------
    layouts : mapping of str to layout
        Panel title -> layout (see :func:`layout_image`); panels in mapping order.
    title : str
        Figure title.
    max_rows : int
        Most image rows per panel.

    Returns
    -------
    Figure
    """
    names = list(layouts)
    cols = max((np.asarray(layouts[n]["order"]).shape[1] for n in names), default=512)
    nrows = max((min(len(layouts[n]["vpn0"]), max_rows) for n in names), default=1)
    # >= 1 pixel per PTE slot and per row, so nearest-neighbour shows every page
    w_in = len(names) * (cols + 160) / DPI + 2.0
    h_in = (max(240, min(3 * nrows, 800)) + 120) / DPI
    fig = Figure(figsize=(w_in, h_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(1, max(1, len(names)))
    present: set[int] = set()
    for i, name in enumerate(names):
        _, cats = _map_panel(fig, grid[i], layouts[name], name, max_rows)
        present.update(int(c) for c in cats)
    # legend: none/zero/swap always, orders up to the PMD order (and any other present)
    top = int(math.log2(cols)) if cols > 0 else 9
    show = sorted(set(range(3 + min(top, MAX_ORDER) + 1)) | present)
    handles = [Patch(facecolor=_PALETTE[c], edgecolor="#666666", label=_CAT_NAMES[c])
               for c in show]
    handles.append(Patch(facecolor="black", label="PMD-mapped (strip)"))
    fig.legend(handles=handles, loc="outside right center", title="page state",
               fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


# --- time series ----------------------------------------------------------------------
_MIB = 1024.0  # series are in kB


def _t(series: Mapping[str, np.ndarray]) -> np.ndarray:
    return np.asarray(series["t_s"], dtype=float)


def _lines(ax, series, keys: Sequence[tuple[str, str]], scale: float = 1.0) -> int:
    n = 0
    for key, label in keys:
        if key in series:
            ax.plot(_t(series), np.asarray(series[key], dtype=float) / scale, label=label)
            n += 1
    if n:
        ax.legend(fontsize="small")
    return n


def folio_size_columns(series: Mapping[str, np.ndarray]) -> list[tuple[int, str]]:
    """``[(size_kb, column)]`` of the ``folio_kb_<size>`` columns, by size."""
    out = []
    for key in series:
        if key.startswith("folio_kb_"):
            try:
                out.append((int(key[len("folio_kb_"):]), key))
            except ValueError:
                continue
    return sorted(out)


def plot_memory(ax, series) -> None:
    """RSS, anon, PMD-mapped and bloat (MiB) over time."""
    _lines(ax, series, [("rss_kb", "RSS"), ("anon_kb", "anon"),
                        ("pmd_mapped_kb", "PMD-mapped"), ("bloat_kb", "bloat")], _MIB)
    ax.set(title="Memory", xlabel="time (s)", ylabel="MiB")


def plot_tlb(ax, series) -> None:
    """TLB entries needed to map the process, per TLB model."""
    _lines(ax, series, [(f"tlb_{m}", m) for m in ("x86-64", "amd", "arm64")])
    ax.set(title="TLB entries (reach)", xlabel="time (s)", ylabel="entries")


def plot_folios(ax, series) -> None:
    """Stacked areas: memory in folios of each size (MiB)."""
    cols = folio_size_columns(series)
    if cols:
        ys = [np.asarray(series[c], dtype=float) / _MIB for _, c in cols]
        labels = [f"{kb} kB" if kb < 1024 else f"{kb // 1024} MB" for kb, _ in cols]
        ax.stackplot(_t(series), *ys, labels=labels)
        ax.legend(fontsize="x-small", ncols=2, loc="upper left")
    ax.set(title="Memory by folio size", xlabel="time (s)", ylabel="MiB")


def plot_collapses(ax, series) -> None:
    """khugepaged collapse attempts, successes and copies."""
    _lines(ax, series, [("khugepaged_attempts", "attempts"),
                        ("khugepaged_successes", "successes"),
                        ("khugepaged_copies", "copies")])
    ax.set(title="khugepaged collapses", xlabel="time (s)", ylabel="count")


def plot_scanning(ax, series) -> None:
    """khugepaged pages scanned."""
    _lines(ax, series, [("khugepaged_pages_scanned", "pages scanned")])
    ax.set(title="khugepaged scanning", xlabel="time (s)", ylabel="pages")


def plot_cpu(ax, series) -> None:
    """khugepaged modelled CPU time."""
    _lines(ax, series, [("khugepaged_cpu_ms", "CPU")])
    ax.set(title="khugepaged CPU", xlabel="time (s)", ylabel="ms")


def run_timeseries_figure(series: Mapping[str, np.ndarray], title: str = "") -> Figure:
    """Six panels for one run: memory, TLB, folio sizes, collapses, scanning, CPU.

    Parameters
    ----------
    series : mapping of str to ndarray
        Equal-length columns including ``t_s`` (RunResult.series).
    title : str

    Returns
    -------
    Figure
    """
    fig = Figure(figsize=(12, 10), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, 2)
    for ax, fn in zip(axes.flat, (plot_memory, plot_tlb, plot_folios, plot_collapses,
                                  plot_scanning, plot_cpu), strict=True):
        fn(ax, series)
    if title:
        fig.suptitle(title)
    return fig


_STYLES = ("-", "--", "-.", ":")
COMPARE_PANELS = (("rss_kb", "RSS", "MiB", _MIB), ("bloat_kb", "Bloat", "MiB", _MIB),
                  ("pmd_mapped_kb", "PMD-mapped memory", "MiB", _MIB),
                  ("tlb_x86-64", "TLB entries (x86-64)", "entries", 1.0))


def compare_figure(runs: Sequence[tuple[str, Mapping[str, np.ndarray]]],
                   title: str = "") -> Figure:
    """One line per run in each of RSS, bloat, PMD-mapped memory and TLB entries.

    Parameters
    ----------
    runs : sequence of (label, series)
    title : str

    Returns
    -------
    Figure
    """
    fig = Figure(figsize=(12, 8), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    for ax, (key, name, unit, scale) in zip(axes.flat, COMPARE_PANELS, strict=True):
        for i, (label, series) in enumerate(runs):
            if key in series:
                # alternating dash patterns keep coinciding runs visible under each other
                ax.plot(_t(series), np.asarray(series[key], dtype=float) / scale, label=label,
                        linestyle=_STYLES[i % len(_STYLES)])
        ax.set(title=name, xlabel="time (s)", ylabel=unit)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(3, len(labels)),
                   fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


# --- sweeps -----------------------------------------------------------------------------
def sweep_summary_figure(rows: Sequence[Mapping[str, object]], metrics: Sequence[str],
                         title: str = "") -> Figure:
    """Grouped bars per workload: mean of each metric over seeds, whiskers min..max.

    Parameters
    ----------
    rows : sequence of mapping
        One per finished cell, with ``workload_label``, ``run_label`` and the metrics.
    metrics : sequence of str
        Summary columns, one panel each (missing values are skipped).
    title : str

    Returns
    -------
    Figure
    """
    workloads = sorted({str(r["workload_label"]) for r in rows})
    runs = sorted({str(r["run_label"]) for r in rows})
    n = max(1, len(metrics))
    fig = Figure(figsize=(max(7.0, 1.2 * len(workloads) * max(1, len(runs)) / 2 + 3), 3.2 * n),
                 dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(n, 1, squeeze=False)[:, 0])
    width = 0.8 / max(1, len(runs))
    x = np.arange(len(workloads))
    for ax, metric in zip(axes, metrics, strict=False):
        for j, run in enumerate(runs):
            mean, lo, hi = [], [], []
            for w in workloads:
                vals = np.array([float(r[metric]) for r in rows
                                 if r["workload_label"] == w and r["run_label"] == run
                                 and r.get(metric) is not None
                                 and not np.isnan(float(r[metric]))])
                m = vals.mean() if vals.size else np.nan
                mean.append(m)
                lo.append(m - vals.min() if vals.size else 0.0)
                hi.append(vals.max() - m if vals.size else 0.0)
            ax.bar(x + (j - (len(runs) - 1) / 2) * width, mean, width, yerr=[lo, hi],
                   label=run, capsize=2)
        ax.set_xticks(x, workloads)
        ax.set(title=metric, xlabel="workload", ylabel=metric)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(3, len(labels)),
                   fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


def png_bytes(fig: Figure) -> bytes:
    """Render ``fig`` as PNG at its own dpi (pixel coordinates match the canvas)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return buf.getvalue()


def save_png(fig: Figure, path) -> None:
    """Write ``fig`` as a PNG to ``path`` atomically."""
    write_atomic_bytes(str(path), png_bytes(fig))
