"""The manifests load unchanged in the three common readers (hidden `_stats/` and `_manifest.json` ignored)."""

import pyarrow.parquet as pq

from manifests.reader import open_manifest
from manifests.schema import HANDS_SCHEMA, IMAGES_SCHEMA


def test_pyarrow_read_table(synthetic_manifest):
    for table, schema in (("images", IMAGES_SCHEMA), ("hands", HANDS_SCHEMA)):
        t = pq.read_table(str(synthetic_manifest / table))
        assert t.column_names == schema.names
        assert t.num_rows == open_manifest(str(synthetic_manifest)).table(table).num_rows
        assert t.schema.metadata[b"handfirst.schema_version"] == b"1.0"


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
