"""The pictures of an evaluation: ``report.png`` (the worst and best images, with the target and the
detected hand skeletons) and ``compare.png`` (one bar chart per metric column of ``--compare``).

Images are ranked by their hand error: the mean over an image's target hands of the matched detection's
distance (mean keypoint distance / target box size, `manifests.matching`), a target nobody matched
counting as `MISSED`. Only the images shown are read, so the picture costs a few images' memory.
"""

from __future__ import annotations

import math
import os

import numpy as np

from manifests.matching import MatchConfig, match_instances

REPORT_PNG = "report.png"
COMPARE_PNG = "compare.png"
MISSED = 1.0  # a target hand with no matched detection: one whole box size off
TILES = 4  # worst and best images each
TARGET_COLOR = (255, 255, 255)


def hand_error(predictions, targets, config: MatchConfig | None = None) -> float | None:
    """Mean over `targets` (`manifests.matching.Instance`) of the matched prediction's distance, `MISSED`
    for a target left unmatched; None for an image without target hands."""
    if not targets:
        return None
    pairs = {p.target: p.distance for p in match_instances(predictions, targets, config)}
    return float(np.mean([pairs.get(i, MISSED) for i in range(len(targets))]))


def worst_and_best(errors: dict[str, float | None], n: int = TILES) -> tuple[list[str], list[str]]:
    """(the `n` image ids of largest error, worst first; the `n` of smallest, best first), disjoint: of
    fewer than 2n images, the worse half and the better half."""
    ranked = sorted((e, i) for i, e in errors.items() if e is not None and math.isfinite(e))
    k = min(n, math.ceil(len(ranked) / 2))  # fewer than 2n images: the worse half and the better half
    worst = [i for _, i in reversed(ranked[len(ranked) - k :])]
    best = [i for _, i in ranked[: min(n, len(ranked) - k)]]
    return worst, best


def draw_skeletons(image: np.ndarray, frame: tuple[int, int], targets, detections, fmap=None) -> np.ndarray:
    """`image` shown in the target `frame` (w, h) through its `framing.FrameMap` `fmap` (default: the
    whole frame, resized; a windowed image sits at its window), the target hands in white under the
    detected ones (OpenPose colours)."""
    import cv2

    from manifests.draw import HAND_EDGES, draw_hand

    from .framing import FrameMap

    fmap = fmap or FrameMap.whole(frame, image.shape[1::-1])
    out = fmap.frame_image(image, frame)
    thickness = max(2, max(frame) // 160)
    for t in targets:
        pts = np.asarray(t.keypoints, dtype=np.float64)[:, :2]
        for a, b in HAND_EDGES:
            p, q = (tuple(int(round(v)) for v in pts[k]) for k in (a, b))
            cv2.line(out, p, q, TARGET_COLOR, thickness + 2, cv2.LINE_AA)
    for d in detections:
        out = draw_hand(out, d.keypoints)
    return out


def report_picture(
    out: str,
    errors: dict[str, float | None],
    load_image,
    frames: dict[str, tuple[int, int]],
    targets: dict,
    detections: dict,
    label: str,
) -> str | None:
    """Write ``out/report.png``: the worst then the best images by hand error. `load_image(image_id)`
    gives (H, W, 3) uint8 RGB; `frames` the target frame (w, h) of each id. None when no image has
    target hands."""
    from manifests.plots import image_grid, save_figure

    worst, best = worst_and_best(errors)
    if not worst:
        return None
    columns = max(len(worst), len(best))
    tiles, titles = [], []
    for kind, ids in (("worst", worst), ("best", best)):
        for rank, image_id in enumerate(ids, 1):
            det = detections[image_id]
            tiles.append(
                draw_skeletons(
                    load_image(image_id), frames[image_id], targets[image_id], det.hands, det.frame_map
                )
            )
            name = image_id if len(image_id) <= 16 else image_id[:15] + "…"
            titles.append(f"{kind} {rank}: {name} ({errors[image_id]:.3f})")
        for _ in range(columns - len(ids)):  # each kind on rows of its own
            tiles.append(np.full((8, 8, 3), 255, np.uint8))
            titles.append("")
    fig = image_grid(
        tiles,
        titles,
        columns=columns,
        tile_inches=2.6,
        suptitle=f"{label}: hand error, worst and best (white: target)",
    )
    return save_figure(fig, os.path.join(out, REPORT_PNG))


def compare_picture(rows: list[dict], columns: list, out: str) -> str | None:
    """Write ``out/compare.png``: a bar per report for every ranked column that has a value; the
    column header says which way is better. None when no column has a value."""
    import matplotlib.pyplot as plt

    from manifests.plots import save_figure

    shown = [
        c
        for c in columns
        if c.higher_is_better is not None and any(r.get(c.header) is not None for r in rows)
    ]
    if not shown:
        return None
    cols = min(3, len(shown))
    n_rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(4.2 * cols, 3.2 * n_rows), squeeze=False)
    labels = [str(r.get("label")) for r in rows]
    for ax, column in zip(axes.ravel(), shown):
        values = [r.get(column.header) for r in rows]
        heights = [float(v) if v is not None else 0.0 for v in values]
        bars = ax.bar(range(len(rows)), heights, color="#4c72b0")
        ax.bar_label(bars, [column.format(v) for v in values], padding=2, fontsize=8)
        ax.set_xticks(range(len(rows)), labels, rotation=20 if max(map(len, labels)) > 8 else 0, ha="right")
        ax.set_title(f"{column.header} (↑ higher, ↓ lower is better)", fontsize=9)
        ax.margins(y=0.2)
    for ax in axes.ravel()[len(shown) :]:
        ax.set_axis_off()
    fig.tight_layout()
    return save_figure(fig, os.path.join(out, COMPARE_PNG))
