"""Build img2dataset's two output layouts from real photos, as img2dataset writes them.

webdataset (`--output_format webdataset`): per shard `{shard:05d}.tar` holding, for each downloaded
sample in order, `{key}.jpg`, `{key}.txt` (caption) and `{key}.json` (its metadata); beside it
`{shard:05d}.parquet` listing every sample, failed downloads included (their image is not in the
tar), and `{shard:05d}_stats.json`. parquet (`--output_format parquet`): per shard `{shard:05d}.parquet`
with the image bytes in a `jpg` column (null for a failed sample) next to the metadata columns,
written in row groups of 100 rows by img2dataset's buffered writer (smaller here, to get several).
Keys are the shard number and the sample's position, zero padded (`000010002`: shard 1, sample 2).

Each shard gets one failed sample (status `failed_to_download`) after its photos, and the sample
`corrupt_at` (shard 0) holds a JPEG cut off after its header.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

FAILED_ERROR = "HTTP Error 404: Not Found"


def _key(shard: int, i: int) -> str:
    return f"{shard:05d}{i:04d}"


def samples(photos: list[Path], per_shard: int, corrupt_at: int = 1) -> list[list[dict]]:
    """Per shard, img2dataset's sample dicts: key, url, caption, status, error_message, jpg bytes, size."""
    from PIL import Image

    shards = []
    for s, start in enumerate(range(0, len(photos), per_shard)):
        rows = []
        for i, photo in enumerate(photos[start : start + per_shard]):
            data = photo.read_bytes()
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
            if s == 0 and i == corrupt_at:
                data = data[:600]  # header, then nothing: a corrupt member
            rows.append(
                dict(
                    key=_key(s, i),
                    url=f"https://example.org/{photo.parent.name}/{photo.name}",
                    caption=f"a person showing {photo.parent.name}",
                    status="success",
                    error_message=None,
                    jpg=data,
                    width=w,
                    height=h,
                    original_width=w,
                    original_height=h,
                )
            )
        n = len(rows)
        rows.append(
            dict(
                key=_key(s, n),
                url=f"https://example.org/gone/{s}.jpg",
                caption="a lost photo",
                status="failed_to_download",
                error_message=FAILED_ERROR,
                jpg=None,
                width=None,
                height=None,
                original_width=None,
                original_height=None,
            )
        )
        shards.append(rows)
    return shards


META = ("url", "key", "status", "error_message", "width", "height", "original_width", "original_height")


def _meta_table(rows: list[dict], with_image: bool) -> pa.Table:
    cols = {"key": [r["key"] for r in rows]}
    if with_image:
        cols["jpg"] = pa.array([r["jpg"] for r in rows], pa.binary())
    cols["txt"] = [r["caption"] if r["jpg"] is not None else None for r in rows]
    for name in META:
        if name != "key":
            cols[name] = pa.array(
                [r[name] for r in rows], pa.int64() if "width" in name or "height" in name else pa.string()
            )
    return pa.table(cols)


def _stats(out: Path, shard: int, rows: list[dict]) -> None:
    ok = sum(r["status"] == "success" for r in rows)
    (out / f"{shard:05d}_stats.json").write_text(
        json.dumps(
            {"count": len(rows), "successes": ok, "failed_to_download": len(rows) - ok, "status_dict": {}}
        )
    )


def write_webdataset(out: Path, photos: list[Path], per_shard: int = 3) -> list[list[dict]]:
    out.mkdir(parents=True, exist_ok=True)
    shards = samples(photos, per_shard)
    for s, rows in enumerate(shards):
        with tarfile.open(out / f"{s:05d}.tar", "w") as tar:
            for r in rows:
                if r["jpg"] is None:
                    continue  # img2dataset stores only downloaded samples in the tar
                meta = {k: r[k] for k in META}
                meta["caption"] = r["caption"]
                for ext, payload in (
                    ("jpg", r["jpg"]),
                    ("txt", r["caption"].encode()),
                    ("json", json.dumps(meta, indent=4).encode()),
                ):
                    info = tarfile.TarInfo(f"{r['key']}.{ext}")
                    info.size = len(payload)
                    info.mtime = 0
                    tar.addfile(info, io.BytesIO(payload))
        pq.write_table(_meta_table(rows, with_image=False), out / f"{s:05d}.parquet")
        _stats(out, s, rows)
    return shards


def write_parquet(
    out: Path, photos: list[Path], per_shard: int = 3, row_group_size: int = 2, image_column: str = "jpg"
) -> list[list[dict]]:
    out.mkdir(parents=True, exist_ok=True)
    shards = samples(photos, per_shard)
    for s, rows in enumerate(shards):
        table = _meta_table(rows, with_image=True).rename_columns(
            [image_column if c == "jpg" else c for c in _meta_table(rows, with_image=True).column_names]
        )
        pq.write_table(table, out / f"{s:05d}.parquet", row_group_size=row_group_size)
        _stats(out, s, rows)
    return shards
