"""``hands.crop_detected_share`` and ``hands.crop_pck_0.2``: hands found in their own crop box, body or not.

The whole-image pose columns find a small hand only when the detector first finds a body: prep's
annotator finds hands under ~30 px through its wrist pass, which searches around the detected body's
wrists. These columns look for each target hand where it should be, as the stage-1 score does: the
target's crop box (the manifest's ``crop_box``, mapped into the evaluated image) is cut out and
upscaled to at least ``wrist_crop_min_size`` pixels (the size prep's wrist pass upscales its crops to),
the run's detector searches it, and the detected hand nearest to the target (mean keypoint distance
over the target's box size, `manifests.matching.Instance.box_size`) counts when it is within the match
gate (``--gate``, 0.5).

- ``crop_detected_share``: target hands found / target hands with a crop box;
- ``crop_pck_0.2``: the share of a found hand's valid target keypoints within 0.2 box sizes, averaged
  over the found hands.
"""

from __future__ import annotations

import numpy as np

from manifests.geometry import CropBox, crop_image
from manifests.matching import Instance

from ..registry import Column, Metric, MetricUnavailable, PixelSample, register


def hands_in_crop(model, image: np.ndarray, box, min_size: int) -> list[np.ndarray]:
    """(21, 2) keypoints, in `image` pixels, of the hands `model.detect` finds in the square crop `box`
    ([x0, y0, x1, y1] in `image` pixels) upscaled to at least `min_size` px."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0)
    crop = CropBox(x0, y0, side, max(int(min_size), int(round(side))))
    hands, _ = model.detect(crop_image(image, crop))
    return [crop.to_image(np.asarray(h.keypoints, np.float64))[:, :2] for h in hands]


def crop_match(found: list[np.ndarray], target: Instance, gate: float, min_size: float = 1.0):
    """(normalised errors (21,), or None): the found hand nearest to `target`, when within `gate`."""
    size = target.box_size(min_size)
    valid = target.valid
    best = None
    for kps in found:
        errors = np.linalg.norm(kps - target.keypoints[:, :2], axis=1) / size
        mean = float(errors[valid].mean()) if valid.any() else np.inf
        if mean <= gate and (best is None or mean < best[0]):
            best = (mean, errors)
    return None if best is None else best[1]


class CropDetection:
    def __init__(self, ctx):
        self.ctx = ctx
        self.gate = ctx.config.match.gate
        self.min_box = ctx.config.match.min_box_size
        self.targets = self.found = 0
        self.pcks: list[float] = []

    def update(self, sample: PixelSample) -> dict:
        if not sample.target_hands or len(sample.hand_boxes) != len(sample.target_hands):
            return {}
        model = self.ctx.detector_model()
        min_size = getattr(self.ctx.prep_config, "wrist_crop_min_size", 256)
        image, fmap = sample.generated, sample.generated_map
        found_here = 0
        for target, box in zip(sample.target_hands, sample.hand_boxes):
            self.targets += 1
            found = [fmap.to_frame(k) for k in hands_in_crop(model, image, fmap.box_to_image(box), min_size)]
            errors = crop_match(found, target, self.gate, self.min_box)
            if errors is not None:
                found_here += 1
                self.pcks.append(float((errors[target.valid] <= 0.2).mean()))
        self.found += found_here
        return {"crop_found_hands": found_here}

    def result(self) -> dict:
        if not self.targets:
            raise MetricUnavailable("no target hand with a crop box")
        return {
            "hands": {
                "crop_detected_share": self.found / self.targets,
                "crop_pck_0.2": float(np.mean(self.pcks)) if self.pcks else None,
                "crop_count": self.targets,
            }
        }


register(
    Metric(
        name="crop_detection",
        make=CropDetection,
        source="pixels",
        columns=(
            Column("Crop det. % ↑", ("hands", "crop_detected_share"), True, "pct"),
            Column("Crop PCK@0.2 ↑", ("hands", "crop_pck_0.2"), True, "pct"),
        ),
        null={"hands": {"crop_detected_share": None, "crop_pck_0.2": None, "crop_count": 0}},
        legend="Crop det.: target hands found by the detector in their own crop box, upscaled as prep's wrist "
        "pass upscales (no body needed); Crop PCK@0.2 on those hands.",
        order=15,
    )
)
