"""Shard planning and resume: which shards a run must (re)do.

A shard is `shard_size` consecutive records of the source's deterministic order, so shard N always
holds the same images. Each written shard's stats carry a fingerprint of its image ids and of the
settings that shape its rows; a rerun skips a shard whose stats exist and match, and redoes one
without stats (its worker died before finishing) or written from other images or settings. Shard
files are replaced atomically under the same name, so a redo never leaves duplicate rows.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

from manifests.storage import join, read_json
from manifests.writer import STATS_DIR, ManifestWriter, shard_name

from .config import PrepConfig
from .records import ImageRecord

logger = logging.getLogger(__name__)


@dataclass
class Shard:
    index: int
    records: list[ImageRecord] = field(repr=False)
    fingerprint: str = ""

    @property
    def num_images(self) -> int:
        return len(self.records)


def shard_fingerprint(records: list[ImageRecord], config: PrepConfig) -> str:
    h = hashlib.sha1(config.fingerprint().encode())
    for r in records:
        h.update(b"\0" + r.image_id.encode() + b"\0" + r.source_uri.encode())
    return h.hexdigest()[:16]


def plan_shards(records: list[ImageRecord], config: PrepConfig) -> list[Shard]:
    if config.shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {config.shard_size}")
    n = config.shard_size
    shards = []
    for index, start in enumerate(range(0, len(records), n)):
        chunk = records[start : start + n]
        shards.append(Shard(index, chunk, shard_fingerprint(chunk, config)))
    return shards


def read_shard_stats(writer: ManifestWriter, index: int) -> dict:
    return read_json(writer.fs, join(writer.path, "images", STATS_DIR, shard_name(index) + ".json"))


def pending_shards(shards: list[Shard], writer: ManifestWriter) -> tuple[list[Shard], dict[int, dict]]:
    """(shards to run, {index: stats} of complete shards to skip).

    Raises ValueError when the output holds complete shards beyond this plan (it was written from a
    larger input or --limit): mixing them in would leave rows this run does not account for.
    """
    done = writer.done_shards()
    stale = sorted(done - {s.index for s in shards})
    if stale:
        raise ValueError(
            f"{writer.root} already holds shards {shard_name(stale[0])}..{shard_name(stale[-1])} that this run "
            f"does not plan ({len(shards)} shards); it was written from a larger input or --limit. "
            "Use a fresh --out, or delete that folder."
        )
    todo, skipped = [], {}
    for s in shards:
        if s.index in done:
            stats = read_shard_stats(writer, s.index)
            if stats.get("fingerprint") == s.fingerprint:
                skipped[s.index] = stats
                continue
            logger.info("%s was written from other images or settings: redoing it", shard_name(s.index))
        todo.append(s)
    return todo, skipped
