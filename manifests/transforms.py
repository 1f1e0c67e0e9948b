"""The one geometric transform of the body dataset: aspect-preserving resize plus crop or pad.

A `FitTransform` is the map ``x' = scale * x + tx``, ``y' = scale * y + ty`` from a *frame* (the
original image's pixels, where the manifest's keypoints live) to the output canvas. Coordinates are
continuous: pixel ``i`` covers ``[i, i + 1)``, the convention of `manifests.geometry` and of PIL's
affine resampling, so images, masks and keypoints stay aligned to sub-pixel precision.

Images given at another resolution than the frame (the manifest stores a downsized copy) are mapped
through the frame: an array of width ``w`` for a frame of width ``W`` has pixel ``x_arr = x * w / W``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

FIT_MODES = ("cover", "contain")


@dataclass(frozen=True)
class FitTransform:
    """Scale then translate from a (frame_w, frame_h) frame to an (out_w, out_h) canvas."""

    scale: float
    tx: float
    ty: float
    frame_w: int
    frame_h: int
    out_w: int
    out_h: int

    @classmethod
    def fit(
        cls,
        frame_w: int,
        frame_h: int,
        out_w: int,
        out_h: int,
        mode: str = "cover",
        focus: tuple[float, float] | None = None,
    ) -> FitTransform:
        """Resize keeping the aspect ratio, then centre (or centre on `focus`) and crop or pad.

        - ``cover``: the image covers the whole canvas; the overflow is cropped. With `focus` (frame
          pixels, e.g. the centre of the hands) the crop window is centred there, clamped to the image.
        - ``contain``: the whole image fits inside the canvas; the rest is padded (zeros). Centred.
        """
        if mode not in FIT_MODES:
            raise ValueError(f"unknown fit mode {mode!r}; expected one of {FIT_MODES}")
        if min(frame_w, frame_h, out_w, out_h) <= 0:
            raise ValueError(f"sizes must be positive: frame {frame_w}x{frame_h}, output {out_w}x{out_h}")
        pick = max if mode == "cover" else min
        s = pick(out_w / frame_w, out_h / frame_h)
        tx = (out_w - s * frame_w) / 2.0
        ty = (out_h - s * frame_h) / 2.0
        if mode == "cover" and focus is not None:
            # Centre the window on the focus point, then keep it inside the scaled image.
            tx = min(0.0, max(out_w - s * frame_w, out_w / 2.0 - s * float(focus[0])))
            ty = min(0.0, max(out_h - s * frame_h, out_h / 2.0 - s * float(focus[1])))
        return cls(float(s), float(tx), float(ty), int(frame_w), int(frame_h), int(out_w), int(out_h))

    @property
    def window(self) -> dict:
        """The map as a JSON object (``output = frame * scale + offset``, per axis), the form a generated
        image's sidecar records it in (``source.window``)."""
        return {"scale": [self.scale, self.scale], "offset": [self.tx, self.ty]}

    @property
    def params(self) -> np.ndarray:
        """[scale, tx, ty] as float32, the form the datasets yield."""
        return np.array([self.scale, self.tx, self.ty], dtype=np.float32)

    def points(self, points: np.ndarray) -> np.ndarray:
        """(N, >=2) frame pixels -> (N, >=2) canvas pixels; extra columns (scores) are kept unchanged."""
        out = np.array(points, dtype=np.float32, copy=True)
        out[:, 0] = out[:, 0] * self.scale + self.tx
        out[:, 1] = out[:, 1] * self.scale + self.ty
        return out

    def warp(self, array: np.ndarray, resample=Image.BICUBIC, fill=0) -> np.ndarray:
        """Map an (h, w[, C]) uint8 array showing the whole frame onto the (out_h, out_w[, C]) canvas.

        Strong reductions are first box-averaged by an integer factor (exact in the continuous
        convention), so downscaling does not alias; the remaining map is one affine resample.
        """
        im = Image.fromarray(np.ascontiguousarray(array))
        kx, ky = im.width / self.frame_w, im.height / self.frame_h  # array pixels per frame pixel
        factor = int(min(kx / self.scale, ky / self.scale))  # >= 2 means the array is >= 2x too big
        if factor >= 2:
            # reduce() maps x -> x / factor exactly only when the size divides; crop the remainder.
            w2, h2 = (im.width // factor) * factor, (im.height // factor) * factor
            im = im.crop((0, 0, w2, h2)).reduce(factor)
            kx, ky = kx / factor, ky / factor
        # Output pixel (u, v) -> frame ((u - tx) / s, (v - ty) / s) -> array (k * frame).
        data = (
            kx / self.scale,
            0.0,
            -kx * self.tx / self.scale,
            0.0,
            ky / self.scale,
            -ky * self.ty / self.scale,
        )
        out = im.transform(
            (self.out_w, self.out_h), Image.AFFINE, data=data, resample=resample, fillcolor=fill
        )
        return np.asarray(out)

    def warp_mask(self, mask: np.ndarray) -> np.ndarray:
        """(h, w) bool/uint8 mask of the frame -> (out_h, out_w) bool, resampled like the image."""
        m = np.where(np.asarray(mask) > 0, 255, 0).astype(np.uint8)
        return self.warp(m, resample=Image.BILINEAR) > 127

    def __call__(
        self,
        image: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        points: dict[str, np.ndarray] | None = None,
    ) -> dict:
        """Apply this one transform to any of an image, a mask and named keypoint arrays."""
        out = {}
        if image is not None:
            out["image"] = self.warp(image)
        if mask is not None:
            out["mask"] = self.warp_mask(mask)
        for name, pts in (points or {}).items():
            out[name] = None if pts is None else self.points(pts)
        return out


# ---------------------------------------------------------------------------------------------------
# Framing: how large stage 2 sees a frame, in training and in generation


def hands_focus(points: np.ndarray | None) -> tuple[float, float] | None:
    """The centre of the (N, >=2) hand keypoints' box, frame pixels, where `train-body --crop hands`
    centres its square (None without points)."""
    if points is None or not len(points):
        return None
    pts = np.asarray(points, dtype=np.float64)[:, :2]
    return tuple(float(v) for v in (pts.min(axis=0) + pts.max(axis=0)) / 2.0)


def training_scale(frame_w: int, frame_h: int, side: int, fit: str = "cover") -> float:
    """Canvas pixels per frame pixel when `train-body` fits a (frame_w, frame_h) image to its
    side x side training square with `fit`: ``side / min(w, h)`` for cover, ``side / max(w, h)``
    for contain. This is the one rule of the scale at which stage 2 sees people and hands."""
    return FitTransform.fit(frame_w, frame_h, side, side, fit).scale


def frame_at_training_scale(frame_w: int, frame_h: int, side: int, fit: str = "cover") -> tuple[int, int]:
    """(w, h) of the whole frame drawn at `training_scale`: what ``generate --from-manifest`` draws, so
    a hand there has the size in pixels it has in the trainer's crops.

    With cover the training crop keeps the frame's shorter side whole, so the drawn frame's shorter
    side is `side` and its longer side extends past the square by the aspect ratio (the part of the
    frame a cover crop would cut off); with contain it is the frame at longer side `side`."""
    s = training_scale(frame_w, frame_h, side, fit)
    return max(8, int(round(frame_w * s))), max(8, int(round(frame_h * s)))
