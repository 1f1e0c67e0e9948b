"""``hands.fidelity`` (two-stage outputs only): how much of the stage-1 hands survived in the final image.

The PSNR, in dB, between the final image and the stage-1 hands (``<id>_stage1/canvas.png``) over the
hand mask (``canvas_mask.png``), each pixel weighted by the last step's keep weight K
(``keep.png``, the share of the stage-1 latents the blend kept there):

    fidelity = 10 log10(1 / mse),  mse = sum(w * (final - stage1)^2) / (3 * sum(w)),  pixels in [0, 1],
    w = K * hand mask

(an exact copy scores `MAX_PSNR`). Images without these files (not a two-stage output, or made with
blending ``none``, which keeps nothing) are not scored and counted in ``fidelity_unscored``; the report
gives the mean over the scored images and their count. Higher is better.
"""

from __future__ import annotations

import os

import numpy as np

from ..registry import Column, Metric, MetricUnavailable, PixelSample, register
from .seam import resized_mask

MAX_PSNR = 100.0
FILES = ("canvas.png", "canvas_mask.png", "keep.png")


def weighted_psnr(image: np.ndarray, reference: np.ndarray, weight: np.ndarray) -> float | None:
    """PSNR of (H, W, 3) uint8 `image` against `reference` with (H, W) weights in [0, 1]; None without weight."""
    w = np.asarray(weight, np.float64)
    total = w.sum()
    if total <= 0:
        return None
    diff = (np.asarray(image, np.float64) - np.asarray(reference, np.float64)) / 255.0
    mse = float((w[..., None] * diff**2).sum() / (3.0 * total))
    return MAX_PSNR if mse <= 10 ** (-MAX_PSNR / 10) else float(10.0 * np.log10(1.0 / mse))


def stage1_files(folder: str, image_id: str) -> dict | None:
    """{"canvas", "mask", "keep"} arrays generate saved for `image_id`, or None when one is missing."""
    from PIL import Image

    from manifests.names import path_in

    paths = [path_in(folder, image_id, f"_stage1/{name}", "image_id") for name in FILES]
    if not all(os.path.isfile(p) for p in paths):
        return None
    arrays = []
    for p in paths:
        with Image.open(p) as im:
            arrays.append(np.asarray(im.convert("RGB" if p.endswith("canvas.png") else "L")))
    canvas, mask, keep = arrays
    return {"canvas": canvas, "mask": mask > 127, "keep": keep.astype(np.float64) / 255.0}


def fidelity(image: np.ndarray, files: dict) -> float | None:
    """`weighted_psnr` of the final image against the stage-1 hands, resized to the image if needed."""
    import cv2

    h, w = image.shape[:2]
    canvas, mask, keep = files["canvas"], files["mask"], files["keep"]
    if canvas.shape[:2] != (h, w):
        canvas = cv2.resize(canvas, (w, h), interpolation=cv2.INTER_AREA)
        keep = cv2.resize(keep, (w, h), interpolation=cv2.INTER_NEAREST)
    return weighted_psnr(image, canvas, keep * resized_mask(mask, image.shape))


class Fidelity:
    def __init__(self, ctx):
        self.generated = ctx.generated
        self.scores: list[float] = []
        self.unscored = 0

    def update(self, sample: PixelSample) -> dict:
        files = None if sample.same else stage1_files(self.generated, sample.image_id)
        score = None if files is None else fidelity(sample.generated, files)
        if score is None:
            self.unscored += 1
        else:
            self.scores.append(score)
        return {"fidelity": score}

    def result(self) -> dict:
        if not self.scores:
            raise MetricUnavailable(
                "no two-stage output with a kept region (needs <id>_stage1/canvas.png, canvas_mask.png and "
                "keep.png; blending none keeps nothing)",
                {"hands": {"fidelity_unscored": self.unscored}},
            )
        return {
            "hands": {
                "fidelity": float(np.mean(self.scores)),
                "fidelity_count": len(self.scores),
                "fidelity_unscored": self.unscored,
            }
        }


register(
    Metric(
        name="fidelity",
        make=Fidelity,
        source="pixels",
        columns=(Column("Fidelity dB ↑", ("hands", "fidelity"), True, "f1"),),
        null={"hands": {"fidelity": None, "fidelity_count": 0, "fidelity_unscored": 0}},
        legend="Fidelity: PSNR (dB) of the final image against the stage-1 hands over the hand mask, weighted "
        "by the last step's keep weight (two-stage outputs only).",
        order=76,
    )
)
