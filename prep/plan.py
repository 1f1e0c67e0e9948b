"""Shard planning and resume: which shards a run must (re)do.

A shard is `shard_size` consecutive records of the source's deterministic order, so shard N always
holds the same images; for a source read by units (webdataset tars, Parquet row groups), shard N is
the N-th unit. Each written shard's stats carry a fingerprint of its image ids and of the
settings that shape its rows (and, as `config_fingerprint`, of those settings alone). A rerun skips a
shard whose stats exist and match and whose files still match its stats, and redoes one without
stats (its worker died before finishing), a damaged one, or one written from other images. An output
written under other settings is refused unless the run is asked to overwrite it. Shard files are
replaced atomically under the same name, so a redo never leaves duplicate rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from manifests.layout import damaged_file
from manifests.schema import TABLES
from manifests.storage import join, read_json
from manifests.writer import STATS_DIR, ManifestWriter, shard_name

from .config import PrepConfig
from .records import ImageRecord
from .sources.units import SourceUnit, unit_fingerprint

logger = logging.getLogger(__name__)


@dataclass
class Shard:
    index: int
    records: list[ImageRecord] = field(repr=False)
    fingerprint: str = ""
    config_fingerprint: str = ""  # the run's row-shaping settings alone, the same for every shard
    # A unit-read source's input (one tar, one Parquet row group): the worker expands it into
    # records, and `records` is empty.
    unit: SourceUnit | None = None

    @property
    def num_images(self) -> int | None:
        """Images in the shard; None for a unit whose size the driver does not know (a tar)."""
        return len(self.records) if self.unit is None else self.unit.num_images


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
        shards.append(Shard(index, chunk, shard_fingerprint(chunk, config), config.fingerprint()))
    return shards


def plan_units(units: list[SourceUnit], config: PrepConfig) -> list[Shard]:
    """One shard per unit, in the units' order: shard N always reads the same tar or row group."""
    fp = config.fingerprint()
    return [Shard(i, [], unit_fingerprint(u, config), fp, unit=u) for i, u in enumerate(units)]


def read_shard_stats(writer: ManifestWriter, index: int, table: str = "images") -> dict:
    """A shard's stats; {} when the file cannot be read as a JSON object (then nothing in it matches)."""
    try:
        stats = read_json(writer.fs, join(writer.path, table, STATS_DIR, shard_name(index) + ".json"))
    except (OSError, ValueError):
        return {}
    return stats if isinstance(stats, dict) else {}


class OutputConflictError(ValueError):
    """The output holds shards this run must not mix with its own (other settings, larger input)."""


@dataclass
class ResumePlan:
    """What a run does with its output: shards to run, complete shards to keep, shards to delete first.

    `discard` lists shards of the existing output that this run replaces as a whole (written under
    other row-shaping settings, or beyond this plan); they are deleted before any new shard is written,
    so that an interrupted run cannot leave old and new rows side by side. `damaged` maps shards whose
    files no longer match their stats to the reason (they are in `todo`).
    """

    todo: list[Shard]
    skipped: dict[int, dict]
    discard: list[int] = field(default_factory=list)
    damaged: dict[int, str] = field(default_factory=dict)


def shard_damage(writer: ManifestWriter, index: int) -> str | None:
    """Why complete shard `index` cannot be trusted (a table file missing, truncated, unreadable), or None."""
    for table in TABLES:
        stats = read_shard_stats(writer, index, table)
        if not stats:
            return f"{table}/{STATS_DIR}/{shard_name(index)}.json cannot be read"
        why = damaged_file(writer.fs, join(writer.path, table, shard_name(index) + ".parquet"), stats)
        if why:
            return f"{table}/{shard_name(index)}: {why}"
    return None


def _threaded(fn, indices: list[int]) -> list[tuple[int, object]]:
    """[(index, fn(index))], run in threads: on an object store every call is a round trip."""
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(indices)))) as pool:
        return list(zip(indices, pool.map(fn, indices)))


def _span(indices: list[int]) -> str:
    return (
        shard_name(indices[0])
        if len(indices) == 1
        else f"{shard_name(indices[0])}..{shard_name(indices[-1])}"
    )


def _describe_input(identity) -> str:
    """`--format F --input X` from a recorded `input_identity`."""
    try:
        fmt, where, annotations = json.loads(identity)
    except (TypeError, ValueError):
        return str(identity)[:200]
    return f"--format {fmt} --input {where}" + (f" --annotations {annotations}" if annotations else "")


def pending_shards(
    shards: list[Shard], writer: ManifestWriter, overwrite: bool = False, input_identity: str | None = None
) -> ResumePlan:
    """Compare the plan with what `writer`'s output already holds.

    A complete shard is kept when it was written from the same images under the same settings and
    its table files still match their stats (size, Parquet footer); a damaged one is redone. A shard
    without stats (its worker died) or from other images under the same settings is redone.

    Raises OutputConflictError, unless `overwrite`, when the output holds complete shards written under
    other row-shaping settings (stats whose `config_fingerprint` differs, or, for shards written before
    stats recorded it, whose shard fingerprint differs), from another input (stats whose `input`
    differs from `input_identity`, `prep.sources.input_identity`) or shards beyond this plan (a larger
    input or --limit): mixing them in would make one manifest of two configurations, and replacing
    them would lose a manifest of other images. With `overwrite` they are in `discard` and their
    shards are redone.
    """
    done = writer.done_shards()
    planned = {s.index: s for s in shards}
    config_fp = shards[0].config_fingerprint if shards else ""
    beyond = sorted(done - set(planned))
    stats = dict(_threaded(lambda i: read_shard_stats(writer, i), sorted(done & set(planned))))

    def other_settings(i: int) -> bool:
        if not stats[i]:
            return False  # unreadable stats: a damaged shard, redone below
        recorded = stats[i].get("config_fingerprint")
        if recorded:
            return recorded != config_fp
        return stats[i].get("fingerprint") != planned[i].fingerprint  # stats from before config_fingerprint

    def other_input(i: int) -> bool:
        recorded = stats[i].get("input") if stats[i] else None
        return bool(recorded and input_identity and recorded != input_identity)

    conflicting = [i for i in stats if other_settings(i)]
    elsewhere = [i for i in stats if other_input(i) and i not in conflicting]
    if (beyond or conflicting or elsewhere) and not overwrite:
        reasons = []
        if elsewhere:
            recorded = _describe_input(stats[elsewhere[0]]["input"])
            reasons.append(f"shards {_span(elsewhere)} were written from another input ({recorded})")
        if conflicting:
            legacy = any(not stats[i].get("config_fingerprint") for i in conflicting)
            reasons.append(
                f"shards {_span(conflicting)} were written under other row-shaping settings"
                + (" (or, by an older handfirst, from other images)" if legacy else "")
            )
        if beyond:
            reasons.append(
                f"shards {_span(beyond)} are beyond this run's {len(shards)} shards "
                "(written from a larger input or --limit)"
            )
        raise OutputConflictError(
            f"{writer.root} already holds a manifest this run would mix with its own: {'; '.join(reasons)}. "
            "Rerun with --overwrite to replace it, or use another --out."
        )
    plan = ResumePlan([], {}, discard=sorted(beyond + conflicting + elsewhere))
    damage = dict(_threaded(lambda i: shard_damage(writer, i), [i for i in stats if i not in plan.discard]))
    for s in shards:
        if s.index in stats and s.index not in plan.discard:
            if why := damage[s.index]:
                logger.warning("%s is damaged (%s): redoing it", shard_name(s.index), why)
                plan.damaged[s.index] = why
            elif stats[s.index].get("fingerprint") != s.fingerprint:
                logger.info("%s was written from other images: redoing it", shard_name(s.index))
            else:
                plan.skipped[s.index] = stats[s.index]
                continue
        plan.todo.append(s)
    return plan
