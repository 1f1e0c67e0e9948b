"""`handfirst-manifests card`: a Hugging Face dataset card that `datasets.load_dataset` reads."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq
import pytest

from manifests.card import licence_for, size_category
from manifests.cli import main


@pytest.fixture()
def manifest(tmp_path, synthetic_manifest):
    root = tmp_path / "hand-set"
    shutil.copytree(synthetic_manifest, root)
    return root


def test_the_card_loads_with_datasets_and_keeps_the_manifest_valid(manifest, capsys, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")

    assert main(["card", str(manifest), "--license", "cc-by-4.0"]) == 0
    assert f"wrote {manifest}/README.md" in capsys.readouterr().out
    card = (manifest / "README.md").read_text()
    assert card.startswith('---\npretty_name: "hand-set"\nlicense: "cc-by-4.0"\n')
    assert (manifest / "preview.png").stat().st_size > 1000 and "](preview.png)" in card

    hands_rows = pq.read_table(manifest / "hands").num_rows
    images_rows = pq.read_table(manifest / "images", columns=["image_id"]).num_rows
    hands = datasets.load_dataset(str(manifest), split="train")  # the default config is hands
    assert hands.num_rows == hands_rows and "crop_keypoints" in hands.column_names
    images = datasets.load_dataset(str(manifest), "images", split="train")
    assert images.num_rows == images_rows and "image_id" in images.column_names
    assert f"- images: {images_rows} rows" in card and f"- hands: {hands_rows} rows" in card
    assert "| `crop_keypoints` |" in card and "## How it was made" in card

    assert main(["validate", str(manifest), "--no-decode"]) == 0  # the card's files are not shards


def test_a_table_directory_gets_no_card(manifest, capsys):
    assert main(["card", str(manifest / "hands"), "--no-preview"]) == 1
    assert "a card describes a manifest root" in capsys.readouterr().err
    assert not (manifest / "hands" / "README.md").exists()


def test_licence_and_size_metadata():
    assert licence_for(["hagrid"], None)["license"] == "other"
    assert licence_for(["hagrid", "folder"], None)["license"] == "unknown"
    assert licence_for(["folder"], "mit") == {"license": "mit", "text": "mit"}
    assert [size_category(n) for n in (0, 999, 1000, 550_000, 10**9)] == [
        "n<1K",
        "n<1K",
        "1K<n<10K",
        "100K<n<1M",
        "n>100M",
    ]
