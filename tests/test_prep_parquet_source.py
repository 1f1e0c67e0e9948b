"""--format parquet: img2dataset's Parquet output (image bytes in `jpg`), or any table of image bytes."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from img2dataset_layout import FAILED_ERROR, write_parquet

from prep.cli import main as prep_main
from prep.config import PrepConfig
from prep.shard import process_shard
from prep.sources import load_units

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
    return sorted((data_dir / "hagrid_mini").glob("*/*.jpg"))[::8][:5]


@pytest.fixture(scope="module")
def parquet_dir(tmp_path_factory, photos):
    out = tmp_path_factory.mktemp("i2d_parquet") / "shards"
    write_parquet(out, photos, per_shard=3, row_group_size=2)  # 00000: 4 rows (2 groups), 00001: 3 rows (2)
    return out


def config(input, tmp_path, **kw):
    return PrepConfig(input=str(input), out=str(tmp_path / "m"), format="parquet", **{**FAST, **kw})


def rows(out):
    """{source key (the id of a row without one): row}; image ids are `{unit}__{key}`."""
    return {r["source_key"] or r["image_id"]: r for r in pq.read_table(f"{out}/images").to_pylist()}


def test_units_are_row_groups_read_from_footers(parquet_dir, tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the driver read rows")

    for name in ("read_row_group", "read", "iter_batches"):  # listing units reads footers only
        monkeypatch.setattr(pq.ParquetFile, name, refuse)
    units = load_units(config(parquet_dir, tmp_path))
    assert [(u.uri.rsplit("/", 1)[1], u.part, u.count, u.first) for u in units] == [
        ("00000.parquet", 0, 2, 0),
        ("00000.parquet", 1, 2, 2),
        ("00001.parquet", 0, 2, 0),
        ("00001.parquet", 1, 1, 2),
    ]
    assert load_units(config(f"{parquet_dir}/{{00000..00001}}.parquet", tmp_path)) == units
    capped = load_units(config(parquet_dir, tmp_path, limit=3))  # --limit: the first 3 rows
    assert [(u.part, u.count, u.take) for u in capped] == [(0, 2, None), (1, 2, 1)]


def test_every_row_is_an_images_row_with_its_key_url_and_caption(parquet_dir, photos, tmp_path):
    cfg = config(parquet_dir, tmp_path)
    for i, unit in enumerate(load_units(cfg)):
        process_shard(i, [], cfg, unit=unit)
    got = rows(cfg.out)
    assert len(got) == 7  # 5 photos + one failed download per file
    ok = sorted(k for k, r in got.items() if r["status"] != "error")
    assert ok == ["000000000", "000000002", "000010000", "000010001"]
    for key in ok:
        r = got[key]
        assert r["source_key"] == key and r["dataset"] == "parquet"
        assert r["source_caption"].startswith("a person showing ") and r["source_url"].startswith("https://")
        photo = next(p for p in photos if r["source_url"].endswith(f"/{p.parent.name}/{p.name}"))
        assert r["image"] == photo.read_bytes() and r["width"] > 0
    assert got["000000000"]["source_uri"] == f"{parquet_dir}/00000.parquet#row=0"
    failed = got["000000003"]
    assert failed["error"] == f"SourceRecordError: img2dataset status 'failed_to_download': {FAILED_ERROR}"
    assert failed["source_uri"].endswith("00000.parquet#row=3")
    assert "Truncated File Read" in got["000000001"]["error"]  # the corrupt cell, by the image decoder


def test_any_table_with_a_named_image_column(photos, tmp_path):
    src = tmp_path / "plain.parquet"
    bound = max(len(p.read_bytes()) for p in photos[:2])
    cells = [p.read_bytes() for p in photos[:2]] + [None, b"x" * (bound + 1)]
    # One row per row group: a page is decompressed whole, so a page over the bound refuses its row group
    pq.write_table(pa.table({"image_bytes": pa.array(cells, pa.binary())}), src, row_group_size=1)
    cfg = config(src, tmp_path, parquet_image_column="image_bytes", max_file_bytes=bound)
    for i, unit in enumerate(load_units(cfg)):
        process_shard(i, [], cfg, unit=unit)
    got = rows(cfg.out)
    assert sorted(got) == [f"plain_rg{i}__row-00000{i}" for i in range(4)]  # no key column: the position
    assert (
        got["plain_rg0__row-000000"]["status"] != "error"
        and got["plain_rg0__row-000000"]["source_key"] is None
    )
    assert "column 'image_bytes' holds no image bytes" in got["plain_rg2__row-000002"]["error"]
    assert (
        f"{bound + 1} bytes exceeds max_file_bytes={bound}" in got["plain_rg3__row-000003"]["error"]
    )  # the byte bound holds


def test_a_missing_image_column_is_one_line_at_the_cli(parquet_dir, tmp_path, capsys):
    code = prep_main(
        [
            "run",
            "--format",
            "parquet",
            "--input",
            str(parquet_dir),
            "--out",
            str(tmp_path / "m"),
            "--parquet-image-column",
            "png",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1
    assert "00000.parquet: no image column 'png' (--parquet-image-column)" in err[0] and "'jpg'" in err[0]
    assert not (tmp_path / "m" / "images").exists()


def test_a_cell_bomb_is_refused_from_its_page_header_before_it_is_decompressed(tmp_path):
    from hostile_files import parquet_cell_bomb

    from prep.sources.parquet import parquet_records

    src = parquet_cell_bomb(tmp_path / "bomb.parquet", 4 * 2**20)  # 4 MiB of zeros in a few KB
    cfg = config(src, tmp_path, max_file_bytes=2**20)
    got = {r.image_id: r for r in parquet_records(load_units(cfg)[0], cfg)}
    assert sorted(got) == ["a", "b"]  # the keys are still read: only the oversized column is not
    for r in got.values():
        assert r.data is None and "column 'jpg' has a page of 4194" in r.error
        assert "over max_file_bytes=1048576" in r.error


def test_captions_and_metadata_over_max_text_bytes_are_error_rows(tmp_path):
    from hostile_files import JPEG_START

    from prep.sources.parquet import parquet_records

    src = tmp_path / "long.parquet"
    table = pa.table({"key": ["a", "b"], "jpg": [JPEG_START] * 2, "caption": ["x" * 5000, "short"]})
    pq.write_table(table, src)
    cfg = config(src, tmp_path, max_text_bytes=4096)
    got = {r.image_id: r for r in parquet_records(load_units(cfg)[0], cfg)}
    assert got["a"].error == "row 0: column 'caption' holds 5000 bytes, over max_text_bytes=4096"
    assert got["a"].source_caption is None and got["a"].data is None
    assert got["b"].error is None and got["b"].source_caption == "short"
