"""`handfirst-manifests card`: a Hugging Face dataset card that `datasets.load_dataset` reads."""

from __future__ import annotations

import re
import shutil

import pyarrow.parquet as pq
import pytest

from manifests.card import licence_for, size_category
from manifests.cli import main
from manifests.hub import ROOT_CARD_MARK


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


@pytest.mark.parametrize("mine", ["README.md", "preview.png"])
def test_a_readme_or_preview_the_card_did_not_write_is_refused_unless_overwrite(manifest, capsys, mine):
    from PIL import Image

    if mine == "README.md":
        (manifest / mine).write_text("# my notes\n")
    else:
        Image.new("RGB", (4, 4)).save(manifest / mine)
    before = (manifest / mine).read_bytes()
    assert main(["card", str(manifest)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and f"{mine} exists and was not written by this command" in err[0]
        and "--overwrite" in err[0]
    )
    assert (manifest / mine).read_bytes() == before
    if mine == "README.md":  # nothing written
        assert not (manifest / "preview.png").exists()
    else:
        assert ROOT_CARD_MARK in (manifest / "README.md").read_text()  # still the manifest's short card
    assert main(["card", str(manifest), "--overwrite"]) == 0
    assert (manifest / mine).read_bytes() != before
    assert main(["card", str(manifest)]) == 0  # its own card and preview it replaces


def test_the_name_and_labels_are_escaped_and_the_snippet_runs_nothing(manifest, tmp_path, capsys):
    import ast

    from manifest_edits import rewrite

    label = "<img src=x onerror=alert(1)>|*x*"

    def edit(idx, images, hands):
        return [dict(r, label=label) for r in images], hands

    root = rewrite(manifest, tmp_path / "labelled", edit)
    name = 'x", "hands"); __import__("os").system("echo pwned"); ("\n# [link](http://e.org) ```'
    assert main(["card", str(root), "--name", name, "--no-preview"]) == 0
    card = (root / "README.md").read_text()
    assert not re.search(r"(?<!\\)<img", card) and "\\<img src=x onerror=alert\\(1\\)\\>\\|\\*x\\*" in card
    headings = [line for line in card.split("\n") if line.startswith("# ")]
    assert (
        len(headings) == 1
        and headings[0].startswith('# x", "hands"\\);')
        and "\\# \\[link\\]\\(http" in headings[0]
    )
    fence = card.split("\n", 1)[1].split("python\n", 1)[0].rsplit("\n", 1)[-1]
    code = card.split(fence + "python\n", 1)[1].split("\n" + fence, 1)[0]
    calls = [n for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Call)]
    assert [ast.unparse(c.func) for c in calls] == ["datasets.load_dataset"] * 2
    assert all(c.args[0].value == name for c in calls)  # the name, as a string constant
