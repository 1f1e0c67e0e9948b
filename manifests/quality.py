"""Annotation checks that need no ground truth: do a hand's mask and its keypoints tell the same story?

Two figures per hand, both in the crop's own pixels:

- **keypoint coverage**: the share of the 21 keypoints that lie on the mask, after the mask is grown
  by ``tolerance`` x the hand size (fingertip keypoints sit right at the skin's edge, so a mask that
  follows the outline exactly would otherwise miss them). A low value means the mask missed fingers,
  or covers another object.
- **area ratio**: mask area / area of the convex hull of the keypoints. The hull leaves out the
  fingers' width and the palm's rim, so a good mask is about as large or somewhat larger (0.8-1.8 on
  the 47 GrabCut hands of `hagrid_mini`; a mask filling a whole crop with the default 25% margin is
  about 4-5). A ratio far above that means the mask leaked onto the arm, the face or the background;
  far below, that it covers only part of the hand.

`hand_mask_agreement` computes both for every hand of a manifest and flags the hands outside the
`AgreementConfig` limits, with the reason. It reads only the masks and keypoints (small columns).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from . import decode
from .reader import Manifest, open_manifest

COLUMNS = ["hand_id", "image_id", "label", "handedness", "handedness_score", "hand_size", "mask",
           "mask_method", "mask_score", "crop_size", "crop_keypoints"]  # fmt: skip


@dataclass
class AgreementConfig:
    """Limits outside which a hand's mask is flagged as disagreeing with its keypoints."""

    tolerance: float = 0.05  # mask growth before the coverage test, as a fraction of the hand size
    min_coverage: float = 0.8  # share of keypoints that must lie on the (grown) mask
    min_area_ratio: float = 0.7  # mask area / keypoint hull area below this: the mask misses part of the hand
    max_area_ratio: float = 3.0  # above this: the mask leaked past the hand (a whole 25%-margin crop is ~4-5)

    def to_dict(self) -> dict:
        return asdict(self)


def hull_area(points: np.ndarray) -> float:
    """Area in px^2 of the convex hull of (N, >=2) points (0 for fewer than 3)."""
    pts = np.asarray(points, dtype=np.float32)[:, :2]
    if len(pts) < 3:
        return 0.0
    return float(cv2.contourArea(cv2.convexHull(pts)))


def mask_keypoint_agreement(mask: np.ndarray, keypoints: np.ndarray, tolerance: float = 0.05) -> dict:
    """Coverage and area ratio of one hand (see the module docstring).

    mask: (S, S) bool in crop pixels; keypoints: (21, >=2) crop pixels. Returns floats
    ``coverage`` (0..1), ``area_ratio`` (inf when the hull is degenerate), ``mask_area`` and
    ``hull_area`` (px^2 of the crop).
    """
    m = np.asarray(mask) > 0
    pts = np.asarray(keypoints, dtype=np.float64)[:, :2]
    xy = pts.min(axis=0), pts.max(axis=0)
    size = float(max(xy[1] - xy[0]))
    grow = int(round(tolerance * size))
    grown = cv2.dilate(m.astype(np.uint8), np.ones((2 * grow + 1, 2 * grow + 1), np.uint8)) > 0 if grow else m
    h, w = m.shape
    ix = np.clip(np.floor(pts[:, 0]).astype(int), 0, w - 1)
    iy = np.clip(np.floor(pts[:, 1]).astype(int), 0, h - 1)
    inside = (pts[:, 0] >= 0) & (pts[:, 0] < w) & (pts[:, 1] >= 0) & (pts[:, 1] < h)
    coverage = float((grown[iy, ix] & inside).mean())
    area, hull = float(m.sum()), hull_area(pts)
    return {"coverage": coverage, "area_ratio": area / hull if hull > 0 else float("inf"), "mask_area": area,
            "hull_area": hull}  # fmt: skip


def disagreement(row: dict, config: AgreementConfig) -> str | None:
    """Why a hand's mask disagrees with its keypoints (a short reason), or None when it agrees."""
    reasons = []
    if row["coverage"] < config.min_coverage:
        reasons.append(f"{row['coverage']:.0%} of keypoints on the mask")
    if row["area_ratio"] < config.min_area_ratio:
        reasons.append(f"mask {row['area_ratio']:.2f}x the keypoint hull (too small)")
    elif row["area_ratio"] > config.max_area_ratio:
        reasons.append(f"mask {row['area_ratio']:.1f}x the keypoint hull (leaks)")
    return "; ".join(reasons) or None


def hand_mask_agreement(manifest: Manifest | str, config: AgreementConfig | None = None) -> list[dict]:
    """One dict per hand with a mask: the hand's id, label, scores and size, plus ``coverage``,
    ``area_ratio``, ``mask_area``, ``hull_area`` and ``disagrees`` (the reason, or None).

    Hands without a mask (a run with ``mask_method=none``) are left out.
    """
    config = config or AgreementConfig()
    m = manifest if isinstance(manifest, Manifest) else open_manifest(manifest)
    out = []
    for _, table in m.iter_row_groups("hands", COLUMNS):
        for row in table.to_pylist():
            if row["mask"] is None:
                continue
            figures = mask_keypoint_agreement(
                decode.mask_array(row), decode.crop_keypoints(row), config.tolerance
            )
            rec = {k: row[k] for k in COLUMNS if k not in ("mask", "crop_keypoints")}
            rec.update(figures)
            rec["disagrees"] = disagreement(rec, config)
            out.append(rec)
    return out
