"""Square hand crops, crop keypoints, keypoint heatmaps and the stored full image, as manifest bytes.

Geometry comes from `manifests.geometry` (one implementation shared with generation): the crop box is
`square_crop_box(keypoints, crop_size, crop_margin)` and may extend past the image, where the crop is
zero padded; `CropBox.to_crop` / `to_image` map keypoints exactly both ways. Pixels are resampled by
`warp_crop`, OpenCV's equivalent of `crop_image` under the same pixel convention.

Boxes are in original pixels. When the image was decoded reduced (`prep.imageio.DecodedImage`), a crop
is cut from the reduced pixels if they cover the box with at least the crop's resolution, and from
the full-resolution image otherwise: only crops of small hands pay for the full decode.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from manifests.codecs import encode_heatmap, encode_jpeg
from manifests.geometry import CropBox, paste_crop, render_heatmap, square_crop_box

from .config import PrepConfig
from .imageio import DecodedImage


@dataclass
class HandCrop:
    box: CropBox
    pixels: np.ndarray  # (S, S, 3) uint8
    keypoints: np.ndarray  # (21, 3) [u, v, score] in crop pixels
    heatmap: np.ndarray  # (21, Hh, Wh) float32, peak 1


def hand_crop_box(keypoints: np.ndarray, config: PrepConfig) -> CropBox:
    valid = keypoints[:, 2] > 0 if keypoints.shape[1] > 2 else np.ones(len(keypoints), bool)
    return square_crop_box(
        keypoints[valid] if valid.any() else keypoints, size=config.crop_size, margin=config.crop_margin
    )


def warp_crop(
    image: np.ndarray, box: CropBox, interpolation: int = cv2.INTER_LINEAR, fill: float = 0
) -> np.ndarray:
    """`manifests.geometry.crop_image` done by OpenCV, about 10x faster than PIL's generic transform.

    Same convention: crop pixel i covers image x in [x0 + i / scale, x0 + (i + 1) / scale), so its
    centre samples image coordinate x0 + (i + 0.5) / scale, i.e. pixel index x0 + (i + 0.5) / scale - 0.5.
    Works for uint8 images (H, W[, C]) and float32 maps; outside the image is `fill`.
    """
    a = box.side / box.size
    m = np.array([[a, 0.0, box.x0 + 0.5 * a - 0.5], [0.0, a, box.y0 + 0.5 * a - 0.5]])
    return cv2.warpAffine(
        image,
        m,
        (box.size, box.size),
        flags=interpolation | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=fill,
    )


def scale_box(box: CropBox, scale: float) -> CropBox:
    """`box` in an image resized by `scale` (same crop size, so crop pixels stay where they were)."""
    return CropBox(box.x0 * scale, box.y0 * scale, box.side * scale, box.size)


def _filter_factor(box: CropBox) -> int:
    """The integer box-filter factor taken before sampling a box shrunk more than 2x (1: none)."""
    return int(np.floor(1.0 / box.scale)) if box.scale < 0.5 else 1


def _read_region(box: CropBox, factor: int, width: int, height: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the pixels of a `width` x `height` image that cropping `box` reads, on a grid of
    `factor`-pixel blocks aligned as if the whole image were filtered. Bilinear sampling reads one
    filtered pixel past the box, so a margin of two blocks keeps every pixel it reads a whole block."""
    x0 = min(max(0, int(np.floor(box.x0 / factor)) - 2), (width - 1) // factor) * factor
    y0 = min(max(0, int(np.floor(box.y0 / factor)) - 2), (height - 1) // factor) * factor
    x1 = min(width, max(x0 + factor, (int(np.ceil((box.x0 + box.side) / factor)) + 2) * factor))
    y1 = min(height, max(y0 + factor, (int(np.ceil((box.y0 + box.side) / factor)) + 2) * factor))
    return x0, y0, x1, y1


def _crop_region(region: np.ndarray, x0: int, y0: int, box: CropBox, factor: int) -> np.ndarray:
    """`box` (image pixels) cropped from `region`, the image's pixels from (x0, y0) on."""
    if factor > 1:
        region = np.asarray(Image.fromarray(np.ascontiguousarray(region)).reduce(factor))
    # reduce() averages factor x factor blocks, so image pixel x maps to (x - x0) / factor.
    local = CropBox((box.x0 - x0) / factor, (box.y0 - y0) / factor, box.side / factor, box.size)
    return warp_crop(region, local)


def box_to_reduced(decoded: DecodedImage, box: CropBox) -> CropBox:
    """`box` (original pixels) in `decoded.pixels` coordinates: its corner mapped per axis, exactly,
    and its side by the mean of the two scales, which differ only by the rounding of the reduced size
    (a fraction of a pixel across the whole image, so far less across a box)."""
    ((x0, y0),) = decoded.to_reduced(np.array([[box.x0, box.y0]]))
    return CropBox(x0, y0, box.side * sum(decoded.scale) / 2.0, box.size)


def box_to_full(decoded: DecodedImage, box: CropBox) -> CropBox:
    """The inverse of `box_to_reduced`: `box` in `decoded.pixels` coordinates -> original pixels."""
    ((x0, y0),) = decoded.to_full(np.array([[box.x0, box.y0]]))
    return CropBox(x0, y0, box.side * 2.0 / sum(decoded.scale), box.size)


def antialiased_crop(image: np.ndarray, box: CropBox) -> np.ndarray:
    """`warp_crop`, but a box shrunk more than 2x is first box-filtered by an integer factor, since
    bilinear sampling alone aliases (large hands in large photos).

    Only the box's neighbourhood is filtered, on blocks aligned as if the whole image were, so the
    result equals filtering the whole image at a fraction of the cost.
    """
    factor = _filter_factor(box)
    x0, y0, x1, y1 = _read_region(box, factor, image.shape[1], image.shape[0])
    return _crop_region(image[y0:y1, x0:x1], x0, y0, box, factor)


def full_resolution_crop(decoded: DecodedImage, box: CropBox) -> np.ndarray:
    """`antialiased_crop` of the full-resolution image (`box` in original pixels), which converts only
    the region the crop reads, not the whole photo."""
    factor = _filter_factor(box)
    x0, y0, x1, y1 = _read_region(box, factor, decoded.width, decoded.height)
    return _crop_region(decoded.full_region(x0, y0, x1, y1), x0, y0, box, factor)


def needs_full_resolution(decoded: DecodedImage, box: CropBox) -> bool:
    """Whether `box` (original pixels) is a small hand's: the reduced pixels would have to be
    enlarged to fill the crop, and the original has more of them."""
    return decoded.reduced and box.side * decoded.scale[0] < box.size


def crop_pixels(decoded: DecodedImage, box: CropBox) -> np.ndarray:
    """The (size, size, 3) crop of `box` (original pixels) from the reduced or the full image."""
    if needs_full_resolution(decoded, box):
        return full_resolution_crop(decoded, box)
    return antialiased_crop(decoded.pixels, box_to_reduced(decoded, box))


def make_crop(image: np.ndarray | DecodedImage, keypoints: np.ndarray, config: PrepConfig) -> HandCrop:
    """The crop of the hand with `keypoints` (original pixels) from `image`, a pixel array or a
    decoded image (reduced pixels where they suffice, see `crop_pixels`)."""
    box = hand_crop_box(keypoints, config)
    kps = box.to_crop(keypoints)
    heat = render_heatmap(kps, config.crop_size, config.resolved_heatmap_size(), config.sigma)
    pixels = crop_pixels(image, box) if isinstance(image, DecodedImage) else antialiased_crop(image, box)
    return HandCrop(box, pixels, kps, heat)


def encode_crop(crop: HandCrop, config: PrepConfig) -> dict:
    """The hands-table columns of one crop (without the mask ones)."""
    heat, shape, dtype = encode_heatmap(crop.heatmap)
    return {
        "crop_box": [float(v) for v in crop.box.box],
        "crop_size": int(config.crop_size),
        "crop": encode_jpeg(crop.pixels, quality=config.jpeg_quality),
        "crop_keypoints": crop.keypoints.astype(np.float32).tolist(),
        "heatmap": heat,
        "heatmap_shape": shape,
        "heatmap_dtype": dtype,
        "heatmap_sigma": float(config.sigma),
    }


def union_mask(
    masks: list[tuple[np.ndarray, CropBox]], width: int, height: int, size: tuple[int, int]
) -> np.ndarray:
    """(h, w) bool union of crop-space masks pasted back at the stored image size `size` = (w, h)."""
    sw, sh = size
    canvas = np.zeros((sh, sw), np.uint8)
    scale = sw / float(width)  # the stored image keeps the aspect ratio, so one scale serves both axes
    for mask, box in masks:
        placed, _ = paste_crop(canvas, np.where(mask, 255, 0).astype(np.uint8), scale_box(box, scale))
        canvas = np.maximum(canvas, np.where(placed > 127, 255, 0).astype(np.uint8))
    return canvas > 0
