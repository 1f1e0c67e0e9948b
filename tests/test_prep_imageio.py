"""prep.imageio and the annotator's error rows: every image mode decodes to RGB uint8, EXIF orientation
is applied, and every bad file fails with a clear, typed error that names it."""

import io
import struct
import zlib

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageOps

from manifests.schema import IMAGES_SCHEMA
from prep.annotate import Annotator, error_row
from prep.config import PrepConfig
from prep.errors import ImageDecodeError, ImageReadError, ImageTooLargeError
from prep.imageio import decode_image, image_size, load_image
from prep.records import ImageRecord

MAX = 40_000_000


@pytest.fixture(scope="module")
def photo(data_dir) -> np.ndarray:
    """A real photo (418 x 418 RGB)."""
    with Image.open(data_dir / "photos" / "victory.jpg") as im:
        return np.asarray(im.convert("RGB"))


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels but carries almost no data (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def test_rgb_jpeg_decodes_unchanged(photo, data_dir):
    out = decode_image((data_dir / "photos" / "victory.jpg").read_bytes(), MAX, "victory.jpg")
    assert out.pixels.dtype == np.uint8 and out.pixels.shape == photo.shape
    assert np.array_equal(out.pixels, photo) and out.format == "JPEG" and not out.oriented


def test_greyscale_becomes_three_equal_channels(photo):
    grey = Image.fromarray(photo).convert("L")
    out = decode_image(_encode(grey, "PNG"), MAX).pixels
    assert out.shape == photo.shape and out.dtype == np.uint8
    assert np.array_equal(out[..., 0], np.asarray(grey)) and np.array_equal(out[..., 0], out[..., 2])


def test_16bit_png_is_scaled_from_its_full_range_not_clipped(photo):
    grey8 = np.asarray(Image.fromarray(photo).convert("L"))
    data = _encode(Image.fromarray(grey8.astype(np.uint16) * 257), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = decode_image(data, MAX)
    assert out.source_mode.startswith("I") and out.pixels.dtype == np.uint8
    assert np.array_equal(out.pixels[..., 1], grey8)  # x257 then /257: exact, not saturated at 255


def test_rgba_is_composited_over_white(photo):
    rgba = np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)])
    rgba[:50, :50, 3] = 0  # a fully transparent corner
    out = decode_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"), MAX).pixels
    assert out.shape == photo.shape
    assert (out[:50, :50] == 255).all()
    assert np.array_equal(out[100:, 100:], photo[100:, 100:])


def test_cmyk_jpeg_and_palette_png_decode_close_to_the_original(photo):
    cmyk = decode_image(_encode(Image.fromarray(photo).convert("CMYK"), "JPEG", quality=95), MAX)
    assert cmyk.source_mode == "CMYK" and np.abs(cmyk.pixels.astype(int) - photo).mean() < 4
    pal = decode_image(_encode(Image.fromarray(photo).quantize(256), "PNG"), MAX)
    assert pal.source_mode == "P" and np.abs(pal.pixels.astype(int) - photo).mean() < 4


# ImageOps.exif_transpose applies these to a stored image with the given orientation; storing the
# inverse makes the oriented image equal to the original.
_INVERSE_OF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}  # fmt: skip


@pytest.mark.parametrize("orientation", sorted(_INVERSE_OF_TRANSPOSE))
def test_every_exif_orientation_is_applied(photo, orientation):
    rect = Image.fromarray(photo[:, :300])  # not square, so a wrong rotation changes the shape
    stored = rect.transpose(_INVERSE_OF_TRANSPOSE[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(stored, "PNG", exif=exif.tobytes())
    assert np.array_equal(
        np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")), photo[:, :300]
    )
    out = decode_image(data, MAX)
    assert out.oriented and np.array_equal(out.pixels, photo[:, :300])
    assert image_size(data) == (300, photo.shape[0])


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match=r"empty.jpg: empty file \(0 bytes\)"):
        load_image(str(path), MAX)


def test_text_file(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageDecodeError, match="notes.jpg: not a recognised image format"):
        load_image(str(path), MAX)


def test_truncated_jpeg(tmp_path, data_dir):
    data = (data_dir / "photos" / "victory.jpg").read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageDecodeError, match="cut.jpg: corrupt or truncated JPEG"):
        load_image(str(path), MAX)


def test_corrupt_png_body(tmp_path, photo):
    data = bytearray(_encode(Image.fromarray(photo), "PNG"))
    data[200:260] = b"\x00" * 60  # keep the header, break the compressed stream
    with pytest.raises(ImageDecodeError, match="corrupt or truncated PNG"):
        decode_image(bytes(data), MAX, "broken.png")


def test_bomb_is_refused_from_the_header_before_decoding():
    # Our bound, from the header: 10000 x 10000 = 1e8 pixels would take 300 MB to decode as RGB.
    with pytest.raises(
        ImageTooLargeError, match=r"bomb.png: 10000x10000 = 100000000 pixels exceeds max_pixels=40000000"
    ):
        decode_image(_png_header_only(10_000, 10_000), MAX, "bomb.png")
    # Far past PIL's own limit too: still our error type, naming the file and our bound.
    with pytest.raises(ImageTooLargeError, match="huge.png: exceeds max_pixels=40000000"):
        decode_image(_png_header_only(100_000, 100_000), MAX, "huge.png")


def test_max_pixels_is_settable(photo):
    data = _encode(Image.fromarray(photo), "PNG")
    assert decode_image(data, photo.shape[0] * photo.shape[1]).pixels.shape == photo.shape
    with pytest.raises(ImageTooLargeError, match="exceeds max_pixels=1000"):
        decode_image(data, 1000, "small.png")


def test_missing_file_and_fsspec_urls(photo):
    with pytest.raises(ImageReadError, match="no/such/file.jpg: file not found"):
        load_image("no/such/file.jpg", MAX)
    import fsspec

    with fsspec.open("memory://prep-imageio/photo.png", "wb") as f:
        f.write(_encode(Image.fromarray(photo), "PNG"))
    decoded, raw = load_image("memory://prep-imageio/photo.png", MAX)
    assert np.array_equal(decoded.pixels, photo) and raw[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "name, content, exc_type, reason",
    [
        ("zero.jpg", b"", "ImageDecodeError", "empty file"),
        ("text.png", b"hello, world\n" * 10, "ImageDecodeError", "not a recognised image format"),
        ("bomb.png", _png_header_only(10_000, 10_000), "ImageTooLargeError", "exceeds max_pixels"),
    ],
)
def test_bad_files_become_schema_valid_error_rows(tmp_path, name, content, exc_type, reason):
    path = tmp_path / name
    path.write_bytes(content)
    record = ImageRecord(image_id=name.split(".")[0], source_uri=str(path), dataset="folder", label="call")
    annotator = Annotator(PrepConfig())
    with pytest.raises(Exception) as info:
        annotator.annotate(record)
    row = error_row(record, info.value)
    assert row["status"] == "error" and row["num_hands"] == 0 and row["label"] == "call"
    assert row["error"].startswith(f"{exc_type}: {path}") and reason in row["error"]
    assert set(row) == set(IMAGES_SCHEMA.names)
    pa.Table.from_pylist([row], schema=IMAGES_SCHEMA)  # types and nullability match the contract
    assert annotator.hands._hands is None  # a file that cannot be read never loads a model
