"""``hands.seam``: how visible the border between the hands and their surroundings is.

For an image and its hand mask (the pasted hands that generate saved, ``<id>_stage1/canvas_mask.png``,
for a generated image; the manifest's hand mask for the real photos and for a folder without it):

    seam = mean |grad| on the contour band / (mean of mean |grad| on the band just inside and just outside + 1)

where |grad| is the Sobel gradient magnitude of the grey image (grey levels per pixel), the contour
band holds the pixels within ``w`` pixels of the mask's border on either side, and the inside and
outside bands the pixels ``w`` to ``3w`` pixels from it (Euclidean distances; ``w`` =
``max(1, round(min(H, W) / 256))``, so 1 px at 128 and 2 px at 512). The +1 keeps flat images finite.
A natural hand edge scores about 1-2; a hand pasted with a hard edge and a brightness step scores
higher. Lower is better. The report gives the mean over the images with a hand mask and the count.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from ..registry import Column, Metric, MetricUnavailable, PixelSample, register


def band_width(shape) -> int:
    return max(1, int(round(min(shape[:2]) / 256)))


def seam_score(image: np.ndarray, mask: np.ndarray, width: int | None = None) -> float | None:
    """The seam score of (H, W, 3) uint8 `image` along (H, W) bool `mask`, or None when a band is empty."""
    from scipy import ndimage

    mask = np.asarray(mask, bool)
    if not mask.any() or mask.all():
        return None
    w = width or band_width(mask.shape)
    grey = np.asarray(image, np.float32).mean(axis=2)
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    grad = np.hypot(gx, gy)
    d_in = ndimage.distance_transform_edt(mask)
    d_out = ndimage.distance_transform_edt(~mask)
    contour = (mask & (d_in <= w)) | (~mask & (d_out <= w))
    inner = mask & (d_in > w) & (d_in <= 3 * w)
    outer = ~mask & (d_out > w) & (d_out <= 3 * w)
    if not (contour.any() and inner.any() and outer.any()):
        return None
    around = 0.5 * (float(grad[inner].mean()) + float(grad[outer].mean()))
    return float(grad[contour].mean()) / (around + 1.0)


def resized_mask(mask: np.ndarray, shape) -> np.ndarray:
    """(h, w) bool mask -> `shape`[:2] (nearest)."""
    if mask.shape == tuple(shape[:2]):
        return mask
    return cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0


def pasted_mask(folder: str, image_id: str) -> np.ndarray | None:
    """The pasted hands' mask generate saved for `image_id` in `folder`, or None."""
    from PIL import Image

    from manifests.names import path_in

    path = path_in(folder, image_id, "_stage1/canvas_mask.png", "image_id")
    if not os.path.isfile(path):
        return None
    with Image.open(path) as im:
        return np.asarray(im.convert("L")) > 127


class Seam:
    def __init__(self, ctx):
        self.generated = ctx.generated
        self.scores: list[float] = []
        self.sources = {"pasted": 0, "manifest": 0}

    def update(self, sample: PixelSample) -> dict:
        mask, source = None, "manifest"
        if not sample.same:
            mask = pasted_mask(self.generated, sample.image_id)
            source = "pasted" if mask is not None else source
        if mask is None and sample.hands_mask is not None:
            fmap = sample.generated_map
            mask = (
                fmap.mask_to_image(sample.hands_mask, sample.frame)
                if fmap.windowed
                else resized_mask(sample.hands_mask, sample.generated.shape)
            )
        if mask is None:
            return {"seam": None}
        score = seam_score(sample.generated, resized_mask(mask, sample.generated.shape))
        if score is not None:
            self.scores.append(score)
            self.sources[source] += 1
        return {"seam": score}

    def result(self) -> dict:
        if not self.scores:
            raise MetricUnavailable("no image had a hand mask with a contour")
        return {
            "hands": {
                "seam": float(np.mean(self.scores)),
                "seam_count": len(self.scores),
                "seam_mask": {k: v for k, v in self.sources.items() if v},
            }
        }


register(
    Metric(
        name="seam",
        make=Seam,
        source="pixels",
        columns=(Column("Seam ↓", ("hands", "seam"), False, "f2"),),
        null={"hands": {"seam": None, "seam_count": 0, "seam_mask": {}}},
        legend="Seam: gradient on the hand mask's contour band over the gradient just inside and outside it "
        "(mask: the pasted hands for two-stage outputs, else the manifest's; 1-2 for natural edges).",
        order=75,
    )
)
