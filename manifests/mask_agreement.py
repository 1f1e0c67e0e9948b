"""Annotation checks that need no ground truth: do a hand's mask and its keypoints tell the same story?

Two figures per hand, both in the crop's own pixels:

- **keypoint coverage**: the share of the 21 keypoints that lie on the mask, after the mask is grown
  by ``tolerance`` x the hand size (fingertip keypoints sit right at the skin's edge, so a mask that
  follows the outline exactly would otherwise miss them). A low value means the mask missed fingers,
  covers another object, or the keypoints lie outside the photo (a hand cut by the frame).
- **area ratio**: mask area / area of the *keypoint silhouette*, the skeleton drawn with strokes
  ``finger_width`` x the hand size wide plus the filled palm polygon (wrist and the five finger
  bases): a crude hand shape that follows the pose, so an edge-on hand gets a thin silhouette rather
  than a convex hull that its mask would dwarf. On the 47 GrabCut hands of `hagrid_mini` the ratio
  is 0.99-1.54 (5th-95th percentile); a mask filling a whole crop with the default 25% margin is
  several times the silhouette. Far above: the mask leaked onto the arm, the face or the background;
  far below: it covers only part of the hand.

`hand_mask_agreement` computes both for every hand of a manifest and flags the hands outside the
`AgreementConfig` limits, with the reason. It reads only the masks and keypoints (small columns).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from . import decode
from .geometry import hand_silhouette, keypoint_coverage
from .reader import Manifest, open_manifest

COLUMNS = [
    "hand_id",
    "image_id",
    "label",
    "handedness",
    "handedness_score",
    "hand_size",
    "mask",
    "mask_method",
    "mask_score",
    "crop_size",
    "crop_keypoints",
]


@dataclass
class AgreementConfig:
    """Limits outside which a hand's mask is flagged as disagreeing with its keypoints."""

    tolerance: float = 0.05  # mask growth before the coverage test, as a fraction of the hand size
    finger_width: float = 0.12  # stroke width of the keypoint silhouette, as a fraction of the hand size
    min_coverage: float = 0.8  # share of keypoints that must lie on the (grown) mask
    min_area_ratio: float = 0.6  # mask area / silhouette area below this: the mask misses part of the hand
    max_area_ratio: float = 2.5  # above this: the mask leaked past the hand

    def to_dict(self) -> dict:
        return asdict(self)


def silhouette(keypoints: np.ndarray, shape: tuple[int, int], finger_width: float = 0.12) -> np.ndarray:
    """(H, W) bool crude hand shape of (21, >=2) pixel keypoints (`manifests.geometry.hand_silhouette`):
    strokes ``finger_width`` x the hand size wide (at least 1 px) and the palm's convex hull."""
    pts = np.asarray(keypoints, dtype=np.float64)[:, :2]
    size = float((pts.max(axis=0) - pts.min(axis=0)).max())
    return hand_silhouette(pts, shape, max(1, int(round(finger_width * size))))


def mask_keypoint_agreement(
    mask: np.ndarray, keypoints: np.ndarray, tolerance: float = 0.05, finger_width: float = 0.12
) -> dict:
    """Coverage and area ratio of one hand (see the module docstring).

    mask: (S, S) bool in crop pixels; keypoints: (21, >=2) crop pixels. Returns floats
    ``coverage`` (0..1), ``area_ratio``, ``mask_area`` and ``silhouette_area`` (px^2 of the crop).
    """
    m = np.asarray(mask) > 0
    pts = np.asarray(keypoints, dtype=np.float64)[:, :2]
    size = float((pts.max(axis=0) - pts.min(axis=0)).max())
    coverage = keypoint_coverage(m, pts, grow=int(round(tolerance * size)))
    area, expected = float(m.sum()), float(silhouette(pts, m.shape, finger_width).sum())
    return {
        "coverage": coverage,
        "area_ratio": area / expected if expected > 0 else float("inf"),
        "mask_area": area,
        "silhouette_area": expected,
    }


def disagreement(row: dict, config: AgreementConfig) -> str | None:
    """Why a hand's mask disagrees with its keypoints (a short reason), or None when it agrees."""
    reasons = []
    if row["coverage"] < config.min_coverage:
        reasons.append(f"{row['coverage']:.0%} of keypoints on the mask")
    if row["area_ratio"] < config.min_area_ratio:
        reasons.append(f"mask {row['area_ratio']:.2f}x the keypoint silhouette (too small)")
    elif row["area_ratio"] > config.max_area_ratio:
        reasons.append(f"mask {row['area_ratio']:.1f}x the keypoint silhouette (leaks)")
    return "; ".join(reasons) or None


def hand_mask_agreement(manifest: Manifest | str, config: AgreementConfig | None = None) -> list[dict]:
    """One dict per hand with a mask: the hand's id, label, scores and size, plus ``coverage``,
    ``area_ratio``, ``mask_area``, ``silhouette_area`` and ``disagrees`` (the reason, or None).

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
