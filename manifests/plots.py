"""Matplotlib figures for notebooks and reports: counts, histograms, image grids, heatmaps, per-keypoint bars.

Every chart has a title and labelled axes whose labels carry the unit, e.g. ``"hand size (px, original
image)"``; image grids title each tile. Functions draw onto an ``Axes`` you pass (charts) or return a
new ``Figure`` (grids), and never call ``plt.show()``. matplotlib is imported lazily, so importing
this module costs nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .draw import HAND_EDGE_COLORS
from .pose import HAND_KEYPOINT_NAMES

FINGERS = {"wrist": [0], "thumb": [1, 2, 3, 4], "index": [5, 6, 7, 8], "middle": [9, 10, 11, 12],
           "ring": [13, 14, 15, 16], "little": [17, 18, 19, 20]}  # fmt: skip


def _plt():
    import matplotlib.pyplot as plt

    return plt


def keypoint_colors() -> list[tuple[float, float, float]]:
    """One RGB colour (0..1) per hand keypoint: the colour of the skeleton edge that ends at it (wrist grey),
    so charts and `manifests.draw.draw_hand` drawings agree."""
    return [(0.5, 0.5, 0.5)] + [tuple(c / 255 for c in HAND_EDGE_COLORS[k - 1]) for k in range(1, 21)]


def bar_counts(ax, counts: Mapping[str, int], title: str, xlabel: str, ylabel: str = "count", top: int = 20):
    """Bars of category -> count (the `top` largest, in the given order), each bar labelled with its count."""
    items = list(counts.items())[:top]
    names = [str(k) for k, _ in items]
    values = [int(v) for _, v in items]
    bars = ax.bar(range(len(values)), values, color="#4c72b0")
    ax.set_xticks(
        range(len(values)),
        names,
        rotation=30 if max(map(len, names), default=0) > 6 else 0,
        ha="right" if max(map(len, names), default=0) > 6 else "center",
    )
    ax.bar_label(bars, padding=2, fontsize=8)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.margins(y=0.15)
    return ax


def histogram(
    ax,
    values: Sequence[float | None],
    title: str,
    xlabel: str,
    ylabel: str = "count",
    bins: int | Sequence[float] = 20,
    range_: tuple[float, float] | None = None,
    threshold: float | None = None,
    threshold_label: str = "threshold",
):
    """Histogram of the non-null, finite `values`, with the median marked (and `threshold`, if given).

    The legend says how many values were plotted and how many were null.
    """
    vals = np.array([v for v in values if v is not None], dtype=np.float64)
    vals = vals[np.isfinite(vals)]  # pandas turns nulls into NaN
    nulls = len(values) - vals.size
    if vals.size:
        ax.hist(vals, bins=bins, range=range_, color="#4c72b0", edgecolor="white")
        med = float(np.median(vals))
        ax.axvline(med, color="black", ls="--", lw=1, label=f"median {med:.3g} (n={vals.size}, {nulls} null)")
    else:
        ax.text(0.5, 0.5, f"no values ({nulls} null)", ha="center", va="center", transform=ax.transAxes)
    if threshold is not None:
        ax.axvline(threshold, color="#c44e52", lw=1.5, label=f"{threshold_label} {threshold:g}")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    return ax


def image_grid(
    images: Sequence[np.ndarray],
    titles: Sequence[str] | None = None,
    columns: int = 6,
    tile_inches: float = 2.2,
    suptitle: str | None = None,
    cmap: str | None = None,
    colorbar_label: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
):
    """A figure of images (H, W[, 3]) in a grid, each with its title; axes hidden (the pixels are the data).

    For single-channel arrays pass `cmap` and `colorbar_label` (the unit) to get one shared colour bar.
    The layout is fixed arithmetic rather than matplotlib's layout engines, which take seconds per grid.
    """
    plt = _plt()
    n = max(1, len(images))
    cols = min(columns, n)
    rows = (n + cols - 1) // cols
    head, cap, bar = (
        (0.45 if suptitle else 0.1),
        (0.25 if titles is not None else 0.05),
        (0.9 if colorbar_label else 0.0),
    )
    width, height = tile_inches * cols + bar, (tile_inches + cap) * rows + head
    fig, axes = plt.subplots(rows, cols, figsize=(width, height), squeeze=False)
    fig.subplots_adjust(
        left=0.05 / width,
        right=1 - (bar + 0.05) / width,
        bottom=0.05 / height,
        top=1 - head / height,
        wspace=0.04,
        hspace=cap / tile_inches,
    )
    shown = None
    for i, ax in enumerate(axes.ravel()):
        ax.set_axis_off()
        if i >= len(images):
            continue
        shown = ax.imshow(images[i], cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, y=1 - 0.08 / height, va="top")
    if colorbar_label and shown is not None:
        cax = fig.add_axes((1 - (bar - 0.15) / width, 0.15, 0.12 / width, 0.7))
        fig.colorbar(shown, cax=cax, label=colorbar_label)
    return fig


def heatmap_channels(
    heatmap: np.ndarray,
    names: Sequence[str] = HAND_KEYPOINT_NAMES,
    columns: int = 7,
    suptitle: str = "keypoint heatmap, one channel per keypoint",
):
    """(K, h, w) heatmap -> a figure with one panel per channel, titled by keypoint, sharing a 0..1 colour
    scale. The axes are heatmap pixels; only the outer panels carry ticks and axis labels."""
    plt = _plt()
    k, h, w = heatmap.shape
    rows = (k + columns - 1) // columns
    width, height = 1.55 * columns + 1.2, 1.6 * rows + 0.9
    fig, axes = plt.subplots(rows, columns, figsize=(width, height), squeeze=False, sharex=True, sharey=True)
    fig.subplots_adjust(
        left=0.6 / width,
        right=1 - 1.1 / width,
        bottom=0.55 / height,
        top=1 - 0.55 / height,
        wspace=0.08,
        hspace=0.3,
    )
    shown = None
    for i, ax in enumerate(axes.ravel()):
        if i >= k:
            ax.set_axis_off()
            continue
        shown = ax.imshow(heatmap[i], cmap="magma", vmin=0.0, vmax=1.0, extent=(0, w, h, 0))
        ax.set_title(f"{i} {names[i]}", fontsize=8)
        first_col, last_row = i % columns == 0, i + columns >= k
        ax.tick_params(
            labelsize=6, left=first_col, labelleft=first_col, bottom=last_row, labelbottom=last_row
        )
        if first_col:
            ax.set_ylabel("y (heatmap px)", fontsize=7)
        if last_row:
            ax.set_xlabel("x (heatmap px)", fontsize=7)
    fig.suptitle(suptitle, y=1 - 0.08 / height, va="top")
    cax = fig.add_axes((1 - 0.85 / width, 0.15, 0.15 / width, 0.7))
    fig.colorbar(shown, cax=cax, label="Gaussian value (peak 1 at the keypoint)")
    return fig


def per_keypoint_errorbars(summary: Mapping[str, list], threshold: float = 0.1, title: str | None = None):
    """Two panels from a `manifests.matching.keypoint_summary`: PCK@threshold per keypoint with its 95%
    Wilson interval, and the mean error (% of the hand's box size) with +-1 standard error.

    Bars are coloured by finger like the skeleton drawings; keypoints no hand had are left empty.
    """
    plt = _plt()
    key = f"pck_{threshold:g}"
    if key not in summary:
        raise KeyError(
            f"the summary has no {key}; it has {sorted(k for k in summary if k.startswith('pck_'))}"
        )
    x = np.arange(len(summary["n"]))
    colors = keypoint_colors()

    def arr(name, scale=1.0):
        return np.array([np.nan if v is None else v * scale for v in summary[name]], dtype=np.float64)

    pck, low, high = arr(key, 100), arr(f"{key}_low", 100), arr(f"{key}_high", 100)
    mean, sem = arr("mean_error", 100), arr("sem_error", 100)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True, layout="constrained")
    ax1.bar(x, np.nan_to_num(pck), color=colors, edgecolor="black", lw=0.4)
    ax1.errorbar(x, pck, yerr=[pck - low, high - pck], fmt="none", ecolor="black", capsize=3, lw=1)
    ax1.set_ylim(0, 105)
    ax1.set_ylabel(f"PCK@{threshold:g} (% of keypoints)")
    ax1.set_title(f"keypoints within {threshold:g} x hand size of the truth (95% Wilson interval)")
    ax2.bar(x, np.nan_to_num(mean), color=colors, edgecolor="black", lw=0.4)
    ax2.errorbar(x, mean, yerr=np.nan_to_num(sem), fmt="none", ecolor="black", capsize=3, lw=1)
    ax2.set_ylabel("mean error (% of hand size)")
    ax2.set_title("mean keypoint error, +-1 standard error")
    ax2.set_xticks(
        x,
        [f"{i} {n}" for i, n in enumerate(HAND_KEYPOINT_NAMES[: len(x)])],
        rotation=60,
        ha="right",
        fontsize=8,
    )
    ax2.set_xlabel("keypoint (MediaPipe order; colour = finger)")
    for ax in (ax1, ax2):
        for i, n in enumerate(summary["n"]):
            if n == 0:
                ax.text(i, 1, "n/a", ha="center", fontsize=6)
    counts = sorted(set(summary["n"]))
    fig.suptitle(title or f"per-keypoint accuracy over {counts[-1] if counts else 0} matched hands")
    return fig


def finger_table(summary: Mapping[str, list], threshold: float = 0.1) -> list[dict]:
    """Per finger (wrist, thumb, ..., little): valid keypoints, PCK@threshold and mean error (% of hand
    size), pooled over the finger's keypoints; sorted from hardest (lowest PCK) to easiest."""
    key = f"pck_{threshold:g}"
    rows = []
    for finger, idx in FINGERS.items():
        n = [summary["n"][i] for i in idx]
        total = sum(n)
        if not total:
            continue
        pck = sum(summary[key][i] * c for i, c in zip(idx, n) if c) / total
        err = sum(summary["mean_error"][i] * c for i, c in zip(idx, n) if c) / total
        rows.append(
            {
                "finger": finger,
                "keypoints": total,
                f"pck@{threshold:g} (%)": round(100 * pck, 1),
                "mean error (% of hand size)": round(100 * err, 1),
            }
        )
    return sorted(rows, key=lambda r: r[f"pck@{threshold:g} (%)"])


def manifest_overview(manifest, suptitle: str | None = None):
    """A 2x2 figure of a manifest (a root, a table directory or an open `Manifest`): hand size and mask score
    histograms, hands by handedness and by gesture label. Only those cheap columns are read. A panel
    whose table is missing says so."""
    from .reader import Manifest, open_manifest
    from .stats import counts

    m = manifest if isinstance(manifest, Manifest) else open_manifest(manifest)
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    if "hands" in m.tables:
        t = m.read("hands", ["hand_size", "mask_score", "handedness", "label"]).to_pydict()
        histogram(axes[0, 0], t["hand_size"], "hand size", "hand size (px, original image)", "hands")
        histogram(axes[0, 1], t["mask_score"], "mask score", "mask_score (0..1)", "hands", range_=(0, 1))
        bar_counts(axes[1, 0], counts(t["handedness"]), "hands by handedness", "handedness", "hands")
        bar_counts(axes[1, 1], counts(t["label"]), "hands by label", "label", "hands")
    else:
        for ax in axes.ravel():
            ax.text(0.5, 0.5, "no hands table", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
    fig.suptitle(suptitle or m.url, fontsize=10)
    fig.tight_layout()
    return fig


def save_figure(fig, path: str, dpi: int = 100) -> str:
    """Write `fig` to `path` (parent folders made; replaced whole, never half-written) and close it."""
    import os

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp{ext or '.png'}"
    fig.savefig(tmp, dpi=dpi)
    _plt().close(fig)
    os.replace(tmp, path)
    return path
