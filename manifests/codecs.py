"""Encode and decode the binary columns of the manifest (images, masks, heatmaps).

All arrays are numpy:
- images: (H, W, 3) uint8 RGB;
- masks: (H, W) bool or uint8 (any non-zero is hand), stored as PNG mode L with values 0/255;
- heatmaps: (K, H, W) float, stored as raw C-order bytes plus shape and dtype columns.

Neither torch nor OpenCV is imported here at module level: reading, validating and summarising a
manifest must not pay their import (torch alone costs over a second and about 1 GB). OpenCV is
imported by `encode_mask` when a mask is written, and torch's faster float16 conversion is used
only in processes that have already loaded torch (training, generation).
"""

from __future__ import annotations

import io
import sys

import numpy as np
from PIL import Image


class DecodeError(ValueError):
    """An encoded column value could not be decoded."""


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


# Pixels a value whose row states no shape may decode to (the rows of a manifest always state one).
MAX_UNSTATED_PIXELS = 40_000_000


def _open_checked(data: bytes, shape, what: str) -> Image.Image:
    """Open encoded bytes and check the header's size before anything is decoded: against the row's
    stated (height, width), or against `MAX_UNSTATED_PIXELS` when the row states none. A few KB of PNG
    can hold gigapixels of zeros."""
    im = Image.open(io.BytesIO(data))
    w, h = im.size
    if shape is not None and (h, w) != tuple(shape):
        im.close()
        raise DecodeError(
            f"{what} header is {h}x{w} (height x width), row states {tuple(shape)}; not decoded"
        )
    if shape is None and w * h > MAX_UNSTATED_PIXELS:
        im.close()
        raise DecodeError(f"{what} header is {h}x{w}, over {MAX_UNSTATED_PIXELS} pixels; not decoded")
    return im


def decode_image(data: bytes, shape=None) -> np.ndarray:
    """Bytes of a JPEG/PNG -> (H, W, 3) uint8 RGB; `shape` (H, W) is checked from the header first."""
    try:
        im = _open_checked(data, shape, "image")
    except DecodeError:
        raise
    except Exception as exc:  # PIL raises many types for bad bytes
        raise DecodeError(f"cannot decode image bytes ({len(data)} bytes): {exc}") from exc
    try:
        with im:
            return np.asarray(im.convert("RGB"))
    except Exception as exc:
        raise DecodeError(f"cannot decode image bytes ({len(data)} bytes): {exc}") from exc


def encode_mask(mask: np.ndarray) -> bytes:
    if mask.ndim != 2:
        raise ValueError(f"expected a (H, W) mask, got shape {mask.shape}")
    # OpenCV's PNG writer is about 4x faster than PIL's for the same 8-bit greyscale file.
    import cv2

    ok, buf = cv2.imencode(".png", np.where(mask > 0, 255, 0).astype(np.uint8))
    if not ok:
        raise ValueError(f"cannot PNG-encode a mask of shape {mask.shape}")
    return buf.tobytes()


def decode_mask(data: bytes, shape=None) -> np.ndarray:
    """PNG bytes -> (H, W) bool; `shape` (H, W) is checked from the header first."""
    try:
        im = _open_checked(data, shape, "mask")
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"cannot decode mask bytes ({len(data)} bytes): {exc}") from exc
    try:
        with im:
            return np.asarray(im.convert("L")) > 127
    except Exception as exc:
        raise DecodeError(f"cannot decode mask bytes ({len(data)} bytes): {exc}") from exc


def encode_heatmap(heatmap: np.ndarray, dtype: str = "float16") -> tuple[bytes, list[int], str]:
    """(K, H, W) float -> (bytes, shape, dtype) for the heatmap, heatmap_shape, heatmap_dtype columns."""
    if heatmap.ndim != 3:
        raise ValueError(f"expected a (K, H, W) heatmap, got shape {heatmap.shape}")
    arr = _convert(np.asarray(heatmap), np.dtype(dtype).newbyteorder("<"))
    return arr.tobytes(), [int(s) for s in arr.shape], np.dtype(dtype).name


def decode_heatmap(data: bytes, shape, dtype: str) -> np.ndarray:
    """Bytes plus shape and dtype -> (K, H, W) float32."""
    try:
        dt = np.dtype(dtype).newbyteorder("<")
        shape = tuple(int(s) for s in shape)
        expected = int(np.prod(shape)) * dt.itemsize
        if len(data) != expected:
            raise ValueError(f"{len(data)} bytes for shape {shape} {dtype} (expected {expected})")
        return _convert(np.frombuffer(data, dtype=dt).reshape(shape), np.dtype(np.float32))
    except Exception as exc:
        raise DecodeError(f"cannot decode heatmap: {exc}") from exc


def _convert(arr: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """C-contiguous copy of `arr` as `dtype`. numpy converts float16 in software, about 12x slower than
    torch's vectorised path, and heatmaps are converted once per hand on write and per sample on read;
    so torch does it where it is loaded already, and numpy (same rounding, same bytes) elsewhere."""
    torch = sys.modules.get("torch")
    if (
        torch is not None
        and {arr.dtype.name, dtype.name} == {"float16", "float32"}
        and dtype.isnative
        and arr.dtype.isnative
    ):
        src = np.array(arr, order="C", copy=not arr.flags.writeable or not arr.flags.c_contiguous)
        return torch.from_numpy(src).to(getattr(torch, dtype.name)).numpy()
    return np.ascontiguousarray(arr, dtype=dtype)
