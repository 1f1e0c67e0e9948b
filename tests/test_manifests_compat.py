"""The manifests load unchanged in the three common readers (hidden `_stats/` and `_manifest.json` ignored)."""

import pyarrow.parquet as pq
import pytest

from manifests.reader import open_manifest
from manifests.schema import HANDS_SCHEMA, IMAGES_SCHEMA, SCHEMA_VERSION


def test_pyarrow_read_table(synthetic_manifest):
    for table, schema in (("images", IMAGES_SCHEMA), ("hands", HANDS_SCHEMA)):
        t = pq.read_table(str(synthetic_manifest / table))
        assert t.column_names == schema.names
        assert t.num_rows == open_manifest(str(synthetic_manifest)).table(table).num_rows
        assert t.schema.metadata[b"handfirst.schema_version"] == SCHEMA_VERSION.encode()


def test_dask_read_parquet(synthetic_manifest):
    import dask.dataframe as dd

    df = dd.read_parquet(str(synthetic_manifest / "hands"))
    assert list(df.columns) == HANDS_SCHEMA.names
    pdf = df[["hand_id", "label", "hand_size"]].compute()
    assert len(pdf) == 15 and pdf["hand_id"].is_unique
    images = dd.read_parquet(str(synthetic_manifest / "images"), columns=["image_id", "status"]).compute()
    assert images["status"].value_counts().to_dict() == {"ok": 10, "no_hands": 2}


def test_datasets_load_dataset(synthetic_manifest, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets

    files = sorted(str(p) for p in (synthetic_manifest / "hands").glob("*.parquet"))
    d = datasets.load_dataset("parquet", data_files={"train": files}, split="train", cache_dir=str(tmp_path))
    assert d.num_rows == 15 and d.column_names == HANDS_SCHEMA.names
    row = d[0]
    assert (
        isinstance(row["crop"], bytes) and len(row["keypoints"]) == 21 and row["heatmap_shape"] == [21, 8, 8]
    )


def test_a_manifest_of_schema_1_0_reads_with_the_fields_added_since_as_nulls(synthetic_manifest, tmp_path):
    import shutil

    from manifests.schema import FIELDS_ADDED
    from manifests.validate import validate_manifest

    old = tmp_path / "old"
    shutil.copytree(synthetic_manifest, old)
    added = FIELDS_ADDED[(1, 1)]["images"]
    for path in (old / "images").glob("*.parquet"):  # rewrite each shard as a 1.0 writer made it
        t = pq.read_table(path)
        t = t.drop_columns(list(added))
        md = {**t.schema.metadata, b"handfirst.schema_version": b"1.0"}
        pq.write_table(t.replace_schema_metadata(md), path)
    m = open_manifest(str(old))
    images = m.table("images")
    assert images.read().column_names == IMAGES_SCHEMA.names
    assert images.read(["image_id", "source_key"])["source_key"].null_count == images.num_rows
    unit = images.units()[0]
    assert images.read_unit(unit, ["source_url", "status"])["source_url"].null_count == unit.num_rows
    assert validate_manifest(str(old)) == []
    for path in (old / "hands").glob(
        "*.parquet"
    ):  # a field missing from a shard of the current version is refused
        t = pq.read_table(path).drop_columns(["caption"])
        pq.write_table(t.replace_schema_metadata(t.schema.metadata), path)
    with pytest.raises(Exception, match="field 'caption' is missing"):
        open_manifest(str(old))


def test_hands_of_schema_1_1_read_without_a_source_caption(synthetic_manifest, tmp_path):
    import shutil

    from manifests.datasets import HandCropDataset
    from manifests.validate import validate_manifest

    old = tmp_path / "old"
    shutil.copytree(synthetic_manifest, old)
    for path in (old / "hands").glob("*.parquet"):  # each hands shard as a 1.1 writer made it
        t = pq.read_table(path).drop_columns(["source_caption"])
        pq.write_table(
            t.replace_schema_metadata({**t.schema.metadata, b"handfirst.schema_version": b"1.1"}), path
        )
    hands = open_manifest(str(old)).hands
    assert hands.read(["hand_id", "source_caption"])["source_caption"].null_count == hands.num_rows == 15
    assert validate_manifest(str(old)) == []
    sample = next(iter(HandCropDataset(str(old), caption="source")))
    assert sample["caption"].startswith("a hand showing")  # no source caption: the generated one
