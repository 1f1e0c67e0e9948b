"""``hands.wrist_gap``: how far each detected hand's wrist lies from the body's wrist, in hand sizes.

The connectivity failure the paper names as a limitation: a hand drawn well, but not at the end of
the arm. Both poses are detected in the same (generated) image; for each detected hand,

    gap = || hand keypoint 0 (wrist) - nearest body wrist || / hand size

where the body wrists are MediaPipe Pose's ``left_wrist`` and ``right_wrist`` with visibility at least
`EvalConfig.min_body_visibility`, and the hand size is the longer side of the box around its 21
keypoints (the size PCK normalises by, floored at `MatchConfig.min_box_size`). The nearest wrist, not
the same-side one: the question is whether the hand is attached to an arm at all, and detectors swap
left and right. A hand in an image with no visible body wrist is not scored and is counted in
``wrist_gap_unscored``. The report gives the mean (``wrist_gap``), the median and the count; the
per-image file lists each detected hand's gap (null when unscored).
"""

from __future__ import annotations

import numpy as np

from manifests.matching import Instance
from manifests.pose import MEDIAPIPE_POSE_NAMES

from ..registry import Column, Metric, MetricUnavailable, PoseSample, register

WRISTS = [MEDIAPIPE_POSE_NAMES.index("left_wrist"), MEDIAPIPE_POSE_NAMES.index("right_wrist")]


def body_wrists(body: np.ndarray | None, min_visibility: float) -> np.ndarray:
    """(W, 2) positions of the visible wrists of a (33, 3) MediaPipe body (W = 0 without a body)."""
    if body is None:
        return np.zeros((0, 2))
    wrists = np.asarray(body, dtype=np.float64)[WRISTS]
    keep = (wrists[:, 2] >= min_visibility) & np.isfinite(wrists[:, :2]).all(axis=1)
    return wrists[keep, :2]


def wrist_gap(hand: np.ndarray, wrists: np.ndarray, min_size: float = 1.0) -> float | None:
    """Distance of `hand`'s wrist (keypoint 0 of (21, >=2)) to the nearest of `wrists` (W, 2), over
    the hand's size; None without a wrist."""
    if len(wrists) == 0:
        return None
    size = Instance(np.asarray(hand, dtype=np.float64)[:, :2]).box_size(min_size)
    return float(np.linalg.norm(wrists - np.asarray(hand[0][:2], dtype=np.float64), axis=1).min() / size)


class WristGap:
    def __init__(self, ctx):
        self.min_visibility = ctx.config.min_body_visibility
        self.min_size = ctx.config.match.min_box_size
        self.gaps: list[float] = []
        self.unscored = 0

    def update(self, sample: PoseSample) -> dict:
        wrists = body_wrists(sample.detections.body, self.min_visibility)
        gaps = [wrist_gap(h.keypoints, wrists, self.min_size) for h in sample.detections.hands]
        self.gaps += [g for g in gaps if g is not None]
        self.unscored += sum(g is None for g in gaps)
        return {"wrist_gap": gaps}

    def result(self) -> dict:
        if not self.gaps:
            why = (
                "no detected hand had a visible body wrist in its image"
                if self.unscored
                else "no hand detected"
            )
            raise MetricUnavailable(why, {"hands": {"wrist_gap_unscored": self.unscored}})
        return {
            "hands": {
                "wrist_gap": float(np.mean(self.gaps)),
                "wrist_gap_median": float(np.median(self.gaps)),
                "wrist_gap_count": len(self.gaps),
                "wrist_gap_unscored": self.unscored,
            }
        }


register(
    Metric(
        name="wrist_gap",
        make=WristGap,
        columns=(Column("Wrist gap ↓", ("hands", "wrist_gap"), False, "f2"),),
        null={
            "hands": {
                "wrist_gap": None,
                "wrist_gap_median": None,
                "wrist_gap_count": 0,
                "wrist_gap_unscored": 0,
            }
        },
        legend="Wrist gap: distance from each detected hand's wrist to the nearest visible body wrist detected "
        "in the same image, over the hand size (mean; the body-hand connectivity).",
        order=70,
    )
)
