"""``hands.mean_confidence``: the mean hand-detection confidence over the detected hands (Hand1000's
hand confidence).

A hand's confidence is the score its detector reports with it (`detect.HandDetection.confidence`):
for prep's MediaPipe annotator, the score MediaPipe Hands gives each hand it returns, the only
per-hand confidence its solution exposes. Hands below the detector's own threshold
(``min_hand_score``) are never returned, so the mean is over what the detector accepted; the share
of target hands found at all is ``hands.detected_share``. Hands whose detector gives no confidence
are left out; with none left the value is null, with the reason.
"""

from __future__ import annotations

import numpy as np

from ..registry import Column, Metric, MetricUnavailable, PoseSample, register


class MeanConfidence:
    def __init__(self, ctx):
        self.values: list[float] = []
        self.detected = 0

    def update(self, sample: PoseSample) -> None:
        self.detected += len(sample.detections.hands)
        self.values += [h.confidence for h in sample.detections.hands if h.confidence is not None]

    def result(self) -> dict:
        if not self.values:
            raise MetricUnavailable(
                "the detector gives no hand confidence" if self.detected else "no hand detected"
            )
        return {
            "hands": {"mean_confidence": float(np.mean(self.values)), "confidence_count": len(self.values)}
        }


register(
    Metric(
        name="hand_confidence",
        make=MeanConfidence,
        columns=(Column("Hand conf. ↑", ("hands", "mean_confidence"), True, "f2"),),
        null={"hands": {"mean_confidence": None, "confidence_count": 0}},
        legend="Hand conf.: mean hand-detection confidence over the detected hands (Hand1000), as the "
        "detector reports it (MediaPipe Hands' per-hand score).",
        order=60,
    )
)
