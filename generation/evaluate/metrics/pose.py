"""Pose accuracy of hands and bodies: detections matched to the manifest's targets (`manifests.matching`).

Hands: 21 keypoints with handedness, scored with the COCO-WholeBody hand sigmas. Bodies: MediaPipe
Pose's 33 landmarks mapped to COCO-17; a target body keypoint counts when its visibility is at least
`EvalConfig.min_body_visibility`, while every detected keypoint is a position.
"""

from __future__ import annotations

import numpy as np

from manifests.matching import Instance, PoseScorer, mediapipe33_to_coco17

from ..registry import Column, Metric, PoseSample, register


def hand_predictions(det) -> list[Instance]:
    return [Instance(h.keypoints, h.handedness, h.score) for h in det.hands]


def body_target(keypoints, min_visibility: float) -> list[Instance]:
    if keypoints is None:
        return []
    coco = mediapipe33_to_coco17(np.asarray(keypoints, dtype=np.float64))
    return [Instance(coco, valid=coco[:, 2] >= min_visibility)]


def body_predictions(det) -> list[Instance]:
    if det.body is None:
        return []
    coco = mediapipe33_to_coco17(det.body)
    # Every predicted keypoint is a position (MediaPipe always places all 33); validity is the target's.
    return [Instance(coco, score=det.body_score or 1.0, valid=np.ones(17, bool))]


class PoseAccuracy:
    """Matches each image's detections to its targets; the report block is `PoseScorer.result()`."""

    def __init__(self, ctx, block: str, kind: str, suffix: str):
        self.scorer = PoseScorer(kind, config=ctx.config.match)
        self.block, self.suffix = block, suffix
        self.min_visibility = ctx.config.min_body_visibility
        self.ctx, self.images, self.without_body = ctx, 0, 0

    def update(self, sample: PoseSample) -> dict:
        det = sample.detections
        self.images += 1
        self.without_body += det.body is None and sample.target_hands != []
        if self.block == "hands":
            r = self.scorer.add(sample.image_id, hand_predictions(det), sample.target_hands)
        else:
            targets = body_target(sample.target_body, self.min_visibility)
            r = self.scorer.add(sample.image_id, body_predictions(det), targets)
        s = self.suffix
        return {f"target_{s}": r.num_targets, f"detected_{s}": r.num_preds, f"matched_{s}": len(r.pairs)}

    def result(self) -> dict:
        note = body_gate_note(self.without_body, self.images, self.ctx.prep_config)
        if self.block == "hands" and self.without_body and note:
            self.ctx.note(note)
        return {self.block: self.scorer.result()}


def body_gate_note(without_body: int, images: int, prep_config) -> str | None:
    """The report note on images whose small hands could not be found for want of a body (None when the
    detector does not search around the body's wrists)."""
    if getattr(prep_config, "wrist_refine", True) is False:
        return None
    return (
        f"body detection gates hand detection: {without_body} of {images} images with target hands had no "
        "detected body, and the detector's wrist pass, which finds the small hands, searches around a "
        "detected body's wrists; the crop columns (Crop det. %, Crop PCK@0.2) search each target hand's "
        "own crop box and need no body"
    )


register(
    Metric(
        name="hand_pose",
        make=lambda ctx: PoseAccuracy(ctx, "hands", "hand", "hands"),
        columns=(
            Column("Hands det. % ↑", ("hands", "detected_share"), True, "pct"),
            Column("Hand PCK@0.1 ↑", ("hands", "pck_0.1"), True, "pct"),
            Column("Hand PCK@0.2 ↑", ("hands", "pck_0.2"), True, "pct"),
            Column("Hand err. px ↓", ("hands", "mean_error_px"), False, "f1"),
            Column("Hand OKS AP ↑", ("hands", "oks_ap"), True, "pct"),
        ),
        legend="Pose: hands and bodies detected in each image with the report's detector (prep's MediaPipe "
        "annotator by default), matched to the manifest's target poses (Hungarian, keypoint distance, "
        "handedness tie-break). PCK over matched instances, threshold × the target's keypoint-box max side; "
        "OKS AP@[.5:.95] (pycocotools; COCO-WholeBody hand sigmas, COCO-17 body sigmas). Body columns use "
        "the COCO-17 layout.",
        order=10,
    )
)

register(
    Metric(
        name="body_pose",
        make=lambda ctx: PoseAccuracy(ctx, "body", "body", "body"),
        columns=(
            Column("Body det. % ↑", ("body", "detected_share"), True, "pct"),
            Column("Body PCK@0.2 ↑", ("body", "pck_0.2"), True, "pct"),
            Column("Body OKS AP ↑", ("body", "oks_ap"), True, "pct"),
        ),
        order=20,
    )
)
