"""Read one image through fsspec and decode it robustly to (H, W, 3) uint8 RGB.

- EXIF orientation is applied, so pixel coordinates everywhere downstream (keypoints, boxes, masks)
  refer to the image as a viewer shows it.
- Every PIL mode becomes RGB uint8: greyscale (L, LA, 1), palette (P, with or without transparency),
  RGBA (composited over white, as viewers show it), CMYK, YCbCr/LAB/HSV, and 16-bit or 32-bit
  integer greyscale (I;16*, I: scaled from their full range, not clipped), float (F).
- Only regular files are read (a FIFO, a device such as `/dev/zero` or a directory is refused,
  symlinks are followed first), and at most `max_file_bytes` of them (`MAX_FILE_BYTES` by default):
  the size is checked from the file system before the first byte is read, and no read asks for more
  than the cap plus one byte, so a file that grows or lies about its size cannot exhaust memory.
- The pixel count is checked from the header *before* the rest of the file is read and before any
  pixel is decoded, against `max_pixels`.
- Empty, truncated, corrupt and non-image files raise `ImageDecodeError` naming the file.
- With `max_side`, the pixels are a reduced copy whose longer side is at most `max_side` (never
  enlarged): a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that still covers it
  (`Image.draft`, several times cheaper than a full decode) and then resized, so a full-HD photo costs
  about as much as a 512-px one. `DecodedImage.full_region()` decodes full resolution on demand, for
  the few uses that need it, and `to_full` maps reduced-pixel coordinates back to original pixels.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import fsspec
import numpy as np
from PIL import Image, UnidentifiedImageError

from manifests.storage import FileTooLargeError, NotRegularFileError, open_regular, url_to_fs

from .errors import ImageDecodeError, ImageReadError, ImageTooLargeError

log = logging.getLogger(__name__)

EXIF_ORIENTATION_TAG = 0x0112
# Default of PrepConfig.max_file_bytes: far above any real photo (a 100-megapixel JPEG is ~60 MiB),
# far below what would hurt a worker's memory.
MAX_FILE_BYTES = 256 * 2**20

# EXIF orientation -> the PIL transpose that shows the image upright (as `ImageOps.exif_transpose`).
ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass
class DecodedImage:
    """A decoded image and what is needed to store it again without needless re-encoding.

    `pixels` is the whole image, or with `max_side` a reduced copy of it; `width` / `height` are
    always the original (upright) size, and `full_pixels()` the full-resolution image.
    """

    pixels: np.ndarray  # (h, w, 3) uint8 RGB, EXIF orientation applied
    format: str | None  # PIL format of the source bytes (JPEG, PNG, ...)
    source_mode: str  # PIL mode before conversion (RGB, L, CMYK, I;16, ...)
    oriented: bool  # True when an EXIF orientation other than 1 was applied
    full_size: tuple[int, int] | None = None  # (W, H) of the upright original; None: that of `pixels`
    _full_image: Image.Image | None = field(default=None, repr=False)  # upright RGB, when reduced
    _load_full: Callable[[], Image.Image] | None = field(default=None, repr=False)

    @property
    def width(self) -> int:
        return int(self.full_size[0]) if self.full_size else int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.full_size[1]) if self.full_size else int(self.pixels.shape[0])

    @property
    def reduced(self) -> bool:
        """Whether `pixels` is smaller than the original."""
        return (self.pixels.shape[1], self.pixels.shape[0]) != (self.width, self.height)

    @property
    def scale(self) -> tuple[float, float]:
        """(x, y) pixels of `pixels` per original pixel (1 when not reduced; the two differ by rounding)."""
        return self.pixels.shape[1] / self.width, self.pixels.shape[0] / self.height

    def to_full(self, points: np.ndarray) -> np.ndarray:
        """(N, >=2) coordinates in `pixels` -> original pixels (a copy; extra columns are kept).

        Both frames put pixel i over [i, i + 1), and the reduced image spans the original exactly,
        so the map is a pure per-axis scale.
        """
        out = np.array(points, dtype=np.float64, copy=True)
        sx, sy = self.scale
        out[:, 0] /= sx
        out[:, 1] /= sy
        return out

    def to_reduced(self, points: np.ndarray) -> np.ndarray:
        """(N, >=2) original pixels -> coordinates in `pixels`; the inverse of `to_full`."""
        out = np.array(points, dtype=np.float64, copy=True)
        sx, sy = self.scale
        out[:, 0] *= sx
        out[:, 1] *= sy
        return out

    @property
    def full_decoded(self) -> bool:
        """Whether the full-resolution image is at hand (not reduced, decoded already, or kept)."""
        return not self.reduced or self._full_image is not None

    def full_image(self) -> Image.Image:
        """The upright full-resolution RGB image, decoded on first use when `pixels` is reduced."""
        if not self.reduced:
            return Image.fromarray(self.pixels)
        if self._full_image is None:
            self._full_image = self._load_full()
        return self._full_image

    def full_region(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """(y1 - y0, x1 - x0, 3) full-resolution pixels of a region inside the image: only the region
        is converted to an array, a small part of a full-HD photo for a hand crop."""
        if not self.reduced:
            return self.pixels[y0:y1, x0:x1]
        return np.asarray(self.full_image().crop((x0, y0, x1, y1)), dtype=np.uint8)

    def full_pixels(self) -> np.ndarray:
        """The (H, W, 3) full-resolution image (the whole of it: `full_region` is cheaper for a part)."""
        return self.pixels if not self.reduced else np.asarray(self.full_image(), dtype=np.uint8)


def _too_big(uri: str, size: int | str, max_bytes: int) -> ImageTooLargeError:
    return ImageTooLargeError(f"{uri}: {size} bytes exceeds max_file_bytes={max_bytes}")


def _filesystem(uri: str):
    """(fs, path) of a local path, file:// URL or fsspec URL."""
    if "://" not in uri:
        return fsspec.filesystem("file"), uri
    return url_to_fs(uri)


def open_regular_file(uri: str, max_bytes: int | None = MAX_FILE_BYTES):
    """Open a local path or fsspec URL for reading after checking it is a regular file within `max_bytes`
    (None: no size bound, for annotation files, which can be far larger than any photo); see
    `manifests.storage.open_regular`.

    Raises `ImageReadError` (missing, special file, unreadable) or `ImageTooLargeError`, naming `uri`.
    """
    try:
        fs, path = _filesystem(uri)
        return open_regular(fs, path, max_bytes, label=uri, limit_name="max_file_bytes")
    except NotRegularFileError as exc:
        raise ImageReadError(str(exc)) from exc
    except FileTooLargeError as exc:
        raise ImageTooLargeError(str(exc)) from exc
    except FileNotFoundError as exc:
        raise ImageReadError(f"{uri}: file not found") from exc
    except Exception as exc:  # fsspec backends raise their own types (PermissionError, ClientError, ...)
        raise ImageReadError(f"{uri}: cannot read ({type(exc).__name__}: {exc})") from exc


def read_bytes(uri: str, max_bytes: int = MAX_FILE_BYTES, max_pixels: int | None = None) -> bytes:
    """The bytes of a regular file (local path or fsspec URL), at most `max_bytes` of them.

    With `max_pixels`, the image header is read and checked first (`ImageTooLargeError`,
    `ImageDecodeError`), so a decompression bomb costs a header read, not a file read.
    """
    with open_regular_file(uri, max_bytes) as f:
        try:
            if max_pixels is not None:
                _open_checked(f, max_pixels, uri)  # not closed: PIL would close `f` with it
                f.seek(0)
            data = f.read(max_bytes + 1)
        except (ImageDecodeError, ImageTooLargeError):
            raise
        except Exception as exc:
            raise ImageReadError(f"{uri}: cannot read ({type(exc).__name__}: {exc})") from exc
    if len(data) > max_bytes:  # the size the file system gave was missing or wrong
        raise _too_big(uri, f"more than {max_bytes}", max_bytes)
    return data


def _open_checked(data, max_pixels: int, uri: str) -> Image.Image:
    """Open the header only and refuse empty data, unknown formats and oversized images.

    `data` is the file's bytes or a seekable binary file at offset 0, of which only the header is read.
    """
    in_memory = isinstance(data, (bytes, bytearray, memoryview))
    if (len(data) if in_memory else len(data.read(1))) == 0:
        raise ImageDecodeError(f"{uri}: empty file (0 bytes)")
    if not in_memory:
        data.seek(0)
    size = f"{len(data)} bytes" if in_memory else "header"
    try:
        with warnings.catch_warnings():
            # Our own bound (below) replaces PIL's DecompressionBombWarning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data) if in_memory else data)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(
            f"{uri}: exceeds max_pixels={max_pixels} and PIL's own bound ({exc})"
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(f"{uri}: not a recognised image format ({size})") from exc
    except Exception as exc:
        raise ImageDecodeError(f"{uri}: cannot parse image header ({type(exc).__name__}: {exc})") from exc
    w, h = im.size
    if w <= 0 or h <= 0:
        raise ImageDecodeError(f"{uri}: image header declares an empty size {w}x{h}")
    if w * h > max_pixels:
        raise ImageTooLargeError(
            f"{uri}: {w}x{h} = {w * h} pixels exceeds max_pixels={max_pixels} (possible decompression bomb)"
        )
    return im


def _to_uint8(arr: np.ndarray, full_scale: float) -> np.ndarray:
    return np.clip(np.round(arr.astype(np.float64) * (255.0 / full_scale)), 0, 255).astype(np.uint8)


def _wide_grey_to_rgb(im: Image.Image) -> Image.Image:
    """16/32-bit integer or float greyscale -> RGB uint8, scaled from the full range (not clipped at 255)."""
    arr = np.asarray(im)
    if im.mode.startswith("I;16"):
        grey = _to_uint8(arr, 65535.0)
    elif im.mode == "I":
        # PNG 16-bit greyscale opens as I in some Pillow versions; 8-bit data stored in I stays as is.
        grey = _to_uint8(arr, 65535.0 if arr.max(initial=0) > 255 else 255.0)
    else:  # F: floats in 0..1 or an arbitrary positive range
        peak = float(np.nanmax(arr)) if arr.size else 1.0
        grey = _to_uint8(np.nan_to_num(arr), 1.0 if peak <= 1.0 else peak)
    return Image.fromarray(grey, mode="L").convert("RGB")


def _alpha_over_white(im: Image.Image) -> Image.Image:
    rgba = im.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info)


def to_rgb(im: Image.Image) -> Image.Image:
    """Any decoded PIL image -> mode RGB (see the module docstring for each mode)."""
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I") or im.mode == "F":
        return _wide_grey_to_rgb(im)
    if _has_alpha(im):
        return _alpha_over_white(im)
    return im.convert("RGB")


def reduced_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(w, h) with the longer side at most `max_side`, aspect kept, never enlarged (the size of the
    reduced pixels and of the manifest's stored `image`)."""
    scale = min(1.0, max_side / float(max(width, height)))
    return max(1, int(round(width * scale))), max(1, int(round(height * scale)))


def _orientation(im: Image.Image, uri: str) -> int | None:
    try:
        return im.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except Exception as exc:  # a broken EXIF block should not lose an otherwise good image
        log.warning("%s: ignoring unreadable EXIF orientation (%s: %s)", uri, type(exc).__name__, exc)
        return None


def _load_rgb(data: bytes, max_pixels: int, uri: str, max_side: int | None):
    """-> (RGB image as stored, before orientation; its full-size extent in its pixels or None; the
    opened image's format, mode and size; the EXIF orientation). With `max_side`, a JPEG decodes in
    draft mode: the decoder itself returns 1/2, 1/4 or 1/8 of the pixels per side, still covering the
    reduced size."""
    im = _open_checked(data, max_pixels, uri)
    fmt, mode, size = im.format, im.mode, im.size
    target = reduced_size(*size, max_side) if max_side else size
    box = None
    if target != size and fmt == "JPEG":
        drafted = im.draft(None, target)
        box = drafted[1] if drafted else None  # the original extent (the last pixel may be partial)
    try:
        if getattr(im, "n_frames", 1) > 1:
            im.seek(0)  # animated GIF / multi-page TIFF: the first frame
        im.load()
    except Exception as exc:  # truncated data raises OSError, corrupt data many other types
        raise ImageDecodeError(
            f"{uri}: corrupt or truncated {fmt or 'image'} data ({type(exc).__name__}: {exc})"
        ) from exc
    orientation = _orientation(im, uri)
    try:
        rgb = to_rgb(im)
    except Exception as exc:
        raise ImageDecodeError(
            f"{uri}: cannot convert mode {mode} to RGB ({type(exc).__name__}: {exc})"
        ) from exc
    return rgb, box, fmt, mode, size, orientation


def _upright(rgb: Image.Image, orientation: int | None) -> Image.Image:
    transpose = ORIENTATION_TRANSPOSE.get(orientation)
    return rgb if transpose is None else rgb.transpose(transpose)


def _pixels(rgb: Image.Image, uri: str) -> np.ndarray:
    pixels = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ImageDecodeError(f"{uri}: decoded to unexpected shape {pixels.shape}")
    return pixels


def decode_image(
    data: bytes, max_pixels: int, uri: str = "<bytes>", max_side: int | None = None
) -> DecodedImage:
    """Encoded bytes -> `DecodedImage`; raises `ImageDecodeError` / `ImageTooLargeError` naming `uri`.

    With `max_side`, `pixels` is reduced to a longer side of at most `max_side` (see the module
    docstring); a JPEG's full resolution is decoded from `data` again only when it is asked for
    (other formats have no reduced decoding, so their full image is kept).
    """
    rgb, box, fmt, mode, size, orientation = _load_rgb(data, max_pixels, uri, max_side)
    target = reduced_size(*size, max_side) if max_side else size
    full_image = load_full = None
    if target != size:
        if box is None:  # no draft: every pixel was decoded anyway, so the full image is kept
            full_image = _upright(rgb, orientation)
        else:
            load_full = lambda: _upright(_load_rgb(data, max_pixels, uri, None)[0], orientation)  # noqa: E731
    if rgb.size != target:  # a draft may already have the reduced size (an exact 1/2, 1/4, 1/8)
        # PIL's filtered resize: plain bilinear interpolation of the draft aliases enough to move a
        # 30-px hand's detection (seen on hagrid_mini upscaled to full HD).
        rgb = rgb.resize(target, Image.BILINEAR, box=box, reducing_gap=2.0)
    return DecodedImage(
        pixels=_pixels(_upright(rgb, orientation), uri),
        format=fmt,
        source_mode=mode,
        oriented=ORIENTATION_TRANSPOSE.get(orientation) is not None,
        full_size=size[::-1] if orientation in (5, 6, 7, 8) else size,  # these four swap the axes
        _full_image=full_image,
        _load_full=load_full,
    )


def load_image(
    uri: str,
    max_pixels: int,
    max_bytes: int = MAX_FILE_BYTES,
    max_side: int | None = None,
    data: bytes | None = None,
) -> tuple[DecodedImage, bytes]:
    """Read and decode `uri` (reduced to `max_side` when given, see `decode_image`); returns the
    decoded image and the raw bytes (reused when storing it).

    Special files and files over `max_bytes` are refused before reading, and an oversized header
    before the rest of the file is read (see `read_bytes`). `data`, when given, are the bytes of
    `uri` already read from a container (a tar member, a Parquet cell): the same byte and pixel
    bounds apply to them.
    """
    if data is None:
        data = read_bytes(uri, max_bytes, max_pixels)
    elif len(data) > max_bytes:
        raise _too_big(uri, len(data), max_bytes)
    return decode_image(data, max_pixels, uri, max_side), data


def image_size(data: bytes, uri: str = "<bytes>", max_pixels: int | None = None) -> tuple[int, int]:
    """(width, height) after EXIF orientation, from the header only (no pixel decoding)."""
    im = _open_checked(data, max_pixels or np.iinfo(np.int64).max, uri)
    w, h = im.size
    try:
        # Orientations 5-8 swap the axes.
        if im.getexif().get(EXIF_ORIENTATION_TAG, 1) in (5, 6, 7, 8):
            return h, w
    except Exception:
        pass
    return w, h
