"""Crop geometry and keypoint heatmaps, shared by prep (making crops) and generation (placing hands).

A crop is a square box ``[x0, y0, x1, y1]`` in image pixels resampled to ``size x size``. The map
from image to crop pixels is ``u = (x - x0) * size / (x1 - x0)``, exactly invertible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .pose import HAND_EDGES

# Gaussian sigma of the keypoint heatmaps, in heatmap pixels: prep's default and the fallback of every
# reader of a manifest that does not record its own.
DEFAULT_SIGMA = 1.5


@dataclass(frozen=True)
class CropBox:
    x0: float
    y0: float
    side: float
    size: int

    @property
    def box(self) -> list[float]:
        return [self.x0, self.y0, self.x0 + self.side, self.y0 + self.side]

    @property
    def scale(self) -> float:
        """Crop pixels per image pixel."""
        return self.size / self.side

    @classmethod
    def from_box(cls, box, size: int) -> CropBox:
        x0, y0, x1, y1 = (float(v) for v in box)
        return cls(x0, y0, x1 - x0, int(size))

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        """(N, >=2) image pixels -> crop pixels; extra columns (scores) are kept."""
        out = np.array(points, dtype=np.float64, copy=True)
        out[:, 0] = (out[:, 0] - self.x0) * self.scale
        out[:, 1] = (out[:, 1] - self.y0) * self.scale
        return out

    def to_image(self, points: np.ndarray) -> np.ndarray:
        """(N, >=2) crop pixels -> image pixels; the exact inverse of `to_crop`."""
        out = np.array(points, dtype=np.float64, copy=True)
        out[:, 0] = out[:, 0] / self.scale + self.x0
        out[:, 1] = out[:, 1] / self.scale + self.y0
        return out


def keypoint_bbox(points: np.ndarray) -> np.ndarray:
    """Tight [x0, y0, x1, y1] of (N, >=2) points."""
    xy = np.asarray(points, dtype=np.float64)[:, :2]
    return np.concatenate([xy.min(axis=0), xy.max(axis=0)])


def visible_bbox(keypoints: np.ndarray) -> np.ndarray:
    """Tight [x0, y0, x1, y1] of the keypoints with score > 0: a point marked invisible (COCO's
    ``0, 0, 0``) shapes no box, size or crop. All points count when none is visible or there is no
    score column."""
    pts = np.asarray(keypoints, dtype=np.float64)
    visible = _visible_points(pts)
    return keypoint_bbox(visible if len(visible) else pts)


def square_crop_box(
    points: np.ndarray, size: int = 512, margin: float = 0.25, min_side: float = 8.0
) -> CropBox:
    """Square box centred on the keypoints' bbox, each side grown by `margin` x the longer bbox side.

    The box may extend past the image; `crop_image` pads that area.
    """
    x0, y0, x1, y1 = keypoint_bbox(points)
    side = max(x1 - x0, y1 - y0, min_side) * (1.0 + 2.0 * margin)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    return CropBox(cx - side / 2.0, cy - side / 2.0, side, int(size))


def crop_image(image: np.ndarray, crop: CropBox, resample=Image.BILINEAR, fill=0) -> np.ndarray:
    """Resample `crop` out of (H, W[, C]) `image` to (size, size[, C]); outside the image is `fill`."""
    pil = Image.fromarray(image)
    out = pil.transform(
        (crop.size, crop.size),
        Image.EXTENT,
        tuple(crop.box),
        resample=resample,
        fillcolor=fill,
    )
    return np.asarray(out)


def paste_crop(
    canvas: np.ndarray, patch: np.ndarray, crop: CropBox, resample=Image.BILINEAR
) -> tuple[np.ndarray, np.ndarray]:
    """Resize a (size, size[, C]) `patch` back to its image box and return (patch_on_canvas, coverage).

    Returns an array shaped like `canvas` with the patch placed (zeros elsewhere) and a bool (H, W)
    coverage mask of the pixels the box covers. Used to paste generated hands at their place.
    """
    h, w = canvas.shape[:2]
    x0, y0, x1, y1 = crop.box
    ix0, iy0 = int(np.floor(max(x0, 0))), int(np.floor(max(y0, 0)))
    ix1, iy1 = int(np.ceil(min(x1, w))), int(np.ceil(min(y1, h)))
    placed = np.zeros_like(canvas)
    coverage = np.zeros((h, w), dtype=bool)
    if ix1 <= ix0 or iy1 <= iy0:
        return placed, coverage
    # Map the integer target window back into patch pixels so sub-pixel boxes stay aligned.
    (u0, v0), (u1, v1) = crop.to_crop(np.array([[ix0, iy0], [ix1, iy1]], dtype=np.float64))
    region = Image.fromarray(patch).transform(
        (ix1 - ix0, iy1 - iy0), Image.EXTENT, (u0, v0, u1, v1), resample=resample
    )
    placed[iy0:iy1, ix0:ix1] = np.asarray(region)
    coverage[iy0:iy1, ix0:ix1] = True
    return placed, coverage


def render_heatmap(
    points: np.ndarray, crop_size: int, heatmap_size: int, sigma: float = DEFAULT_SIGMA
) -> np.ndarray:
    """Gaussian heatmaps for (K, >=2) crop-pixel keypoints -> (K, heatmap_size, heatmap_size) float32.

    Each channel peaks at 1.0 at the keypoint (pixel centres at integer + 0.5 in crop space are
    matched to heatmap pixel centres). `sigma` is in heatmap pixels. Keypoints with a score column
    equal to 0 give an empty channel.
    """
    pts = np.asarray(points, dtype=np.float64)
    scale = heatmap_size / float(crop_size)
    grid = np.arange(heatmap_size, dtype=np.float64) + 0.5
    hx = pts[:, 0] * scale
    hy = pts[:, 1] * scale
    gx = np.exp(-((grid[None, :] - hx[:, None]) ** 2) / (2 * sigma**2))
    gy = np.exp(-((grid[None, :] - hy[:, None]) ** 2) / (2 * sigma**2))
    hm = gy[:, :, None] * gx[:, None, :]
    if pts.shape[1] > 2:
        hm *= (pts[:, 2] > 0)[:, None, None]
    return hm.astype(np.float32)


def rescale_sigma(sigma: float, from_size: int, to_size: int) -> float:
    """A heatmap sigma in pixels of a `from_size` heatmap, expressed for a `to_size` heatmap of the same
    crop: the Gaussians keep their size relative to the hand. The one rule for heatmaps re-rendered at
    another resolution (the torch datasets, and the training task that records the sigma it trains on)."""
    return float(sigma) * float(to_size) / float(from_size)


def heatmap_peaks(heatmap: np.ndarray, crop_size: int) -> np.ndarray:
    """(K, H, W) heatmap -> (K, 2) crop-pixel coordinates of each channel's argmax (pixel centres)."""
    k, h, w = heatmap.shape
    flat = heatmap.reshape(k, -1).argmax(axis=1)
    ys, xs = np.divmod(flat, w)
    return np.stack([(xs + 0.5) * crop_size / w, (ys + 0.5) * crop_size / h], axis=1)


# The palm of a 21-keypoint hand: wrist, thumb base and the four finger bases, whose convex hull is
# inside the hand in any pose.
PALM = (0, 1, 5, 9, 13, 17)


def _visible_points(keypoints: np.ndarray) -> np.ndarray:
    """(N, 2) pixel points of the keypoints with score > 0 (all of them without a score column)."""
    pts = np.asarray(keypoints, dtype=np.float64)
    return pts[pts[:, 2] > 0, :2] if pts.shape[1] > 2 else pts[:, :2]


def keypoint_coverage(mask: np.ndarray, keypoints: np.ndarray, grow: int = 0, outside: str = "miss") -> float:
    """Share of the visible keypoints that fall on True pixels of the (H, W) `mask`.

    keypoints: (N, 2) or (N, 3) pixels of the mask's frame; with a score column only score > 0
    counts. `grow`: the mask is first dilated by a (2 * grow + 1)^2 square, for points that sit on
    its rim (fingertips). `outside`: a point off the frame is a miss ("miss"), or is looked up at the
    nearest border pixel ("clip"). No visible point: 0.0.
    """
    pts = _visible_points(keypoints)
    if len(pts) == 0:
        return 0.0
    m = np.asarray(mask) > 0
    if grow > 0:
        import cv2  # only here: reading a manifest must not import cv2

        m = cv2.dilate(m.astype(np.uint8), np.ones((2 * grow + 1, 2 * grow + 1), np.uint8)) > 0
    h, w = m.shape
    xi, yi = np.floor(pts[:, 0]).astype(int), np.floor(pts[:, 1]).astype(int)
    if outside == "clip":
        return float(m[np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)].mean())
    if outside != "miss":
        raise ValueError(f"outside must be 'miss' or 'clip', got {outside!r}")
    inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    hits = np.zeros(len(pts), dtype=bool)
    hits[inside] = m[yi[inside], xi[inside]]
    return float(hits.mean())


def hand_silhouette(keypoints: np.ndarray, shape: tuple[int, int], width: int) -> np.ndarray:
    """An (H, W) bool hand drawn from its 21 keypoints: every bone between two visible keypoints as a
    stroke `width` pixels thick, plus the convex hull of the visible `PALM` points (at least three).

    The one drawing of a hand from a skeleton: the synthetic manifest's hands, stage 2's fallback mask
    and the mask-agreement check's expected area all use it, each with its own stroke width.
    """
    import cv2  # only here: reading a manifest must not import cv2

    kps = np.asarray(keypoints, dtype=np.float64)
    valid = kps[:, 2] > 0 if kps.shape[1] > 2 else np.ones(len(kps), bool)
    pts = np.round(kps[:, :2]).astype(np.int32)
    canvas = np.zeros(tuple(shape), np.uint8)
    for a, b in HAND_EDGES:
        if valid[a] and valid[b]:
            cv2.line(
                canvas, (int(pts[a, 0]), int(pts[a, 1])), (int(pts[b, 0]), int(pts[b, 1])), 255, int(width)
            )
    palm = [i for i in PALM if valid[i]]
    if len(palm) >= 3:
        cv2.fillConvexPoly(canvas, cv2.convexHull(pts[palm]), 255)
    return canvas > 0
