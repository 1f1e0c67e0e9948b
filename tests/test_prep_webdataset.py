"""--format webdataset: img2dataset's tar shards, built from hagrid_mini as img2dataset lays them out."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from img2dataset_layout import FAILED_ERROR, write_webdataset

from prep.config import PrepConfig
from prep.shard import process_shard
from prep.sources import load_records, load_units
from prep.sources.units import expand_braces

# No body pose, no masks, no wrist search: the source's rows without paying for the whole pipeline
# (images without annotated keypoints still get MediaPipe Hands).
FAST = dict(
    keypoint_source="annotation",
    body_pose=False,
    mask_method="none",
    wrist_refine=False,
    pad_retry=0,
    progress=False,
)


@pytest.fixture(scope="module")
def photos(data_dir):
    return sorted((data_dir / "hagrid_mini").glob("*/*.jpg"))[::8][:5]  # 5 photos from 3 gestures


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory, photos):
    out = tmp_path_factory.mktemp("wds") / "shards"
    write_webdataset(out, photos, per_shard=3)  # 00000.tar: 3 photos (one corrupt) + 1 failed; 00001: 2 + 1
    return out


def config(input, tmp_path, **kw):
    return PrepConfig(input=str(input), out=str(tmp_path / "m"), format="webdataset", **{**FAST, **kw})


def rows(out, table="images"):
    """{source key (the id of a row without one): row}; image ids are `{unit}__{key}`."""
    return {r["source_key"] or r["image_id"]: r for r in pq.read_table(f"{out}/{table}").to_pylist()}


def test_brace_expansion_keeps_zero_padding_and_lists():
    assert list(expand_braces("s/{00008..00011}.tar")) == [f"s/{n:05d}.tar" for n in range(8, 12)]
    assert list(expand_braces("{a,b}/{1..2}.tar")) == ["a/1.tar", "a/2.tar", "b/1.tar", "b/2.tar"]
    assert list(expand_braces("plain.tar")) == ["plain.tar"]


def test_units_are_listed_without_opening_a_tar(shards_dir, tmp_path, monkeypatch):
    import tarfile

    def refuse(*a, **k):
        raise AssertionError("the driver opened a tar")

    monkeypatch.setattr(tarfile, "open", refuse)  # listing units reads no sample
    brace = load_units(config(f"{shards_dir}/{{00000..00001}}.tar", tmp_path))
    assert [u.uri for u in brace] == [str(shards_dir / "00000.tar"), str(shards_dir / "00001.tar")]
    assert all(u.count is None for u in brace)  # no sample was counted on the driver
    assert load_units(config(shards_dir, tmp_path)) == brace  # a folder of tars
    assert load_units(config(f"file://{shards_dir}/*.tar", tmp_path)) == brace  # a glob URL
    with pytest.raises(FileNotFoundError, match=r"00002\.tar"):
        load_units(config(f"{shards_dir}/{{00000..00002}}.tar", tmp_path))


def test_every_sample_is_a_row_with_its_key_url_and_caption(shards_dir, photos, tmp_path):
    # img2dataset's layout: 00000.tar holds 3 photos (the second one corrupt), 00001.tar 2; each
    # shard's .parquet also lists one failed download the tar does not hold.
    cfg = config(shards_dir, tmp_path)
    units = load_units(cfg)
    stats = [process_shard(i, [], cfg, "fp", "cfp", unit=u) for i, u in enumerate(units)]
    got = rows(cfg.out)
    assert sum(s["images"] for s in stats) == len(got) == len(photos) + 2  # 5 photos + 1 failed per tar
    ok = {k: r for k, r in got.items() if r["status"] != "error"}
    assert sorted(ok) == ["000000000", "000000002", "000010000", "000010001"]
    for key, r in ok.items():
        assert r["source_key"] == key and r["dataset"] == "webdataset"
        assert r["source_url"].startswith("https://example.org/") and r["source_caption"].startswith(
            "a person showing "
        )
        assert r["source_uri"] == f"tar://{key}.jpg::{shards_dir}/{key[:5]}.tar"
        photo = next(p for p in photos if r["source_url"].endswith(f"/{p.parent.name}/{p.name}"))
        assert r["image"] == photo.read_bytes()  # the member's bytes, stored as they were (a 512-px JPEG)
    by_id = {r["image_id"]: r for r in ok.values()}
    hands = pq.read_table(f"{cfg.out}/hands").to_pylist()  # each hand carries its image's source caption
    assert hands and all(h["source_caption"] == by_id[h["image_id"]]["source_caption"] for h in hands)
    failed = got["000000003"]
    assert (
        failed["status"] == "error"
        and failed["error"] == f"SourceRecordError: img2dataset status 'failed_to_download': {FAILED_ERROR}"
    )
    assert failed["source_url"] == "https://example.org/gone/0.jpg" and failed["source_caption"] is None
    corrupt = got["000000001"]
    assert corrupt["status"] == "error" and "Truncated File Read" in corrupt["error"]
    assert corrupt["error"].startswith(f"ImageDecodeError: tar://000000001.jpg::{shards_dir}/00000.tar")
    assert load_records(cfg)[0].data is not None  # the plain adapter expands the same samples


def test_a_truncated_tar_keeps_what_was_read_and_names_what_was_lost(shards_dir, tmp_path):
    broken = tmp_path / "in"
    broken.mkdir()
    data = (shards_dir / "00000.tar").read_bytes()
    (broken / "00000.tar").write_bytes(data[: 512 * 3 + 700])  # the first sample's .jpg cut short
    (broken / "00000.parquet").write_bytes((shards_dir / "00000.parquet").read_bytes())
    cfg = config(broken, tmp_path)
    process_shard(0, [], cfg, unit=load_units(cfg)[0])
    got = rows(cfg.out)
    assert all(r["status"] == "error" for r in got.values())
    # every sample img2dataset listed is a row, and one more row says where the tar broke off
    assert set(got) == {"000000000", "000000001", "000000002", "000000003", "00000__unreadable"}
    assert "img2dataset lists it as a success, but the tar breaks off" in got["000000002"]["error"]
    assert "tar is truncated or corrupt after" in got["00000__unreadable"]["error"]
    (broken / "00000.parquet").unlink()  # without img2dataset's sample list, the one row says it all
    cfg = config(broken, tmp_path / "again")
    process_shard(0, [], cfg, unit=load_units(cfg)[0])
    assert list(rows(cfg.out)) == ["00000__unreadable"]


def test_a_member_over_the_byte_bound_is_refused_before_reading(shards_dir, tmp_path):
    cfg = config(f"{shards_dir}/00001.tar", tmp_path, max_file_bytes=1000)
    process_shard(0, [], cfg, unit=load_units(cfg)[0])
    got = rows(cfg.out)
    assert (
        "000010000.jpg" in got["000010000"]["error"]
        and "exceeds max_file_bytes=1000" in got["000010000"]["error"]
    )


def test_limit_caps_the_samples_of_the_first_tar(shards_dir, tmp_path):
    cfg = config(shards_dir, tmp_path, limit=2)
    units = load_units(cfg)
    assert len(units) == 1 and units[0].take == 2
    process_shard(0, [], cfg, unit=units[0])
    assert sorted(rows(cfg.out)) == ["000000000", "000000001"]


def test_run_through_dask_from_a_url_brace_pattern_and_rerun_skips(shards_dir, hagrid_manifest, tmp_path):
    import prep

    out = tmp_path / "run"
    spec = f"file://{shards_dir}/{{00000..00001}}.tar"
    summary = prep.run(input=spec, out=str(out), format="webdataset", workers=1, progress=False)
    assert summary["shards"] == {"run": 2, "skipped": 0, "failed": 0}
    assert summary["manifest"]["images"] == 7 and summary["manifest"]["status_counts"]["error"] == 3
    # the real detector finds the same hands in a tar member as in the photo's own file
    folder_hands = rows(hagrid_manifest)
    got = rows(out)
    for r in got.values():
        if r["status"] != "error":
            photo = (
                r["source_url"].removeprefix("https://example.org/").removesuffix(".jpg").replace("/", "__")
            )
            assert r["num_hands"] == folder_hands[photo]["num_hands"], photo
            assert r["body_keypoints"] == folder_hands[photo]["body_keypoints"]
    again = prep.run(input=spec, out=str(out), format="webdataset", workers=1, progress=False)
    assert again["shards"] == {"run": 0, "skipped": 2, "failed": 0} and again["manifest"]["images"] == 7


def test_a_sample_list_with_a_caption_over_max_text_bytes_makes_an_error_row(tmp_path):
    from hostile_files import caption_sidecar

    from prep.sources.webdataset import tar_records

    tar = caption_sidecar(tmp_path / "s", 5000)
    (record,) = tar_records(load_units(config(tar, tmp_path))[0], config(tar, tmp_path, max_text_bytes=4096))
    assert record.data is None and record.source_caption is None
    assert "column 'caption' holds 5000 bytes, over max_text_bytes=4096" in record.error
    # a caption bomb in the sample list: refused from the page header, before it is decompressed
    tar = caption_sidecar(tmp_path / "bomb", 4 * 2**20)
    (record,) = tar_records(load_units(config(tar, tmp_path))[0], config(tar, tmp_path, max_file_bytes=2**20))
    assert "column 'caption' has a page of 4194" in record.error and record.source_caption is None


def test_a_txt_member_over_max_text_bytes_makes_an_error_row(tmp_path):
    from hostile_files import caption_sidecar

    from prep.sources.webdataset import tar_records

    tar = caption_sidecar(tmp_path / "s", 10, txt=b"y" * 5000)
    (record,) = tar_records(load_units(config(tar, tmp_path))[0], config(tar, tmp_path, max_text_bytes=4096))
    assert record.error == "tar member k.txt: 5000 bytes exceeds max_text_bytes=4096"


def test_sparse_members_are_bounded_per_sample_not_only_per_member(tmp_path):
    from hostile_files import sparse_tar

    from prep.sources.webdataset import tar_records

    tar = sparse_tar(tmp_path / "sparse.tar", 600_000)  # eight members of 600 KB, each within the bound
    cfg = config(tar, tmp_path, max_file_bytes=2**20)
    (record,) = tar_records(load_units(cfg)[0], cfg)
    assert record.data is None
    assert "sample k holds more than max_file_bytes=1048576 in all its members" in record.error


def test_a_sample_whose_json_is_nested_too_deeply_is_an_error_row_and_the_tar_goes_on(photos, tmp_path):
    import io
    import tarfile

    from prep.sources import unit_records

    deep = b"[" * 30_000 + b"]" * 30_000  # within max_text_bytes; past the JSON parser's recursion
    members = {
        "a.jpg": photos[0].read_bytes(),
        "a.json": deep,
        "b.jpg": photos[1].read_bytes(),
        "b.json": b'{"key": "b", "status": "success"}',
    }
    tar = tmp_path / "s" / "00000.tar"
    tar.parent.mkdir()
    with tarfile.open(tar, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    cfg = config(tar, tmp_path)
    a, b = unit_records(cfg, load_units(cfg)[0])
    assert a.image_id == "00000__a" and a.data is None
    assert "unreadable json" in a.error and "nested too deeply" in a.error
    assert b.image_id == "00000__b" and b.error is None and b.data == members["b.jpg"]
