"""Hostile input files and manifests: special files, oversized files, out-of-image annotation keypoints,
malformed annotation files and broken manifests each give a clear one-line finding or error row,
never a hang, a huge read or a traceback."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import struct
import subprocess
import sys
import zlib

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from manifest_edits import copy_manifest, rewrite
from PIL import Image

import prep.imageio as imageio
from manifests.cli import main
from manifests.codecs import decode_heatmap, encode_heatmap
from manifests.errors import RowDecodeError
from manifests.preview import make_preview
from manifests.reader import mask_array, open_manifest
from manifests.stats import distribution
from manifests.validate import validate_manifest
from manifests.writer import ManifestWriter
from prep.annotate import Annotator, error_row
from prep.cli import main as prep_main
from prep.config import PrepConfig
from prep.errors import AnnotationError, ImageReadError, ImageTooLargeError
from prep.imageio import MAX_FILE_BYTES, load_image, read_bytes
from prep.records import HandAnnotation, ImageRecord
from prep.shard import process_shard
from prep.sources import AnnotationFileError, load_records

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
        real = imageio.open_regular_file

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

        monkeypatch.setattr(imageio, "open_regular_file", opened)


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
    """Each input, special or not, is listed and ends up as a shard row with a status and a reason."""
    root = tmp_path / "in"
    root.mkdir()
    (root / "good.png").write_bytes(_png())
    (root / "zero.png").symlink_to("/dev/zero")
    if hasattr(os, "mkfifo"):
        os.mkfifo(root / "pipe.png")
    config = PrepConfig(
        input=str(root), out=str(tmp_path / "out"), body_pose=False, mask_method="none", pad_retry=0
    )
    records = load_records(config)
    process_shard(0, records, config)  # what each Dask task runs: annotate every record, write the shard
    rows = {
        r["image_id"]: r
        for r in pq.read_table(tmp_path / "out" / "images" / "shard-00000.parquet").to_pylist()
    }
    assert rows["good"]["status"] == "no_hands"
    assert rows["zero"]["status"] == "error"
    assert (
        rows["zero"]["error"]
        == f"ImageReadError: {root}/zero.png: a character device, not a regular file; only regular files are read"
    )
    if hasattr(os, "mkfifo"):
        assert (
            rows["pipe"]["status"] == "error"
            and "a FIFO (named pipe), not a regular file" in rows["pipe"]["error"]
        )


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


# Findings 8, 9, 11: validate, stats and preview on deliberately broken manifests.


def _first_hand(change):
    def edit(idx, images, hands):
        if idx == 0:
            hands[0] = change(dict(hands[0]))
        return images, hands

    return edit


def _first_image(**values):
    def edit(idx, images, hands):
        if idx == 0:
            images[0] = dict(images[0], **values)
        return images, hands

    return edit


def _moved(dx):
    """Keypoints, bbox and crop box moved together by dx: far-off annotations that still agree with each other."""

    def change(h):
        kps = np.array(h["keypoints"])
        kps[:, 0] += dx
        box = [h["bbox"][0] + dx, h["bbox"][1], h["bbox"][2] + dx, h["bbox"][3]]
        crop = [h["crop_box"][0] + dx, h["crop_box"][1], h["crop_box"][2] + dx, h["crop_box"][3]]
        return dict(h, keypoints=kps.tolist(), bbox=box, crop_box=crop)

    return change


def _zero_size(h):
    kps = np.array(h["keypoints"])
    kps[:, :2] = kps[0, :2]
    x, y = (float(v) for v in kps[0, :2])
    return dict(h, keypoints=kps.tolist(), bbox=[x, y, x, y], hand_size=0.0, crop_box=[x, y, x, y])


def _nan(h):
    kps = np.array(h["keypoints"])
    kps[:, :2] = np.nan
    return dict(h, keypoints=kps.tolist())


H0 = "hand synthetic_00000_h0"
ROW_CASES = {  # name -> (edit of the synthetic manifest, what validate must say about hands/ or images/ shard 0)
    "zero-size hand": (_first_hand(_zero_size), f"{H0}: keypoints span 0 px (a zero-size hand)"),
    "keypoints at 1e6": (_first_hand(_moved(1e6)), f"{H0}: keypoints outside the 256x192 image"),
    "keypoints at 1e9": (_first_hand(_moved(1e9)), f"{H0}: keypoints outside the 256x192 image"),
    "negative keypoints": (_first_hand(_moved(-5000.0)), f"{H0}: keypoints outside the 256x192 image"),
    "NaN keypoints": (_first_hand(_nan), f"{H0}: keypoints contain NaN or infinity"),
    "null mask": (_first_hand(lambda h: dict(h, mask=None)), f"{H0} mask: value is null"),
    "short keypoint lists": (
        _first_hand(
            lambda h: dict(h, keypoints=h["keypoints"][:20], crop_keypoints=h["crop_keypoints"][:19])
        ),
        f"{H0} keypoints: shape (20, 3), expected (21, 3)",
    ),
    "ragged keypoints": (
        _first_hand(lambda h: dict(h, keypoints=[[1.0]] + h["keypoints"][1:])),
        f"{H0} keypoints: ragged keypoint list",
    ),
    "short boxes": (
        _first_hand(lambda h: dict(h, crop_box=h["crop_box"][:3], bbox=h["bbox"][:2])),
        f"{H0}: bad crop_size 64 or crop_box",
    ),
    "all nulls": (
        _first_hand(lambda h: {k: v if k.endswith("_id") else None for k, v in h.items()}),
        f"{H0}: keypoints and crop_keypoints null",
    ),
    "zero crop size": (_first_hand(lambda h: dict(h, crop_size=0)), f"{H0}: bad crop_size 0"),
    "zero heatmap shape": (
        _first_hand(lambda h: dict(h, heatmap_shape=[21, 0, 0])),
        f"{H0} heatmap: heatmap_shape [21, 0, 0], expected [21, H, W]",
    ),
    "NaN body": (
        _first_image(body_keypoints=[[float("nan")] * 3] * 33),
        "image synthetic_00000: body_keypoints contain NaN or infinity",
    ),
    "zero image size": (_first_image(width=0, height=0), "image synthetic_00000: bad size 0x0"),
    "null image": (_first_image(image=None, image_width=None), "image synthetic_00000 image: value is null"),
}


def _json_edit(path: str, change):
    def damage(root):
        target = root / path
        target.write_text(json.dumps(change(json.loads(target.read_text()))))

    return damage


def _drop_column(root):
    shard = root / "hands" / "shard-00000.parquet"
    pq.write_table(pq.read_table(shard).drop_columns(["keypoints"]), shard)


FILE_CASES = {  # name -> (damage to a copy, what validate, stats and preview must say)
    "_manifest.json is a list": (
        _json_edit("_manifest.json", lambda info: [1, 2]),
        "_manifest.json: _manifest.json must be a JSON object, got list",
    ),
    "tables: 5": (
        _json_edit("_manifest.json", lambda info: dict(info, tables=5)),
        "_manifest.json: 'tables' must be an object keyed by table name, got int 5",
    ),
    "table _manifest.json is a list": (
        _json_edit("hands/_manifest.json", lambda info: []),
        "hands/_manifest.json: _manifest.json must be a JSON object, got list",
    ),
    "shards: 5": (
        _json_edit("hands/_manifest.json", lambda info: dict(info, shards=5)),
        "hands/_manifest.json: 'shards' must map shard names to row counts, got int 5",
    ),
    "stats file is a list": (
        _json_edit("hands/_stats/shard-00000.json", lambda info: []),
        "hands/_stats/shard-00000.json: stats file must be a JSON object, got list",
    ),
    "missing column": (_drop_column, "hands/shard-00000.parquet: field 'keypoints' is missing"),
}


@pytest.fixture(scope="module")
def broken(synthetic_manifest, tmp_path_factory):
    """name -> root of every broken manifest, made once for the module."""
    out = tmp_path_factory.mktemp("broken")
    roots = {}
    for i, (name, (edit, _)) in enumerate(ROW_CASES.items()):
        roots[name] = rewrite(synthetic_manifest, out / f"row{i}", edit)
    for i, (name, (damage, _)) in enumerate(FILE_CASES.items()):
        roots[name] = copy_manifest(synthetic_manifest, out / f"file{i}")
        damage(roots[name])
    roots["empty tables"] = rewrite(synthetic_manifest, out / "empty", lambda idx, images, hands: ([], []))
    return roots


def _cli(args, capsys) -> tuple[int, str]:
    code = main(args)  # any exception fails the test: none may escape
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("name", list(ROW_CASES))
def test_broken_rows_are_findings_and_never_crash_stats_or_preview(broken, name, tmp_path, capsys):
    root = broken[name]
    shard = "hands" if name not in ("NaN body", "zero image size", "null image") else "images"
    problems = validate_manifest(str(root))
    expected = ROW_CASES[name][1]
    assert any(p.file == f"{root}/{shard}/shard-00000.parquet" and expected in p.reason for p in problems), [
        str(p) for p in problems
    ]
    assert all("\n" not in str(p) for p in problems)
    assert _cli(["stats", str(root), "--json"], capsys)[0] == 0
    assert _cli(["preview", str(root), "--out", str(tmp_path / "p.png"), "--images", "12"], capsys)[0] == 0
    assert Image.open(tmp_path / "p.png").size[0] > 0


@pytest.mark.parametrize("name", list(FILE_CASES))
def test_broken_files_are_findings_and_one_clear_error(broken, name, tmp_path, capsys):
    root = broken[name]
    expected = FILE_CASES[name][1]
    problems = validate_manifest(str(root))
    assert any(str(p).startswith(f"{root}/{expected}") for p in problems), [str(p) for p in problems]
    for args in (["stats", str(root)], ["preview", str(root), "--out", str(tmp_path / "p.png")]):
        code, err = _cli(args, capsys)
        where = f"handfirst-manifests {args[0]}: error: {root}/{expected}"
        assert code == 1 and err.startswith(where) and "Traceback" not in err, err


def test_empty_tables_have_no_findings_and_plain_stats(broken, tmp_path, capsys):
    root = broken["empty tables"]
    assert validate_manifest(str(root)) == []
    assert _cli(["stats", str(root)], capsys)[0] == 0
    assert _cli(["preview", str(root), "--out", str(tmp_path / "p.png")], capsys)[0] == 0


def test_preview_draws_a_bad_row_as_a_named_placeholder(broken, caplog):
    sheet = make_preview(str(broken["null mask"]), n=24, images=0)
    assert sheet.ndim == 3
    assert "cannot draw synthetic_00000_h0: hand synthetic_00000_h0 mask: value is null" in caplog.text
    caplog.clear()
    make_preview(str(broken["NaN keypoints"]), n=0, images=12)  # the image tile draws the NaN hand
    assert "cannot draw synthetic_00000: ValueError: cannot convert float NaN to integer" in caplog.text


def test_stats_leave_nonfinite_values_out_and_count_them():
    d = distribution([1.0, None, float("nan"), 3.0, float("inf")])
    assert (d["n"], d["nulls"], d["nonfinite"], d["mean"], d["p100"]) == (2, 1, 2, 2.0, 3.0)
    json.dumps(d, allow_nan=False)


# Finding 9: --mask-method none writes a manifest that validates.


def test_mask_method_none_is_recorded_and_the_manifest_validates(
    annotation_annotator, small_photo, tmp_path, caplog
):
    record = ImageRecord(
        image_id="p", source_uri=small_photo, dataset="coco", split="train", hands=[_hand(40, 30)]
    )
    row, hands = annotation_annotator.annotate(record)
    assert (hands[0]["mask"], hands[0]["mask_method"], hands[0]["mask_score"]) == (None, "none", None)
    writer = ManifestWriter(str(tmp_path / "m"))
    writer.write_shard(0, {"images": [row], "hands": hands})
    writer.finalize({"mask_method": "none"})
    assert validate_manifest(str(tmp_path / "m")) == []
    make_preview(str(tmp_path / "m"))
    assert "cannot draw" not in caplog.text  # drawn without a mask
    stored = open_manifest(str(tmp_path / "m")).read("hands").to_pylist()[0]
    with pytest.raises(
        RowDecodeError, match=r"hand p_h0 mask: none stored \(mask_method 'none'\); rerun prep"
    ):
        mask_array(stored)  # uses that need masks say why there is none


# Finding 11: malformed COCO / InterHand annotation files.


def _write_json(folder, name, data):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(data))


def _interhand(folder, images, annotations):
    _write_json(folder, "test_x_data.json", {"images": images, "annotations": annotations})
    _write_json(folder, "test_x_joint_3d.json", {})
    _write_json(folder, "test_x_camera.json", {})


@pytest.mark.parametrize("fmt", ["coco", "interhand"])
@pytest.mark.parametrize("value", [5, "all", {"image_id": 1}])
def test_annotations_that_are_not_a_list_stop_the_run_naming_the_file(tmp_path, capsys, fmt, value):
    images = [{"id": 1, "file_name": "a.jpg"}]
    if fmt == "coco":
        _write_json(tmp_path, "hands.json", {"images": images, "annotations": value})
        name = "hands.json"
    else:
        _interhand(tmp_path, images, value)
        name = "test_x_data.json"
    reason = f"{tmp_path}/{name}: 'annotations' must be a list, got {type(value).__name__}"
    with pytest.raises(AnnotationFileError, match=re.escape(reason)):
        load_records(PrepConfig(input=str(tmp_path), format=fmt))
    assert prep_main(["run", "--input", str(tmp_path), "--format", fmt, "--out", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == f"handfirst-prep: error: {reason}\n"


@pytest.mark.parametrize("fmt", ["coco", "interhand"])
def test_list_and_dict_ids_become_error_records_and_unusable_annotations_are_counted(tmp_path, caplog, fmt):
    images = [
        {"id": [1], "file_name": "a.jpg"},
        {"id": {"k": 2}, "file_name": "b.jpg"},
        {"id": 3, "file_name": "c.jpg"},
    ]
    annotations = [{"image_id": [1]}, {"image_id": {"k": 2}}, {"image_id": 3, "keypoints": [1.0] * 63}]
    if fmt == "coco":
        _write_json(tmp_path, "hands.json", {"images": images, "annotations": annotations})
        where = "hands.json"
    else:
        _interhand(tmp_path, images, annotations)
        where = "test_x_data.json"
    recs = load_records(PrepConfig(input=str(tmp_path), format=fmt))
    assert [r.error for r in recs[:2]] == [
        f"{where} images[0]: 'id' must be a string or integer, got list",
        f"{where} images[1]: 'id' must be a string or integer, got dict",
    ]
    assert len({r.image_id for r in recs}) == 3  # every image is a record, under a distinct id
    assert "2 annotations have no usable image_id (a string or integer), e.g. annotations[0]" in caplog.text


@pytest.mark.parametrize(
    "joints, cameras, reason",
    [
        ({"c": [1, 2]}, {}, "3D joints of capture c must be an object keyed by frame"),
        ({"c": {"0": 5}}, {}, "3D joints of capture c frame 0 must be an object"),
        ({"c": {"0": {"world_coord": []}}}, {"c": [1]}, "camera parameters of capture c must be an object"),
    ],
)
def test_interhand_nested_values_of_the_wrong_type_become_error_records(tmp_path, joints, cameras, reason):
    image = {"id": 1, "file_name": "a.jpg", "capture": "c", "frame_idx": 0, "camera": "k"}
    _write_json(tmp_path, "test_x_data.json", {"images": [image], "annotations": []})
    _write_json(tmp_path, "test_x_joint_3d.json", joints)
    _write_json(tmp_path, "test_x_camera.json", cameras)
    (rec,) = load_records(PrepConfig(input=str(tmp_path), format="interhand"))
    assert rec.error == f"test_x_data.json images[0]: {reason}"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_annotation_files_that_are_fifos_or_devices_stop_the_run_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "hands.json")  # no writer: reading it would block forever
    with pytest.raises(
        AnnotationFileError, match=r"hands.json: cannot read annotation file: a FIFO \(named pipe\)"
    ):
        load_records(PrepConfig(input=str(tmp_path), format="coco"))
    (tmp_path / "hands.json").unlink()
    (tmp_path / "hands.json").symlink_to("/dev/zero")
    with pytest.raises(
        AnnotationFileError, match="hands.json: cannot read annotation file: a character device"
    ):
        load_records(PrepConfig(input=str(tmp_path), format="coco"))


# Reading, validating and summarising a manifest imports neither torch nor OpenCV.


def test_manifest_readers_import_neither_torch_nor_cv2():
    code = (
        "import sys, manifests.reader, manifests.validate, manifests.stats; "
        "print(sorted(m for m in ('torch', 'cv2') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_heatmap_bytes_are_the_same_with_and_without_torch(monkeypatch):
    rng = np.random.default_rng(0)
    heat = np.concatenate([rng.random((21, 8, 8)), rng.random((21, 8, 8)) * 1e-6], axis=1).astype(np.float32)
    import torch  # noqa: F401  (the fast path: torch is loaded in this process)

    with_torch = encode_heatmap(heat)
    monkeypatch.delitem(sys.modules, "torch")  # the numpy path, as in a process without torch
    without = encode_heatmap(heat)
    assert with_torch == without
    np.testing.assert_array_equal(decode_heatmap(*without), heat.astype(np.float16).astype(np.float32))


def test_a_shard_with_nulls_in_a_required_column_is_a_finding_and_still_summarised(
    synthetic_manifest, tmp_path, capsys
):
    """A shard written by another tool may make a required column nullable, and hold nulls in it."""
    root = copy_manifest(synthetic_manifest, tmp_path / "m")
    for table, column in (("images", "status"), ("hands", "image_id")):
        shard = root / table / "shard-00000.parquet"
        rows = pq.read_table(shard)
        i = rows.schema.get_field_index(column)
        field = rows.schema.field(i).with_nullable(True)
        pq.write_table(rows.set_column(i, field, pa.nulls(rows.num_rows, field.type)), shard)
    reasons = [str(p) for p in validate_manifest(str(root))]
    assert (
        f"{root}/images/shard-00000.parquet row 0: image synthetic_00000: status None is not one of"
        in "\n".join(reasons)
    )
    assert any("image_id None has no row in the images table (orphan hand)" in r for r in reasons)
    assert _cli(["stats", str(root), "--json"], capsys)[0] == 0
    assert _cli(["preview", str(root), "--out", str(tmp_path / "p.png"), "--images", "12"], capsys)[0] == 0


@pytest.mark.parametrize(
    "entry, reason",
    [
        ({"bboxes": 5}, "bboxes and labels must be lists"),
        (
            {"bboxes": [[0.1, 0.1, 0.2, 0.2]], "labels": ["call"], "landmarks": {"0": 1}},
            "landmarks must be a list, got dict",
        ),
        (
            {"bboxes": [[0.1, 0.1, 0.2, 0.2]], "labels": ["call"], "landmarks": [5]},
            "landmarks 0 must be a list of [x, y] points",
        ),
    ],
)
def test_hagrid_entries_of_the_wrong_shape_become_error_records(tmp_path, entry, reason):
    (tmp_path / "call").mkdir()
    _write_json(tmp_path / "annotations" / "train", "call.json", {"img": entry})
    (rec,) = load_records(PrepConfig(input=str(tmp_path), format="hagrid"))
    assert rec.error == f"annotations/train/call.json['img']: {reason}"


@pytest.fixture
def silent_server():
    """A local port that accepts connections and never says a word."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield server.getsockname()[1]
    server.close()


@pytest.mark.parametrize(
    "url, reason",
    [
        ("http://127.0.0.1:9/photos", "this kind of URL needs a package that is not installed"),
        ("reference://photos", "cannot open it: TypeError"),
        ("ftp://127.0.0.1:{port}/photos", "no answer from the server within 0.5 s"),
    ],
)
def test_fsspec_inputs_that_cannot_be_opened_are_one_line(
    url, reason, silent_server, tmp_path, capsys, monkeypatch
):
    import manifests.storage

    if url.startswith("http"):
        pytest.importorskip("requests")
        if importlib.util.find_spec("aiohttp"):
            pytest.skip("aiohttp is installed: http:// opens")
    monkeypatch.setattr(manifests.storage, "CONNECT_TIMEOUT", 0.5)
    url = url.format(port=silent_server)
    assert prep_main(["run", "--input", url, "--out", str(tmp_path / "out"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"handfirst-prep: error: {url}: ") and reason in err[0]
