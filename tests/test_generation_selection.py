"""`generation.selection`: the one row selection of `generate --from-manifest` and `evaluate`."""

import re

import pytest

from generation.selection import SelectionError, iter_selected, select_rows
from manifests.reader import open_manifest


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    from manifests.synthetic import make_synthetic_manifest

    # 20 images in 10 row groups of 2; split train for i % 10 < 8, else val; every 5th has no hands.
    root = make_synthetic_manifest(
        str(tmp_path_factory.mktemp("sel") / "m"), num_images=20, shard_size=4, row_group_size=2
    )
    return open_manifest(root)


def _reference(m, split, statuses, limit):
    rows = m.read("images", ["image_id", "split", "status"]).to_pylist()  # manifest order
    rows = [r for r in rows if r["status"] in statuses and split in (None, "all", r["split"])]
    return [r["image_id"] for r in rows][:limit]


@pytest.mark.parametrize("split", ["train", "val", "all", None])
@pytest.mark.parametrize("statuses", [("ok",), ("ok", "no_hands")])
@pytest.mark.parametrize("limit", [None, 1, 3, 7])
def test_selection_matches_a_plain_filter_in_manifest_order(manifest, split, statuses, limit):
    got = [r["image_id"] for r in select_rows(manifest, ["image_id"], split, statuses, limit)]
    assert got == _reference(manifest, split, statuses, limit) and got


def test_reading_stops_at_the_row_group_that_fills_the_limit(manifest, monkeypatch):
    table = manifest.images
    read = []
    real = table.read_unit
    monkeypatch.setattr(
        table, "read_unit", lambda unit, *a, **k: read.append(unit.key) or real(unit, *a, **k)
    )
    units = table.units()
    assert len(units) == 10
    parts = list(iter_selected(manifest, ["image_id", "status"], "all", ("ok",), limit=3))
    # Row groups of 2: ok rows 0, 1 | 2, 3 -> 3 rows after the second row group; nothing after it is read.
    assert [len(rows) for _, rows in parts] == [2, 1] and read == [u.key for u in units[:2]]
    read.clear()
    assert sum(len(r) for _, r in iter_selected(manifest, ["image_id"], "all", ("ok",))) == 16
    assert len(read) == 10


def test_clear_errors(manifest):
    per_split = {s: len(_reference(manifest, s, ("ok",), None)) for s in ("train", "val")}
    message = (
        f"no images with status ok in split 'test'; such images per split: {per_split} (--split all takes"
    )
    with pytest.raises(SelectionError, match=re.escape(message)):
        select_rows(manifest, ["image_id"], "test")
    with pytest.raises(SelectionError, match="limit must be at least 1"):
        select_rows(manifest, ["image_id"], "all", limit=0)


def test_the_default_split_is_test_or_every_row_when_the_manifest_has_no_splits(manifest, tmp_path, caplog):
    from pathlib import Path

    from manifest_edits import rewrite

    from generation.selection import DEFAULT_SPLIT

    # With splits, the default is the test split: this manifest has none, so nothing is selected.
    with pytest.raises(SelectionError, match="in split 'test'"):
        select_rows(manifest, ["image_id"], DEFAULT_SPLIT)

    def drop_splits(_, images, hands):
        return [{**r, "split": None} for r in images], [{**h, "split": None} for h in hands]

    splitless = open_manifest(str(rewrite(Path(manifest.url), tmp_path / "nosplit", drop_splits)))
    with caplog.at_level("WARNING", logger="generation.selection"):
        got = [r["image_id"] for r in select_rows(splitless, ["image_id"], DEFAULT_SPLIT)]
    assert got == _reference(splitless, None, ("ok",), None) and len(got) == 16
    assert "the images carry no split, so every row is selected" in caplog.text
