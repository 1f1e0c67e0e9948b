"""Decode one manifest row's encoded columns into numpy, checking the shapes the row states.

Rows are plain dicts as given by ``pyarrow.Table.to_pylist()`` (only the columns a helper needs
must be present). Every error is a `RowDecodeError` that names the row's id, so a caller that
knows the shard can add it.
"""

from __future__ import annotations

import numpy as np

from . import codecs
from .errors import RowDecodeError
from .schema import NO_MASK, NUM_BODY_KEYPOINTS, NUM_HAND_KEYPOINTS


def _rid(row: dict) -> str:
    return str(row.get("hand_id") or row.get("image_id") or "<row>")


def keypoints_array(value, num: int | None = None, what: str = "keypoints") -> np.ndarray:
    """A list of [x, y, score] rows -> (N, 3) float32; `num` checks N. None -> None."""
    if value is None:
        return None
    try:
        arr = np.asarray(value, dtype=np.float32)
    except ValueError as exc:  # ragged lists
        raise RowDecodeError(f"{what}: ragged keypoint list: {exc}") from exc
    if arr.ndim != 2 or arr.shape[1] != 3 or (num is not None and arr.shape[0] != num):
        want = f"({num}, 3)" if num is not None else "(N, 3)"
        raise RowDecodeError(f"{what}: shape {arr.shape}, expected {want}")
    return arr


def _shape(shape) -> tuple[int, int] | None:
    """A stated (height, width) as ints, or None when the row states none usable."""
    try:
        h, w = (int(v) for v in shape)
    except (TypeError, ValueError):
        return None
    return (h, w) if h > 0 and w > 0 else None


def _image(data, shape, what: str) -> np.ndarray:
    if data is None:
        raise RowDecodeError(f"{what}: value is null")
    try:
        arr = codecs.decode_image(data, _shape(shape))
    except codecs.DecodeError as exc:
        raise RowDecodeError(f"{what}: {exc}") from exc
    if shape is not None and arr.shape[:2] != tuple(shape):
        raise RowDecodeError(f"{what}: decoded to {arr.shape[:2]}, row states {tuple(shape)}")
    return arr


def _mask(data, shape, what: str, method: str | None = None) -> np.ndarray:
    if data is None and method == NO_MASK:
        raise RowDecodeError(
            f"{what}: none stored (mask_method {NO_MASK!r}); rerun prep with a mask method for uses that need masks"
        )
    if data is None:
        raise RowDecodeError(f"{what}: value is null")
    try:
        arr = codecs.decode_mask(data, _shape(shape))
    except codecs.DecodeError as exc:
        raise RowDecodeError(f"{what}: {exc}") from exc
    if shape is not None and arr.shape != tuple(shape):
        raise RowDecodeError(f"{what}: decoded to {arr.shape}, row states {tuple(shape)}")
    return arr


def crop_array(row: dict) -> np.ndarray:
    """hands row -> crop (crop_size, crop_size, 3) uint8 RGB."""
    s = row.get("crop_size")
    return _image(row["crop"], (s, s) if s else None, f"hand {_rid(row)} crop")


def mask_array(row: dict) -> np.ndarray:
    """hands row -> hand mask (crop_size, crop_size) bool, in crop coordinates."""
    s = row.get("crop_size")
    return _mask(row["mask"], (s, s) if s else None, f"hand {_rid(row)} mask", row.get("mask_method"))


def heatmap_array(row: dict) -> np.ndarray:
    """hands row -> heatmap (21, H, W) float32 in [0, 1], H, W from `heatmap_shape`."""
    what = f"hand {_rid(row)} heatmap"
    shape, dtype = row.get("heatmap_shape"), row.get("heatmap_dtype")
    if row.get("heatmap") is None or shape is None or dtype is None:
        raise RowDecodeError(f"{what}: heatmap, heatmap_shape or heatmap_dtype is null")
    if len(shape) != 3 or shape[0] != NUM_HAND_KEYPOINTS or min(shape[1:]) <= 0:
        raise RowDecodeError(f"{what}: heatmap_shape {list(shape)}, expected [{NUM_HAND_KEYPOINTS}, H, W]")
    try:
        return codecs.decode_heatmap(row["heatmap"], shape, dtype)
    except codecs.DecodeError as exc:
        raise RowDecodeError(f"{what}: {exc}") from exc


def _finite(arr: np.ndarray | None, what: str, finite: bool) -> np.ndarray | None:
    if finite and arr is not None and not np.isfinite(arr).all():
        bad = np.flatnonzero(~np.isfinite(arr).all(axis=1)).tolist()
        raise RowDecodeError(f"{what}: NaN or infinite values at points {bad}; the row is refused")
    return arr


def hand_keypoints(row: dict, finite: bool = False) -> np.ndarray:
    """hands row -> (21, 3) float32 [x, y, score] in original image pixels (`finite`: refuse NaN/inf)."""
    what = f"hand {_rid(row)} keypoints"
    return _finite(keypoints_array(row["keypoints"], NUM_HAND_KEYPOINTS, what), what, finite)


def crop_keypoints(row: dict, finite: bool = False) -> np.ndarray:
    """hands row -> (21, 3) float32 [x, y, score] in crop pixels (`finite`: refuse NaN/inf)."""
    what = f"hand {_rid(row)} crop_keypoints"
    return _finite(keypoints_array(row["crop_keypoints"], NUM_HAND_KEYPOINTS, what), what, finite)


def body_keypoints(row: dict, finite: bool = False) -> np.ndarray | None:
    """images row -> (33, 3) float32 [x, y, visibility] in original pixels, or None if no body
    (`finite`: refuse NaN/inf)."""
    what = f"image {_rid(row)} body_keypoints"
    return _finite(keypoints_array(row.get("body_keypoints"), NUM_BODY_KEYPOINTS, what), what, finite)


def image_size(row: dict) -> tuple[int, int]:
    """images row -> (width, height) of the original image, both whole and positive."""
    w, h = row.get("width"), row.get("height")
    ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in (w, h))
    if not ok:
        raise RowDecodeError(f"image {_rid(row)}: width x height {w!r} x {h!r} is not a positive size")
    return int(w), int(h)


def image_array(row: dict) -> np.ndarray:
    """images row -> stored image (image_height, image_width, 3) uint8 RGB."""
    h, w = row.get("image_height"), row.get("image_width")
    return _image(row["image"], (h, w) if h and w else None, f"image {_rid(row)} image")


def hands_mask_array(row: dict) -> np.ndarray:
    """images row -> mask of all hands (image_height, image_width) bool."""
    h, w = row.get("image_height"), row.get("image_width")
    return _mask(row["hands_mask"], (h, w) if h and w else None, f"image {_rid(row)} hands_mask")


def decode_hand(row: dict) -> dict:
    """Every array of a hands row: crop, mask, heatmap, keypoints, crop_keypoints (see the helpers)."""
    return {
        "crop": crop_array(row),
        "mask": mask_array(row),
        "heatmap": heatmap_array(row),
        "keypoints": hand_keypoints(row),
        "crop_keypoints": crop_keypoints(row),
    }


def decode_image_row(row: dict) -> dict:
    """Every array of an images row: image, hands_mask (None if null), body_keypoints (None if no body)."""
    return {
        "image": image_array(row),
        "hands_mask": hands_mask_array(row) if row.get("hands_mask") is not None else None,
        "body_keypoints": body_keypoints(row),
    }
