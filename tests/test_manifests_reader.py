import json

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from manifest_edits import copy_manifest

from manifests.codecs import encode_heatmap, encode_mask, encode_png
from manifests.errors import CorruptShardError, CountMismatchError, MissingFileError, SchemaMismatchError
from manifests.reader import (
    crop_array,
    decode_hand,
    decode_image_row,
    heatmap_array,
    mask_array,
    open_manifest,
)
from manifests.synthetic import make_synthetic_manifest
from manifests.writer import ManifestWriter


def _hand_row(rng, image_id, j, crop_size=32, hm=8):
    crop = rng.integers(0, 256, size=(crop_size, crop_size, 3), dtype=np.uint8)
    mask = rng.random((crop_size, crop_size)) > 0.5
    heat = rng.random((21, hm, hm)).astype(np.float32)
    kps = np.concatenate([rng.uniform(10, 50, (21, 2)), np.ones((21, 1))], axis=1).astype(np.float32)
    hb, shape, dtype = encode_heatmap(heat)
    row = {
        "hand_id": f"{image_id}_h{j}",
        "image_id": image_id,
        "hand_index": j,
        "handedness": "left",
        "handedness_score": 0.9,
        "keypoints": kps.tolist(),
        "keypoint_source": "annotation",
        "bbox": [10.0, 10.0, 50.0, 50.0],
        "hand_size": 40.0,
        "crop_box": [0.0, 0.0, 64.0, 64.0],
        "crop_size": crop_size,
        "crop": encode_png(crop),
        "crop_keypoints": (kps * [0.5, 0.5, 1]).tolist(),
        "mask": encode_mask(mask),
        "mask_method": "grabcut",
        "mask_score": 0.5,
        "heatmap": hb,
        "heatmap_shape": shape,
        "heatmap_dtype": dtype,
        "heatmap_sigma": 1.0,
        "label": "call",
        "caption": "a hand",
    }
    return row, {"crop": crop, "mask": mask, "heatmap": heat, "keypoints": kps}


def _image_row(rng, image_id, n, w=64, h=48):
    image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    hands_mask = rng.random((h, w)) > 0.7
    body = rng.uniform(0, 40, (33, 3)).astype(np.float32)
    row = {
        "image_id": image_id,
        "source_uri": f"x/{image_id}.jpg",
        "dataset": "folder",
        "split": "train",
        "width": w,
        "height": h,
        "label": "call",
        "caption": "c",
        "subject_id": None,
        "status": "ok",
        "error": None,
        "num_hands": n,
        "body_keypoints": body.tolist(),
        "body_score": 0.5,
        "hands_mask": encode_mask(hands_mask),
        "image": encode_png(image),
        "image_width": w,
        "image_height": h,
    }
    return row, {"image": image, "hands_mask": hands_mask, "body_keypoints": body}


def test_round_trip_writer_to_reader_decodes_the_inputs(tmp_path):
    rng = np.random.default_rng(0)
    writer = ManifestWriter(str(tmp_path / "m"), row_group_size=2)
    expected_hands, expected_images = {}, {}
    for shard in range(2):
        images, hands = [], []
        for i in range(3):
            iid = f"img{shard}{i}"
            row, arrays = _image_row(rng, iid, 2)
            images.append(row)
            expected_images[iid] = arrays
            for j in range(2):
                hrow, harrays = _hand_row(rng, iid, j)
                hands.append(hrow)
                expected_hands[hrow["hand_id"]] = harrays
        writer.write_shard(shard, {"images": images, "hands": hands})
    writer.finalize({"k": 1})

    m = open_manifest(str(tmp_path / "m"))
    assert m.images.num_rows == 6 and m.hands.num_rows == 12 and m.config == {"k": 1}
    for row in m.read("hands").to_pylist():
        got, want = decode_hand(row), expected_hands[row["hand_id"]]
        np.testing.assert_array_equal(got["crop"], want["crop"])
        np.testing.assert_array_equal(got["mask"], want["mask"])
        np.testing.assert_array_equal(got["heatmap"], want["heatmap"].astype(np.float16).astype(np.float32))
        np.testing.assert_array_equal(got["keypoints"], want["keypoints"])
        assert got["crop"].shape == (32, 32, 3) and got["crop"].dtype == np.uint8
        assert (
            got["mask"].dtype == bool
            and got["heatmap"].shape == (21, 8, 8)
            and got["heatmap"].dtype == np.float32
        )
        assert row["split"] == "train"  # filled by the writer from the image row
    for row in m.read("images").to_pylist():
        got, want = decode_image_row(row), expected_images[row["image_id"]]
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["hands_mask"], want["hands_mask"])
        np.testing.assert_array_equal(got["body_keypoints"], want["body_keypoints"])
    # Row-group iteration sees every row once, in units of the writer's row groups (2 rows).
    units = [(u.key, t.num_rows) for u, t in m.iter_row_groups("hands", columns=["hand_id"])]
    assert [n for _, n in units] == [2] * 6 and len({k for k, _ in units}) == 6


def test_filters_and_projection(synthetic_manifest):
    m = open_manifest(str(synthetic_manifest))
    everything = m.read("hands", ["hand_id", "label", "split", "hand_size"]).to_pylist()
    got = m.read("hands", ["hand_id"], label=["call", "rock"], min_hand_size=45).column("hand_id").to_pylist()
    want = [r["hand_id"] for r in everything if r["label"] in ("call", "rock") and r["hand_size"] >= 45]
    assert got == want and 0 < len(got) < len(everything)
    val = m.read("hands", ["hand_id", "split"], split="val")
    assert val.column_names == ["hand_id", "split"] and set(val.column("split").to_pylist()) == {"val"}
    assert val.num_rows == sum(r["split"] == "val" for r in everything)
    no_hands = m.read("images", ["image_id"], status="no_hands").num_rows
    assert no_hands == 2  # every 5th of 12 images
    extra = m.read("hands", ["hand_id"], filter=ds.field("handedness") == "left").num_rows
    assert extra == sum(1 for r in m.read("hands", ["handedness"]).to_pylist() if r["handedness"] == "left")
    by_groups = [
        h
        for _, t in m.iter_row_groups("hands", ["hand_id"], label="call")
        for h in t.column("hand_id").to_pylist()
    ]
    assert by_groups == m.read("hands", ["hand_id"], label="call").column("hand_id").to_pylist()
    with pytest.raises(ValueError, match="no 'status' column"):
        m.read("hands", status="ok")
    with pytest.raises(ValueError, match="does not apply"):
        m.read("hands", filter=ds.field("no_such_field") == 1)


def test_opens_a_table_directory_and_a_pyarrow_dataset(synthetic_manifest):
    m = open_manifest(str(synthetic_manifest / "hands"))
    assert list(m.tables) == ["hands"] and m.info["table"] == "hands"
    assert m.dataset("hands").count_rows() == m.hands.num_rows == 15
    row = m.read(
        "hands", ["hand_id", "crop", "crop_size", "mask", "heatmap", "heatmap_shape", "heatmap_dtype"]
    ).to_pylist()[0]
    assert crop_array(row).shape == (64, 64, 3) and mask_array(row).shape == (64, 64)
    assert heatmap_array(row).shape == (21, 8, 8)


def test_memory_filesystem_round_trip():
    url = "memory://handfirst-test/reader-m"
    try:
        make_synthetic_manifest(url, num_images=6)
        m = open_manifest(url)
        assert (
            m.url.startswith("memory://")
            and m.url.endswith("handfirst-test/reader-m")
            and m.hands.num_rows > 0
        )
        rows = m.read("hands", ["hand_id", "crop", "crop_size"]).to_pylist()
        assert all(crop_array(r).shape == (64, 64, 3) for r in rows)
        assert [u.num_rows for u in m.hands.units()] and m.dataset("images").count_rows() == 6
    finally:
        fsspec.filesystem("memory").rm("/handfirst-test", recursive=True)


# ----- bad input: each raises a clear error naming the file ---------------------------------------


def test_corrupt_shard_names_the_file(synthetic_manifest, tmp_path):
    root = copy_manifest(synthetic_manifest, tmp_path / "m")
    shard = root / "hands" / "shard-00001.parquet"
    shard.write_bytes(b"this is not parquet" * 100)
    with pytest.raises(CorruptShardError, match=r"hands/shard-00001\.parquet: corrupt or truncated"):
        open_manifest(str(root))


def test_truncated_shard_names_the_file(synthetic_manifest, tmp_path):
    root = copy_manifest(synthetic_manifest, tmp_path / "m")
    shard = root / "images" / "shard-00002.parquet"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(CorruptShardError, match=r"images/shard-00002\.parquet: corrupt or truncated"):
        open_manifest(str(root))


def test_corrupt_row_group_fails_at_read_time_naming_file_and_row_group(synthetic_manifest, tmp_path):
    root = copy_manifest(synthetic_manifest, tmp_path / "m")
    shard = root / "hands" / "shard-00001.parquet"
    data = bytearray(shard.read_bytes())
    data[4 : len(data) // 2] = b"\xff" * (len(data) // 2 - 4)  # data pages gone, footer intact
    shard.write_bytes(bytes(data))
    m = open_manifest(str(root))  # the footer still reads
    with pytest.raises(CorruptShardError, match=r"hands/shard-00001\.parquet row group 0: cannot read"):
        for _ in m.iter_row_groups("hands"):
            pass


def _rewrite_shard(path, table):
    pq.write_table(table, path, row_group_size=4)


def test_schema_from_another_version_is_refused(synthetic_manifest, tmp_path):
    root = copy_manifest(synthetic_manifest, tmp_path / "m")
    path = root / "hands" / "shard-00000.parquet"
    t = pq.read_table(path)
    md = dict(t.schema.metadata)
    md[b"handfirst.schema_version"] = b"2.0"
    _rewrite_shard(path, t.replace_schema_metadata(md))
    with pytest.raises(
        SchemaMismatchError,
        match=r"hands/shard-00000\.parquet: schema version 2\.0, but this code reads version 1\.2",
    ):
        open_manifest(str(root))


def test_field_type_change_is_refused(synthetic_manifest, tmp_path):
    root = copy_manifest(synthetic_manifest, tmp_path / "m")
    path = root / "hands" / "shard-00002.parquet"
    t = pq.read_table(path)
    i = t.schema.get_field_index("crop_size")
    t = t.set_column(i, pa.field("crop_size", pa.int64()), t.column(i).cast(pa.int64()))
    _rewrite_shard(path, t)
    with pytest.raises(
        SchemaMismatchError, match=r"shard-00002\.parquet: field 'crop_size' has type int64, expected int32"
    ):
        open_manifest(str(root))


def test_missing_stats_file_is_refused(synthetic_manifest, tmp_path):
    root = copy_manifest(synthetic_manifest, tmp_path / "m")
    (root / "hands" / "_stats" / "shard-00001.json").unlink()
    with pytest.raises(MissingFileError, match=r"hands/_stats/shard-00001\.json: stats file missing"):
        open_manifest(str(root))


def test_missing_manifest_json_is_refused(synthetic_manifest, tmp_path):
    root = copy_manifest(synthetic_manifest, tmp_path / "m")
    (root / "_manifest.json").unlink()
    with pytest.raises(MissingFileError, match=r"m/_manifest\.json: _manifest\.json missing"):
        open_manifest(str(root))
    (root / "images" / "_manifest.json").unlink()
    with pytest.raises(MissingFileError, match=r"images/_manifest\.json"):
        open_manifest(str(root / "images"))


def test_stats_count_disagreement_is_refused(synthetic_manifest, tmp_path):
    root = copy_manifest(synthetic_manifest, tmp_path / "m")
    stats_path = root / "images" / "_stats" / "shard-00000.json"
    stats = json.loads(stats_path.read_text())
    stats["rows"] += 1
    stats_path.write_text(json.dumps(stats))
    with pytest.raises(
        CountMismatchError, match=r"images/shard-00000\.parquet: 4 rows, but .*shard-00000\.json says 5"
    ):
        open_manifest(str(root))


def test_shard_missing_from_disk_is_refused(synthetic_manifest, tmp_path):
    root = copy_manifest(synthetic_manifest, tmp_path / "m")
    (root / "hands" / "shard-00002.parquet").unlink()
    with pytest.raises(
        MissingFileError, match=r"hands/_stats/shard-00002\.json: stats file without its shard"
    ):
        open_manifest(str(root))
