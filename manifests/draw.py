"""Overlays for people who would rather look than read: hand skeletons, OpenPose bodies, masks, sheets.

All functions take and return (H, W, 3) uint8 RGB numpy arrays and never modify their input.
"""

from __future__ import annotations

import colorsys

import cv2
import numpy as np

from .pose import HAND_EDGES, OPENPOSE_COLORS, OPENPOSE_LIMBS

# One hue per finger chain, as in OpenPose's hand renderer.
HAND_EDGE_COLORS = [
    tuple(int(c * 255) for c in colorsys.hsv_to_rgb(i / len(HAND_EDGES), 1.0, 1.0))
    for i in range(len(HAND_EDGES))
]


def draw_hand(
    image: np.ndarray,
    keypoints: np.ndarray,
    thickness: int | None = None,
    radius: int | None = None,
    antialias: bool = True,
) -> np.ndarray:
    """Draw a 21-keypoint hand skeleton ((21, >=2) pixels) on a copy of `image`.

    The OpenPose hand style: one hue per bone, blue joints. `antialias=False` draws hard edges, as
    ControlNet's OpenPose annotator does (the condition images use that).
    """
    out = np.ascontiguousarray(image.copy())
    side = max(out.shape[:2])
    thickness = thickness or max(1, side // 256)
    radius = radius or max(1, side // 160)
    line = cv2.LINE_AA if antialias else cv2.LINE_8
    pts = np.asarray(keypoints, dtype=np.float64)[:, :2]
    for (a, b), color in zip(HAND_EDGES, HAND_EDGE_COLORS):
        cv2.line(
            out,
            tuple(int(round(v)) for v in pts[a]),
            tuple(int(round(v)) for v in pts[b]),
            color,
            thickness,
            line,
        )
    for p in pts:
        cv2.circle(out, (int(round(p[0])), int(round(p[1]))), radius, (0, 0, 255), -1, line)
    return out


def draw_openpose(
    image: np.ndarray, keypoints18: np.ndarray, stickwidth: int = 4, radius: int = 4
) -> np.ndarray:
    """Draw an (18, 3) OpenPose body in the standard ControlNet colours; score-0 points are skipped."""
    out = np.ascontiguousarray(image.copy())
    kp = np.asarray(keypoints18, dtype=np.float64)
    for i, (a, b) in enumerate(OPENPOSE_LIMBS):
        if kp[a, 2] <= 0 or kp[b, 2] <= 0:
            continue
        pa_, pb = kp[a, :2], kp[b, :2]
        center = tuple(int(round(v)) for v in (pa_ + pb) / 2)
        length = float(np.hypot(*(pa_ - pb)))
        angle = float(np.degrees(np.arctan2(pa_[1] - pb[1], pa_[0] - pb[0])))
        poly = cv2.ellipse2Poly(center, (int(length / 2), stickwidth), int(angle), 0, 360, 1)
        color = tuple(int(c * 0.6) for c in OPENPOSE_COLORS[i])
        cv2.fillConvexPoly(out, poly, color)
    for i in range(18):
        if kp[i, 2] > 0:
            cv2.circle(out, (int(round(kp[i, 0])), int(round(kp[i, 1]))), radius, OPENPOSE_COLORS[i], -1)
    return out


def overlay_mask(image: np.ndarray, mask: np.ndarray, color=(0, 200, 255), alpha: float = 0.45) -> np.ndarray:
    """Tint the pixels where (H, W) `mask` is set and outline its border."""
    out = image.astype(np.float32).copy()
    m = np.asarray(mask) > 0
    out[m] = out[m] * (1 - alpha) + np.array(color, np.float32) * alpha
    out = out.astype(np.uint8)
    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, color, max(1, max(out.shape[:2]) // 256))
    return out


def contact_sheet(
    tiles: list[np.ndarray],
    columns: int = 8,
    tile: int = 128,
    captions: list[str] | None = None,
    background: int = 32,
    column_titles: list[str] | None = None,
) -> np.ndarray:
    """Lay out RGB tiles in a grid, each resized to `tile` x `tile`, with an optional caption strip under
    each tile and an optional header naming each column (`column_titles`)."""
    if not tiles:
        return np.full((tile, tile, 3), background, np.uint8)
    cap_h = 14 if captions else 0
    head_h = 16 if column_titles else 0
    rows = (len(tiles) + columns - 1) // columns
    cols = min(columns, len(tiles))
    sheet = np.full((head_h + rows * (tile + cap_h), cols * tile, 3), background, np.uint8)
    for c, title in enumerate((column_titles or [])[:cols]):
        cv2.putText(
            sheet,
            str(title)[:22],
            (c * tile + 2, 12),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.38,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
    for i, t in enumerate(tiles):
        r, c = divmod(i, columns)
        h, w = t.shape[:2]
        s = tile / max(h, w)
        small = cv2.resize(t, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
        y, x = head_h + r * (tile + cap_h), c * tile
        sheet[y : y + small.shape[0], x : x + small.shape[1]] = small
        if captions:
            cv2.putText(
                sheet,
                str(captions[i])[:22],
                (x + 2, y + tile + 11),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.33,
                (230, 230, 230),
                1,
                cv2.LINE_AA,
            )
    return sheet
