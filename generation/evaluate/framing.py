"""Where the target frame lies in an evaluated image: ``image = frame * scale + offset``, per axis.

A generated image is taken to show the whole target frame (the manifest's original ``width`` x
``height``), rescaled per axis, unless its sidecar (``<image_id>.json``, written by ``handfirst-gen
generate``) records a window (``source.window``): ``generate --framing hands`` draws only the body
trainer's square around the hands. Targets are then mapped into that window, and the target points
that fall outside it are not scored: the image never showed them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from manifests.names import path_in


class WindowError(ValueError):
    """A sidecar's window is unreadable or malformed."""


@dataclass(frozen=True)
class FrameMap:
    """Target-frame pixels -> pixels of an evaluated image of `size` (w, h)."""

    scale: tuple[float, float]
    offset: tuple[float, float]
    size: tuple[int, int]
    windowed: bool = False  # True: from a sidecar's window, the image may show only part of the frame

    @classmethod
    def whole(cls, frame: tuple[int, int], size: tuple[int, int]) -> FrameMap:
        """The image shows the whole (W, H) `frame`, rescaled per axis."""
        return cls((size[0] / frame[0], size[1] / frame[1]), (0.0, 0.0), tuple(size))

    def to_image(self, points: np.ndarray) -> np.ndarray:
        """(N, >=2) frame pixels -> image pixels; extra columns are kept."""
        out = np.array(points, dtype=np.float64, copy=True)
        for axis in (0, 1):
            out[:, axis] = out[:, axis] * self.scale[axis] + self.offset[axis]
        return out

    def to_frame(self, points: np.ndarray) -> np.ndarray:
        """(N, >=2) image pixels -> frame pixels; extra columns are kept."""
        out = np.array(points, dtype=np.float64, copy=True)
        for axis in (0, 1):
            out[:, axis] = (out[:, axis] - self.offset[axis]) / self.scale[axis]
        return out

    def box_to_image(self, box) -> list[float]:
        """[x0, y0, x1, y1] in frame pixels -> image pixels."""
        (x0, y0), (x1, y1) = self.to_image(np.asarray(box, dtype=np.float64).reshape(2, 2))
        return [float(x0), float(y0), float(x1), float(y1)]

    def inside(self, points: np.ndarray) -> np.ndarray:
        """(N,) bool: which (N, >=2) frame points land on the image."""
        xy = self.to_image(np.asarray(points, dtype=np.float64)[:, :2])
        w, h = self.size
        return (xy[:, 0] >= 0) & (xy[:, 0] <= w) & (xy[:, 1] >= 0) & (xy[:, 1] <= h)

    def frame_image(self, image: np.ndarray, frame: tuple[int, int]) -> np.ndarray:
        """(h, w, 3) uint8 image -> the (H, W) frame it shows: resized for a whole frame, placed at
        its window (black around it) for a windowed one."""
        import cv2

        if not self.windowed:
            return np.ascontiguousarray(cv2.resize(image, tuple(frame), interpolation=cv2.INTER_AREA))
        (sx, sy), (tx, ty) = self.scale, self.offset
        to_frame = np.array([[1 / sx, 0, -tx / sx], [0, 1 / sy, -ty / sy]], dtype=np.float64)
        return cv2.warpAffine(np.ascontiguousarray(image), to_frame, tuple(frame), flags=cv2.INTER_LINEAR)

    def mask_to_image(self, mask: np.ndarray, frame: tuple[int, int]) -> np.ndarray:
        """(H', W') bool mask showing the whole (W, H) `frame` at any resolution -> (h, w) bool on the
        image (nearest, as for a whole frame)."""
        import cv2

        kx, ky = frame[0] / mask.shape[1], frame[1] / mask.shape[0]  # frame pixels per mask pixel
        (sx, sy), (tx, ty) = self.scale, self.offset
        to_image = np.array([[sx * kx, 0, tx], [0, sy * ky, ty]], dtype=np.float64)
        out = cv2.warpAffine(np.asarray(mask, np.uint8), to_image, tuple(self.size), flags=cv2.INTER_NEAREST)
        return out > 0


def frame_map(generated: str, image_id: str, frame: tuple[int, int], size: tuple[int, int]) -> FrameMap:
    """The `FrameMap` of the generated image `image_id` of (w, h) `size` for its (W, H) target `frame`:
    its sidecar's window if it records one, else the whole frame. Raises `WindowError` for a sidecar
    that is not JSON, or a window that is malformed (not two finite scales > 0 and two offsets)."""
    path = path_in(generated, image_id, ".json", "image_id")
    if not os.path.isfile(path):
        return FrameMap.whole(frame, size)
    try:
        with open(path, encoding="utf-8") as f:
            sidecar = json.load(f)
        window = (sidecar.get("source") or {}).get("window") if isinstance(sidecar, dict) else None
        if window is None:
            return FrameMap.whole(frame, size)
        scale = tuple(float(v) for v in window["scale"])
        offset = tuple(float(v) for v in window["offset"])
        if len(scale) != 2 or len(offset) != 2 or not all(np.isfinite([*scale, *offset])) or min(scale) <= 0:
            raise ValueError(f"scale {window['scale']} and offset {window['offset']}")
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise WindowError(f"{path}: unreadable source.window ({type(exc).__name__}: {exc})") from None
    return FrameMap(scale, offset, tuple(size), windowed=True)


def visible_targets(fmap: FrameMap, hands: list, boxes: list, body):
    """(hands, boxes, body) of one image as far as a windowed image shows them: each target hand's
    keypoints outside the window are not valid, a hand with none inside is dropped with its crop box
    (when there is one box per hand), and the body's keypoints outside get visibility 0. A whole-frame
    map returns them unchanged."""
    if not fmap.windowed:
        return hands, boxes, body
    from manifests.matching import Instance

    paired = len(boxes) == len(hands)
    kept_hands, kept_boxes = [], []
    for k, hand in enumerate(hands):
        valid = hand.valid & fmap.inside(hand.keypoints)
        if valid.any():
            kept_hands.append(Instance(hand.keypoints, hand.handedness, hand.score, valid))
            if paired:
                kept_boxes.append(boxes[k])
    if body is not None:
        body = np.array(body, dtype=np.float64, copy=True)
        body[~fmap.inside(body), 2] = 0.0
    return kept_hands, kept_boxes if paired else boxes, body
