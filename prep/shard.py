"""One Dask task: annotate a shard's records and write the shard. Runs inside a worker process.

The annotator comes from this process's cache (`prep.annotators.get_annotator`: built once per
worker); tasks carry only records and the config, never models or pixels. Each record's image is
read by the annotator itself through fsspec.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Iterable

from manifests.schema import SCHEMAS
from manifests.writer import ManifestWriter

from .annotators import annotator_module, get_annotator
from .config import PrepConfig
from .records import ImageRecord
from .sources import SourceUnit, input_identity, unit_records

logger = logging.getLogger(__name__)

# JPEG/PNG columns are already compressed: zstd gains ~nothing on them but costs over half the write
# time of a shard. Every other column (keypoints, float16 heatmaps, ids) gets zstd.
PRECOMPRESSED_COLUMNS = frozenset({"image", "hands_mask", "crop", "mask"})
PARQUET_COMPRESSION = {
    name: ("none" if name in PRECOMPRESSED_COLUMNS else "zstd")
    for schema in SCHEMAS.values()
    for name in schema.names
}


class SourceRecordError(ValueError):
    """The source adapter could not make a usable record (its message says why)."""


def _stage_snapshot(annotator) -> dict[str, float]:
    timings = getattr(annotator, "timings", None) or {}
    return {str(k): float(v) for k, v in dict(timings).items()}


def annotate_records(
    records: Iterable[ImageRecord], config: PrepConfig
) -> tuple[list[dict], list[dict], dict[str, float]]:
    """(image rows, hand rows, per-stage seconds) for records, read as they come (a unit's records
    are expanded while they are annotated, one sample's bytes in memory at a time). Never raises
    for a record.

    Records may carry normalised hand coordinates (`record.normalized`, HaGRID): the annotator converts
    them once it has decoded the image and knows its size. Any exception while annotating a record becomes that record's status="error" row
    (through the annotator module's `error_row`), so one bad image never loses the others.
    """
    module, _ = annotator_module(config)
    annotator = get_annotator(config)
    image_rows, hand_rows = [], []
    before = _stage_snapshot(annotator)
    annotate_s = 0.0
    for record in records:
        t0 = time.perf_counter()
        try:
            if record.error:
                raise SourceRecordError(record.error)
            image_row, hands = annotator.annotate(record)
            annotate_s += time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 - every failure becomes a row, by design
            logger.debug("%s failed: %s: %s", record.source_uri, type(exc).__name__, exc)
            image_row, hands = module.error_row(record, exc), []
        image_rows.append(image_row)
        hand_rows.extend(hands)
    after = _stage_snapshot(annotator)
    stages = {k: after[k] - before.get(k, 0.0) for k in after}
    stages["annotate"] = annotate_s
    return image_rows, hand_rows, stages


def process_shard(
    index: int,
    records: list[ImageRecord],
    config: PrepConfig,
    fingerprint: str = "",
    config_fingerprint: str = "",
    unit: SourceUnit | None = None,
) -> dict:
    """Annotate and write shard `index`; returns its stats.

    `unit` (a tar, a Parquet row group) replaces `records` for sources read by units: its records
    are expanded here, in the worker.

    `fingerprint` (the shard's images and settings) and `config_fingerprint` (the settings alone) come
    from the driver and go into the stats, which is how a rerun and `validate` tell shards apart.

    Per-record failures never raise (they are error rows). A failure to write the shard does raise,
    so that the scheduler retries the task; the shard files are written atomically, stats last.
    """
    t0, cpu0 = time.perf_counter(), time.process_time()
    if unit is not None:
        records = unit_records(config, unit)
    image_rows, hand_rows, stages = annotate_records(records, config)
    t1 = time.perf_counter()
    status = Counter(r.get("status") for r in image_rows)
    stats = {
        "index": index,
        "fingerprint": fingerprint,
        "config_fingerprint": config_fingerprint,
        "input": input_identity(config),
        "images": len(image_rows),
        "hands": len(hand_rows),
        "status_counts": dict(status),
        "timings": stages,
        "worker": f"{socket.gethostname()}:{os.getpid()}",
    }
    writer = ManifestWriter(config.out, compression=PARQUET_COMPRESSION)
    writer.write_shard(index, {"images": image_rows, "hands": hand_rows}, extra_stats=stats)
    stats["timings"] = {
        **stages,
        "write": 0.0,
    }  # the stats file is part of the write; only the return value has it
    stats["timings"]["write"] = time.perf_counter() - t1
    stats["seconds"] = time.perf_counter() - t0
    # CPU seconds of this process over the task: against `seconds`, how much of the task's wall time
    # it had a core (a loaded machine slows a task without any overhead of its own).
    stats["cpu_seconds"] = time.process_time() - cpu0
    return stats
