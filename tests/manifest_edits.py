"""Helpers for manifest tests: copy a manifest and rewrite it through the real writer with edits."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from manifests.writer import ManifestWriter


def copy_manifest(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def shard_tables(root: Path) -> list[tuple[int, pa.Table, pa.Table]]:
    """(shard index, images table, hands table) of every shard, in order."""
    out = []
    for p in sorted((root / "images").glob("shard-*.parquet")):
        idx = int(p.stem.split("-")[1])
        out.append((idx, pq.read_table(p), pq.read_table(root / "hands" / p.name)))
    return out


def rewrite(src: Path, dst: Path, edit) -> Path:
    """Write a new manifest at `dst` whose shards are `edit(index, images_rows, hands_rows)` of `src`'s.

    `edit` gets lists of row dicts and returns (images_rows, hands_rows); stats and `_manifest.json`
    are written by the real writer, so they agree with the edited rows.
    """
    writer = ManifestWriter(str(dst), row_group_size=4)
    for idx, images, hands in shard_tables(src):
        new_images, new_hands = edit(idx, images.to_pylist(), hands.to_pylist())
        writer.write_shard(idx, {"images": new_images, "hands": new_hands})
    writer.finalize({"source": "edited"})
    return dst
