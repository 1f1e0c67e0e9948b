"""A manifest opens in a few lines in pandas, pyarrow, polars, DuckDB, Hugging Face datasets and torch:
one table at a time, rows that decode whichever library gave them, a card without local paths."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from manifest_edits import rewrite

import manifests
from manifests.card import write_card
from manifests.cli import main
from manifests.datasets import BodyDataset, EmptySelectionError, HandCropDataset, MixtureDataset
from manifests.decode import decode_hand, decode_image_row
from manifests.hub import CARD_FILE, ROOT_CARD_MARK, table_files, write_root_card
from manifests.reader import open_manifest
from manifests.schema import FIELDS_ADDED
from manifests.writer import ManifestWriter


@pytest.fixture()
def manifest(tmp_path, synthetic_manifest):
    return shutil.copytree(synthetic_manifest, tmp_path / "m")


@pytest.fixture()
def offline_datasets(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    return pytest.importorskip("datasets")


def _same_hand(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_the_root_is_refused_by_pandas_and_pyarrow_instead_of_mixing_the_tables(manifest):
    hands, images = open_manifest(str(manifest)).hands.num_rows, open_manifest(str(manifest)).images.num_rows
    with pytest.raises(Exception, match="README.md"):
        pd.read_parquet(manifest)  # both tables under one schema would be hands + images rows
    with pytest.raises(Exception, match="README.md"):
        pq.read_table(manifest)
    assert len(pd.read_parquet(manifest / "hands")) == hands
    files = table_files(str(manifest), "hands")
    assert files == sorted(str(p) for p in (manifest / "hands").glob("shard-*.parquet"))
    assert manifests.table_files(str(manifest), "hands") == files
    assert len(pd.read_parquet(files)) == hands and pq.read_table(files).num_rows == hands
    assert len(pd.read_parquet(table_files(str(manifest), "images"), columns=["image_id"])) == images
    with pytest.raises(ValueError, match="unknown manifest table 'hand'"):
        table_files(str(manifest), "hand")


def test_polars_and_duckdb_read_a_table_by_its_glob_or_its_files(manifest):
    hands = open_manifest(str(manifest)).hands.num_rows
    glob = f"{manifest}/hands/*.parquet"
    read = []
    try:
        import polars as pl

        read.append("polars")
        assert pl.read_parquet(glob).height == hands
        assert pl.read_parquet(table_files(str(manifest), "hands")).height == hands
        row = pl.read_parquet(glob).row(0, named=True)
        assert decode_hand(row)["crop"].shape == (64, 64, 3)
    except ImportError:
        pass
    try:
        import duckdb

        read.append("duckdb")
        assert duckdb.sql(f"select count(*) from read_parquet('{glob}')").fetchall() == [(hands,)]
        files = {"files": table_files(str(manifest), "hands")}
        assert duckdb.sql("select count(*) from read_parquet($files)", params=files).fetchall() == [(hands,)]
    except ImportError:
        pass
    if not read:
        pytest.skip("neither polars nor duckdb is installed")


def test_decode_takes_pandas_pyarrow_and_hf_rows_alike(manifest, offline_datasets):
    datasets = offline_datasets
    arrow_rows = pq.read_table(manifest / "hands").to_pylist()
    want = [decode_hand(r) for r in arrow_rows]
    df = pd.read_parquet(manifest / "hands")
    assert isinstance(df.iloc[0]["keypoints"], np.ndarray)  # an object array of arrays
    for i in range(3):
        _same_hand(decode_hand(df.iloc[i].to_dict()), want[i])
        _same_hand(decode_hand(df.iloc[i]), want[i])  # the Series itself
    hf = datasets.load_dataset(str(manifest), split="train")
    assert type(hf[0]["crop"]).__module__.startswith("PIL.")  # an Image feature: a picture
    for i in range(3):
        _same_hand(decode_hand(hf[i]), want[i])
    raw = hf.cast_column("crop", datasets.Image(decode=False)).cast_column(
        "mask", datasets.Image(decode=False)
    )
    assert isinstance(raw[0]["crop"], dict)
    _same_hand(decode_hand(raw[0]), want[0])

    images = pd.read_parquet(manifest / "images")
    want_images = [decode_image_row(r) for r in pq.read_table(manifest / "images").to_pylist()[:2]]
    hf_images = datasets.load_dataset(str(manifest), "images", split="train")
    for got in (decode_image_row(images.iloc[0].to_dict()), decode_image_row(hf_images[0])):
        _same_hand(got, want_images[0])


def test_a_pandas_null_number_reads_as_null_and_a_fractional_size_is_refused(manifest):
    row = pd.read_parquet(manifest / "hands").iloc[0].to_dict()
    row["crop_size"] = float("nan")  # a null int column in pandas is a float NaN
    assert decode_hand(row)["crop"].shape == (64, 64, 3)
    row["crop_size"] = 64.5
    with pytest.raises(Exception, match="crop_size is 64.5, not a whole number"):
        decode_hand(row)


def test_load_dataset_reads_each_table_with_pictures_without_running_card(manifest, offline_datasets):
    datasets = offline_datasets
    m = open_manifest(str(manifest))
    hands = datasets.load_dataset(str(manifest), split="train")
    assert hands.num_rows == m.hands.num_rows and hands.column_names == m.hands.schema.names
    assert isinstance(hands.features["crop"], datasets.Image)
    assert isinstance(hands.features["mask"], datasets.Image)
    assert hands.features["heatmap"] == datasets.Value("binary")
    assert hands[0]["crop"].size == (64, 64) and hands[0]["mask"].mode == "L"
    images = datasets.load_dataset(str(manifest), "images", split="train")
    assert images.num_rows == m.images.num_rows
    assert isinstance(images.features["image"], datasets.Image)
    assert isinstance(images.features["hands_mask"], datasets.Image)
    assert images[0]["image"].size == (256, 192)


def test_the_card_of_an_older_manifest_declares_only_its_columns(manifest, offline_datasets):
    datasets = offline_datasets
    added = FIELDS_ADDED[(1, 1)]["images"]
    for path in (manifest / "images").glob("*.parquet"):  # shards as a 1.0 writer made them
        t = pq.read_table(path).drop_columns(list(added))
        pq.write_table(
            t.replace_schema_metadata({**t.schema.metadata, b"handfirst.schema_version": b"1.0"}), path
        )
    (manifest / CARD_FILE).unlink()  # written before the manifest carried its card
    with pytest.raises(Exception):  # noqa: B017 - the library's own error for two schemas in one split
        datasets.load_dataset(str(manifest), split="train")
    assert main(["card", str(manifest), "--no-preview"]) == 0  # the migration the docs name
    images = datasets.load_dataset(str(manifest), "images", split="train")
    assert images.num_rows == 12 and "source_key" not in images.column_names
    assert write_root_card(str(manifest)) is None  # the full card is kept
    assert open_manifest(str(manifest)).images.read(["source_key"])["source_key"].null_count == 12


def test_finalize_keeps_a_readme_it_did_not_write_and_refreshes_its_own(manifest):
    writer = ManifestWriter(str(manifest))
    card = manifest / CARD_FILE
    assert ROOT_CARD_MARK in card.read_text()
    card.write_text(card.read_text().replace("# A handfirst manifest", "# stale"))
    writer.finalize({})
    assert "# A handfirst manifest" in card.read_text()
    card.write_text("# my own notes\n")
    writer.finalize({})
    assert card.read_text() == "# my own notes\n"


def test_the_card_shows_no_local_path(manifest, tmp_path):
    config = {
        "input": str(tmp_path / "photos" / "hagrid_mini"),
        "out": str(manifest),
        "preview": str(manifest / "sheet.png"),
        "sam_checkpoint": "/home/someone/weights/sam_vit_b.pth",
        "crop_size": 64,
        "format": "folder",
    }
    info = json.loads((manifest / "_manifest.json").read_text())
    (manifest / "_manifest.json").write_text(json.dumps({**info, "config": config}))
    write_card(str(manifest), preview=False)
    text = (manifest / CARD_FILE).read_text()
    assert str(tmp_path) not in text and "/home/someone" not in text
    shown = json.loads(text.split("```json\n", 1)[1].split("\n```", 1)[0])
    assert shown == {
        "input": "hagrid_mini",
        "out": ".",
        "preview": "sheet.png",
        "sam_checkpoint": "sam_vit_b.pth",
        "crop_size": 64,
        "format": "folder",
    }
    assert 'dtype: "image"' in text and ROOT_CARD_MARK not in text  # the full card replaced the short one


def _without_splits(src, dst):
    def edit(_, images, hands):
        for row in images + hands:
            row["split"] = None
        return images, hands

    return rewrite(src, dst, edit)


def test_a_split_the_manifest_lacks_is_an_error_not_an_empty_epoch(synthetic_manifest, tmp_path):
    m = _without_splits(synthetic_manifest, tmp_path / "nosplit")
    with pytest.raises(EmptySelectionError, match=r"rows per split: \{'none': 15\}; its rows carry no split"):
        HandCropDataset(str(m), split="train")
    with pytest.raises(EmptySelectionError, match="no images row passes"):
        BodyDataset(str(m), split="val", resolution=64)
    with pytest.raises(EmptySelectionError, match=r"'label': 'nope'.*'train': 14, 'val': 1"):
        HandCropDataset(str(synthetic_manifest), label="nope")
    assert len(list(HandCropDataset(str(m)))) == 15


def test_len_and_transform(synthetic_manifest):
    full = HandCropDataset(str(synthetic_manifest), shuffle=False)
    assert len(full) == 15 and len(list(full)) == 15
    train = HandCropDataset(str(synthetic_manifest), split="train", shuffle=False)
    assert len(train) == len(list(train)) == 14
    halves = [HandCropDataset(str(synthetic_manifest), rank=r, world_size=2) for r in (0, 1)]
    assert sum(len(h) for h in halves) == 15 and all(len(h) for h in halves)
    flipped = HandCropDataset(
        str(synthetic_manifest),
        shuffle=False,
        transform=lambda s: {**s, "pixel_values": s["pixel_values"].flip(-1)},
    )
    for a, b in zip(full, flipped):
        assert (a["pixel_values"].flip(-1) == b["pixel_values"]).all() and a["hand_id"] == b["hand_id"]
    bodies = BodyDataset(str(synthetic_manifest), resolution=64, transform=lambda s: s["image_id"])
    assert len(bodies) == 10 and sorted(bodies) == sorted(
        r["image_id"] for r in pq.read_table(synthetic_manifest / "images").to_pylist() if r["status"] == "ok"
    )
    mixed = MixtureDataset([full, train])
    assert len(mixed) == 29 and bool(MixtureDataset([train]))
    with pytest.raises(TypeError, match="transform must be callable"):
        HandCropDataset(str(synthetic_manifest), transform="flip")
