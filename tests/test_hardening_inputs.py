"""Hostile input files and manifests: special files, oversized files, out-of-image annotation keypoints,
malformed annotation files and broken manifests each give a clear one-line finding or error row,
never a hang, a huge read or a traceback."""

from __future__ import annotations

import io
import os
import struct
import zlib

import fsspec
import numpy as np
import pytest
from PIL import Image

import prep.imageio as imageio
from prep.annotate import Annotator, error_row
from prep.config import PrepConfig
from prep.errors import AnnotationError, ImageReadError, ImageTooLargeError
from prep.imageio import MAX_FILE_BYTES, load_image, read_bytes
from prep.records import HandAnnotation, ImageRecord
from prep.sources import load_records

MAX = 40_000_000


def _png(width: int = 8, height: int = 6) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _png_header_only(width: int, height: int, padding: int = 0) -> bytes:
    """A PNG header declaring width x height, followed by `padding` bytes of filler."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"\x00" * padding)


class CountingReads:
    """Spy on the bytes `prep.imageio` asks any file for (file objects' read())."""

    def __init__(self, monkeypatch):
        self.sizes: list[int] = []
        real = imageio.open_image_file

        def opened(uri, max_bytes=MAX_FILE_BYTES):
            f = real(uri, max_bytes)
            spy = self

            class Wrapped(io.RawIOBase):
                def readable(self):
                    return True

                def seekable(self):
                    return True

                def seek(self, *a):
                    return f.seek(*a)

                def tell(self):
                    return f.tell()

                def read(self, n=-1):
                    data = f.read(n)
                    spy.sizes.append(len(data))
                    return data

                def readinto(self, b):
                    data = self.read(len(b))
                    b[: len(data)] = data
                    return len(data)

                def close(self):
                    f.close()
                    super().close()

            return io.BufferedReader(Wrapped(), buffer_size=8192)

        monkeypatch.setattr(imageio, "open_image_file", opened)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # no writer: a blocking open or read would hang here forever
    with pytest.raises(ImageReadError, match=r"pipe.jpg: a FIFO \(named pipe\), not a regular file"):
        load_image(str(fifo), MAX)


def test_a_symlink_to_dev_zero_is_refused_before_reading(tmp_path):
    link = tmp_path / "zero.png"
    link.symlink_to("/dev/zero")
    with pytest.raises(ImageReadError, match="zero.png: a character device, not a regular file"):
        load_image(str(link), MAX)
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(ImageReadError, match="folder.png: a directory, not a regular file"):
        read_bytes(str(tmp_path / "folder.png"))


def test_file_size_cap_applies_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    path.write_bytes(_png())
    with open(path, "r+b") as f:  # sparse: 1 GiB on paper, nothing on disk
        f.truncate(2**30)
    spy = CountingReads(monkeypatch)
    with pytest.raises(
        ImageTooLargeError, match=f"big.png: {2**30} bytes exceeds max_file_bytes={MAX_FILE_BYTES}"
    ):
        load_image(str(path), MAX)
    assert spy.sizes == []  # refused from the size alone
    small = tmp_path / "small.png"
    small.write_bytes(_png())
    cap = len(_png()) - 1
    with pytest.raises(ImageTooLargeError, match=f"small.png: {cap + 1} bytes exceeds max_file_bytes={cap}"):
        load_image(str(small), MAX, max_bytes=cap)
    decoded, raw = load_image(str(small), MAX, max_bytes=len(_png()))
    assert decoded.pixels.shape == (6, 8, 3) and raw == _png()


def test_fsspec_files_are_capped_and_must_be_files(monkeypatch):
    with fsspec.open("memory://hardening/a.png", "wb") as f:
        f.write(_png())
    with pytest.raises(ImageTooLargeError, match="memory://hardening/a.png: .* exceeds max_file_bytes=20"):
        load_image("memory://hardening/a.png", MAX, max_bytes=20)
    with pytest.raises(ImageReadError, match="memory://hardening: directory entry, not a regular file"):
        load_image("memory://hardening", MAX)
    # A backend that reports no size: the read itself stops at cap + 1 bytes.
    fs = fsspec.filesystem("memory")
    real_info = type(fs).info
    monkeypatch.setattr(
        type(fs), "info", lambda self, path, **kw: {**real_info(self, path, **kw), "size": None}
    )
    with pytest.raises(ImageTooLargeError, match="more than 20 bytes exceeds max_file_bytes=20"):
        load_image("memory://hardening/a.png", MAX, max_bytes=20)


def test_pixel_bound_applies_before_the_whole_file_is_read(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(10_000, 10_000, padding=4 * 2**20))
    spy = CountingReads(monkeypatch)
    with pytest.raises(
        ImageTooLargeError, match="bomb.png: 10000x10000 = 100000000 pixels exceeds max_pixels"
    ):
        load_image(str(path), MAX)
    assert 0 < sum(spy.sizes) < 64 * 1024, spy.sizes  # the header, not the 4 MiB behind it


def test_special_files_in_a_folder_become_error_rows(tmp_path):
    """Each input, special or not, is listed and ends up as a row with a status and a reason."""
    root = tmp_path / "in"
    root.mkdir()
    (root / "good.png").write_bytes(_png())
    (root / "zero.png").symlink_to("/dev/zero")
    if hasattr(os, "mkfifo"):
        os.mkfifo(root / "pipe.png")
    records = load_records(PrepConfig(input=str(root), format="folder"))
    annotator = Annotator(PrepConfig(body_pose=False, mask_method="none", pad_retry=0))
    rows = {}
    for record in records:
        try:
            rows[record.image_id] = annotator.annotate(record)[0]
        except Exception as exc:  # the runner's own handling: every exception becomes an error row
            rows[record.image_id] = error_row(record, exc)
    assert rows["good"]["status"] == "no_hands"
    assert rows["zero"]["status"] == "error" and "character device" in rows["zero"]["error"]
    if hasattr(os, "mkfifo"):
        assert rows["pipe"]["status"] == "error" and "FIFO" in rows["pipe"]["error"]


# Finding 8: annotation keypoints outside the image.


def _hand(x, y, score=1.0) -> HandAnnotation:
    """A 21-keypoint annotation: a small fan of points starting at (x, y)."""
    kps = np.array([[x + 3 * (i % 5), y + 4 * (i // 5), score] for i in range(21)], dtype=np.float64)
    return HandAnnotation(keypoints=kps, handedness="right")


@pytest.fixture(scope="module")
def annotation_annotator():
    return Annotator(
        PrepConfig(keypoint_source="annotation", body_pose=False, mask_method="none", crop_size=64)
    )


@pytest.fixture(scope="module")
def small_photo(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.new("RGB", (120, 80), (90, 60, 30)).save(path)
    return str(path)


@pytest.mark.parametrize(
    "hand, reason",
    [
        (_hand(1e6, 1e6), r"hand 0 keypoints reach 999936 px outside the 120x80 image \(x 1e\+06"),
        (_hand(-500, 10), r"hand 0 keypoints reach 500 px outside the 120x80 image \(x -500..-488"),
        (_hand(40, -1e6), r"hand 0 keypoints reach 1e\+06 px outside .* y -1e\+06"),
        (
            HandAnnotation(keypoints=np.tile([50.0, 40.0, 1.0], (21, 1))),
            "hand 0 keypoints span 0 px: a degenerate",
        ),
    ],
)
def test_annotation_keypoints_outside_the_image_make_an_error_row(
    annotation_annotator, small_photo, hand, reason
):
    record = ImageRecord(image_id="p", source_uri=small_photo, dataset="coco", hands=[hand])
    with pytest.raises(AnnotationError, match=reason) as info:
        annotation_annotator.annotate(record)
    row = error_row(record, info.value)
    assert row["status"] == "error" and row["error"].startswith("AnnotationError: " + small_photo)
    assert "\n" not in row["error"]


def test_annotation_keypoints_a_little_past_the_border_are_kept(annotation_annotator, small_photo):
    # The fan is 12 x 16 px; 3 px past the right border is within max_outside (0.25 x 16 px).
    record = ImageRecord(image_id="p", source_uri=small_photo, dataset="coco", hands=[_hand(111, 30)])
    row, hands = annotation_annotator.annotate(record)
    assert row["status"] == "ok" and len(hands) == 1 and hands[0]["keypoint_source"] == "annotation"
