"""Where a (W, H) frame lies in an image: ``image = frame * scale + offset``, per axis.

`generate --from-manifest` draws a row's frame whole or only the body trainer's square around its hands
(`generate.requests.frame_window`), and records the map in each image's sidecar (``source.window``);
evaluation reads it back (`evaluate.framing.frame_map`) to map the frame's targets into the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FrameMap:
    """(W, H) frame pixels -> pixels of an image of `size` (w, h): the image `generate` draws from a
    manifest row's frame, and the one `evaluate` scores against that frame's targets."""

    scale: tuple[float, float]
    offset: tuple[float, float]
    size: tuple[int, int]
    windowed: bool = False  # True: from a sidecar's window, the image may show only part of the frame

    @classmethod
    def whole(cls, frame: tuple[int, int], size: tuple[int, int]) -> FrameMap:
        """The image shows the whole (W, H) `frame`, rescaled per axis."""
        return cls((size[0] / frame[0], size[1] / frame[1]), (0.0, 0.0), tuple(size))

    @property
    def record(self) -> dict:
        """The map as a generated image's sidecar records it (``source.window``)."""
        return {"scale": list(self.scale), "offset": list(self.offset)}

    @classmethod
    def from_record(cls, record, size: tuple[int, int]) -> FrameMap:
        """The windowed map of an image of (w, h) `size` from its sidecar's `record`; ValueError unless
        it holds two finite scales > 0 and two finite offsets."""
        scale = tuple(float(v) for v in record["scale"])
        offset = tuple(float(v) for v in record["offset"])
        if len(scale) != 2 or len(offset) != 2 or not all(np.isfinite([*scale, *offset])) or min(scale) <= 0:
            raise ValueError(f"scale {record['scale']} and offset {record['offset']}")
        return cls(scale, offset, tuple(size), windowed=True)

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
