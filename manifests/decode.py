"""Decode one manifest row's encoded columns into numpy, checking the shapes the row states.

A row is any mapping of column name to value (only the columns a helper needs must be present), as
each library hands it out:

- pyarrow: ``table.to_pylist()[i]`` (lists, bytes, None);
- pandas: ``df.iloc[i]`` or ``df.iloc[i].to_dict()`` (numpy object arrays of arrays for the list
  columns, numpy scalars, NaN for a null number);
- Hugging Face ``datasets``: ``ds[i]`` (lists; an ``Image`` column as a PIL image, or as
  ``{"bytes": ..., "path": ...}`` with ``decode=False``);
- polars ``df.row(i, named=True)`` and numpy arrays in place of lists.

Every error is a `RowDecodeError` that names the row's id, so a caller that knows the shard can add it.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from . import codecs
from .errors import RowDecodeError
from .schema import NO_MASK, NUM_BODY_KEYPOINTS, NUM_HAND_KEYPOINTS


def _rid(row) -> str:
    return str(_get(row, "hand_id") or _get(row, "image_id") or "<row>")


def _get(row, key: str):
    """`row[key]` as a plain value: None for a missing key or a null (None, NaN, pandas NA)."""
    value = row.get(key) if hasattr(row, "get") else row[key]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, np.generic):  # numpy scalars from pandas rows
        value = value.item()
        return None if isinstance(value, float) and math.isnan(value) else value
    if type(value).__name__ in ("NAType", "NaTType"):  # pandas.NA / NaT without importing pandas
        return None
    return value


def _size(row, key: str, what: str) -> int | None:
    """The size `row` states in `key` (crop_size, image_width, ...) as an int; None when null."""
    value = _get(row, key)
    if value is None:
        return None
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer():
        return int(value)
    raise RowDecodeError(f"{what}: {key} is {value!r}, not a whole number of pixels")


def _nested(value):
    """Lists of lists (or numpy object arrays of arrays, as pandas gives them) -> nested lists."""
    if isinstance(value, np.ndarray):
        return [_nested(v) for v in value] if value.dtype == object else value.tolist()
    if isinstance(value, (list, tuple)):
        return [_nested(v) for v in value]
    return value


def _encoded(value):
    """An encoded image cell as bytes; a PIL image (an HF ``Image`` column) is returned as it is."""
    if isinstance(value, dict) and "bytes" in value:  # HF Image(decode=False): {"bytes", "path"}
        value = value["bytes"]
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 1:
        return value.tobytes()
    return value


def keypoints_array(value, num: int | None = None, what: str = "keypoints") -> np.ndarray:
    """[x, y, score] rows (lists, or numpy arrays of arrays) -> (N, 3) float32; `num` checks N. None -> None."""
    if value is None:
        return None
    try:
        try:
            arr = np.asarray(value, dtype=np.float32)
        except ValueError:  # a numpy object array of arrays (pandas), or ragged lists
            arr = np.asarray(_nested(value), dtype=np.float32)
    except (ValueError, TypeError) as exc:  # ragged lists, or values that are not numbers
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


def _pil(value, mode: str) -> np.ndarray | None:
    """A PIL image (an HF ``Image`` column) as an array in `mode`; None for any other value."""
    if type(value).__module__.startswith("PIL.") and hasattr(value, "convert"):
        return np.asarray(value.convert(mode))
    return None


def _image(data, shape, what: str) -> np.ndarray:
    data = _encoded(data)
    if data is None:
        raise RowDecodeError(f"{what}: value is null")
    arr = _pil(data, "RGB")
    try:
        arr = codecs.decode_image(data, _shape(shape)) if arr is None else arr
    except codecs.DecodeError as exc:
        raise RowDecodeError(f"{what}: {exc}") from exc
    if shape is not None and arr.shape[:2] != tuple(shape):
        raise RowDecodeError(f"{what}: decoded to {arr.shape[:2]}, row states {tuple(shape)}")
    return arr


def _mask(data, shape, what: str, method: str | None = None) -> np.ndarray:
    data = _encoded(data)
    if data is None and method == NO_MASK:
        raise RowDecodeError(
            f"{what}: none stored (mask_method {NO_MASK!r}); rerun prep with a mask method for uses that need masks"
        )
    if data is None:
        raise RowDecodeError(f"{what}: value is null")
    arr = _pil(data, "L")
    try:
        arr = codecs.decode_mask(data, _shape(shape)) if arr is None else arr > 127
    except codecs.DecodeError as exc:
        raise RowDecodeError(f"{what}: {exc}") from exc
    if shape is not None and arr.shape != tuple(shape):
        raise RowDecodeError(f"{what}: decoded to {arr.shape}, row states {tuple(shape)}")
    return arr


# Which caption a sample carries: prep's own (`caption`), the source's (`source_caption`, img2dataset's
# text), or both; a row without a source caption falls back to the generated one.
CAPTION_CHOICES = ("generated", "source", "both")


def choose_caption(generated: str | None, source: str | None, choice: str = "generated") -> str:
    """The caption of a sample under `choice` (see `CAPTION_CHOICES`); "" when there is none."""
    generated, source = generated or "", (source or "").strip()
    if choice == "generated" or not source:
        return generated
    if choice == "source":
        return source
    return f"{generated}, {source}" if generated else source


def check_caption_choice(choice: str) -> str:
    """`choice` if it is one of `CAPTION_CHOICES`; ValueError naming them otherwise."""
    if choice not in CAPTION_CHOICES:
        raise ValueError(f"caption must be one of {', '.join(CAPTION_CHOICES)}; got {choice!r}")
    return choice


def crop_array(row) -> np.ndarray:
    """hands row -> crop (crop_size, crop_size, 3) uint8 RGB."""
    what = f"hand {_rid(row)} crop"
    s = _size(row, "crop_size", what)
    return _image(_get(row, "crop"), (s, s) if s else None, what)


def mask_array(row) -> np.ndarray:
    """hands row -> hand mask (crop_size, crop_size) bool, in crop coordinates."""
    what = f"hand {_rid(row)} mask"
    s = _size(row, "crop_size", what)
    return _mask(_get(row, "mask"), (s, s) if s else None, what, _get(row, "mask_method"))


def heatmap_array(row) -> np.ndarray:
    """hands row -> heatmap (21, H, W) float32 in [0, 1], H, W from `heatmap_shape`."""
    what = f"hand {_rid(row)} heatmap"
    data, shape, dtype = (
        _encoded(_get(row, "heatmap")),
        _get(row, "heatmap_shape"),
        _get(row, "heatmap_dtype"),
    )
    if data is None or shape is None or dtype is None:
        raise RowDecodeError(f"{what}: heatmap, heatmap_shape or heatmap_dtype is null")
    shape = _nested(shape)
    if len(shape) != 3 or shape[0] != NUM_HAND_KEYPOINTS or min(shape[1:]) <= 0:
        raise RowDecodeError(f"{what}: heatmap_shape {list(shape)}, expected [{NUM_HAND_KEYPOINTS}, H, W]")
    try:
        return codecs.decode_heatmap(data, shape, dtype)
    except codecs.DecodeError as exc:
        raise RowDecodeError(f"{what}: {exc}") from exc


def _finite(arr: np.ndarray | None, what: str, finite: bool) -> np.ndarray | None:
    if finite and arr is not None and not np.isfinite(arr).all():
        bad = np.flatnonzero(~np.isfinite(arr).all(axis=1)).tolist()
        raise RowDecodeError(f"{what}: NaN or infinite values at points {bad}; the row is refused")
    return arr


def hand_keypoints(row, finite: bool = False) -> np.ndarray:
    """hands row -> (21, 3) float32 [x, y, score] in original image pixels (`finite`: refuse NaN/inf)."""
    what = f"hand {_rid(row)} keypoints"
    return _finite(keypoints_array(_get(row, "keypoints"), NUM_HAND_KEYPOINTS, what), what, finite)


def crop_keypoints(row, finite: bool = False) -> np.ndarray:
    """hands row -> (21, 3) float32 [x, y, score] in crop pixels (`finite`: refuse NaN/inf)."""
    what = f"hand {_rid(row)} crop_keypoints"
    return _finite(keypoints_array(_get(row, "crop_keypoints"), NUM_HAND_KEYPOINTS, what), what, finite)


def body_keypoints(row, finite: bool = False) -> np.ndarray | None:
    """images row -> (33, 3) float32 [x, y, visibility] in original pixels, or None if no body
    (`finite`: refuse NaN/inf)."""
    what = f"image {_rid(row)} body_keypoints"
    return _finite(keypoints_array(_get(row, "body_keypoints"), NUM_BODY_KEYPOINTS, what), what, finite)


def image_size(row) -> tuple[int, int]:
    """images row -> (width, height) of the original image, both whole and positive."""
    w, h = _get(row, "width"), _get(row, "height")
    ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in (w, h))
    if not ok:
        raise RowDecodeError(f"image {_rid(row)}: width x height {w!r} x {h!r} is not a positive size")
    return int(w), int(h)


def image_array(row) -> np.ndarray:
    """images row -> stored image (image_height, image_width, 3) uint8 RGB."""
    what = f"image {_rid(row)} image"
    h, w = _size(row, "image_height", what), _size(row, "image_width", what)
    return _image(_get(row, "image"), (h, w) if h and w else None, what)


def hands_mask_array(row) -> np.ndarray:
    """images row -> mask of all hands (image_height, image_width) bool."""
    what = f"image {_rid(row)} hands_mask"
    h, w = _size(row, "image_height", what), _size(row, "image_width", what)
    return _mask(_get(row, "hands_mask"), (h, w) if h and w else None, what)


def decode_hand(row) -> dict:
    """Every array of a hands row: crop, mask, heatmap, keypoints, crop_keypoints (see the helpers)."""
    return {
        "crop": crop_array(row),
        "mask": mask_array(row),
        "heatmap": heatmap_array(row),
        "keypoints": hand_keypoints(row),
        "crop_keypoints": crop_keypoints(row),
    }


def decode_image_row(row) -> dict:
    """Every array of an images row: image, hands_mask (None if null), body_keypoints (None if no body)."""
    return {
        "image": image_array(row),
        "hands_mask": hands_mask_array(row) if _get(row, "hands_mask") is not None else None,
        "body_keypoints": body_keypoints(row),
    }
