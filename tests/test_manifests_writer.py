"""The shard writer: atomic shards, completeness markers, summaries, schema enforcement."""

import json

import pyarrow.parquet as pq
import pytest

from manifests.schema import SCHEMA_VERSION
from manifests.writer import ManifestWriter


def _image_row(i, status="ok"):
    return {
        "image_id": f"img{i}",
        "source_uri": f"/x/{i}.jpg",
        "dataset": "folder",
        "status": status,
        "num_hands": 0,
    }


def test_shard_is_complete_only_after_stats(tmp_path):
    w = ManifestWriter(str(tmp_path / "m"))
    assert not w.shard_done(0)
    w.write_shard(0, {"images": [_image_row(0), _image_row(1, "no_hands")]})
    assert w.shard_done(0) and w.done_shards() == {0}
    (tmp_path / "m" / "hands" / "_stats" / "shard-00000.json").unlink()
    assert not w.shard_done(0)  # a shard missing any table's stats is redone


def test_rewrite_replaces_without_duplicates_and_leaves_no_temp_files(tmp_path):
    w = ManifestWriter(str(tmp_path / "m"))
    for _ in range(2):
        w.write_shard(3, {"images": [_image_row(0)]})
    summary = w.finalize({"k": 1})
    assert summary["tables"]["images"]["num_rows"] == 1
    assert summary["tables"]["images"]["status_counts"] == {"ok": 1}
    assert not [p for p in (tmp_path / "m").rglob(".*") if p.is_file()]
    assert pq.read_table(tmp_path / "m" / "images").num_rows == 1
    info = json.loads((tmp_path / "m" / "images" / "_manifest.json").read_text())
    assert (
        info["schema_version"] == SCHEMA_VERSION
        and info["config"] == {"k": 1}
        and info["shards"] == {"shard-00003.parquet": 1}
    )


def test_unknown_fields_are_refused(tmp_path):
    w = ManifestWriter(str(tmp_path / "m"))
    with pytest.raises(ValueError, match="not in the schema: \\['bogus'\\]"):
        w.write_shard(0, {"images": [{**_image_row(0), "bogus": 1}]})


def test_writer_works_on_fsspec_urls():
    w = ManifestWriter("memory://handfirst-writer-test/m")
    w.write_shard(0, {"images": [_image_row(0)]})
    assert w.shard_done(0)
    assert w.finalize()["tables"]["images"]["num_rows"] == 1


def test_redo_marks_the_shard_incomplete_until_every_table_is_replaced(tmp_path, monkeypatch):
    import manifests.writer as writer_mod

    w = ManifestWriter(str(tmp_path / "m"))
    w.write_shard(0, {"images": [_image_row(0)]})
    real = writer_mod.atomic_write_bytes
    calls = []

    def crash_on_second_table(fs, path, data):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("worker died")
        return real(fs, path, data)

    monkeypatch.setattr(writer_mod, "atomic_write_bytes", crash_on_second_table)
    with pytest.raises(OSError, match="worker died"):
        w.write_shard(0, {"images": [_image_row(1), _image_row(2)]})
    assert not w.shard_done(0)  # half-replaced shard is redone by the next run, never read as complete


def test_a_schema_error_leaves_a_complete_shard_untouched(tmp_path):
    w = ManifestWriter(str(tmp_path / "m"))
    w.write_shard(0, {"images": [_image_row(0)]})
    with pytest.raises(ValueError, match="not in the schema"):
        w.write_shard(0, {"images": [{**_image_row(5), "bogus": 1}]})
    assert w.shard_done(0)
    assert pq.read_table(tmp_path / "m" / "images").column("image_id").to_pylist() == ["img0"]
