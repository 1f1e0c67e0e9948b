"""One Dask task: annotate a shard's records and write the shard. Runs inside a worker process.

The annotator (MediaPipe, SAM, ...) is built once per worker process and cached at module level,
keyed by the annotator class and the settings fingerprint; tasks carry only records and the config,
never models or pixels. Each record's image is read by the annotator itself through fsspec.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable

from manifests.schema import SCHEMAS
from manifests.writer import ManifestWriter

from .config import PrepConfig
from .native_logs import filter_native_stderr, in_dask_worker
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

_CACHE: dict[tuple[str, str], object] = {}
_LOCK = threading.Lock()


class SourceRecordError(ValueError):
    """The source adapter could not make a usable record (its message says why)."""


# Annotators by name. `config.annotator` is one of these names or an explicit "module:Class" (the
# module also defines `error_row`), given by the user through the CLI or the Python API. Code that
# builds a config from settings it read (a manifest's `_manifest.json`) must not copy this field:
# importing a named module runs it (see `generation.evaluate.run._prep_config`).
ANNOTATORS = {"mediapipe": "prep.annotate:Annotator"}
DEFAULT_ANNOTATOR = "mediapipe"


class AnnotatorError(ValueError):
    """`config.annotator` names no registered annotator and no importable module:Class."""


def annotator_target(name: str) -> tuple[str, str]:
    """(module, class) for an annotator name from `ANNOTATORS` or an explicit "module:Class"."""
    target = ANNOTATORS.get(name, name)
    module_name, sep, class_name = str(target).partition(":")
    if not sep or not module_name or not class_name:
        raise AnnotatorError(
            f"annotator {name!r}: expected one of {sorted(ANNOTATORS)} or an explicit module:Class"
        )
    return module_name, class_name


def annotator_module(config: PrepConfig):
    """The module of `config.annotator` (a registry name or "module:Class") and the class in it."""
    module_name, class_name = annotator_target(config.annotator)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AnnotatorError(
            f"annotator {config.annotator!r}: cannot import {module_name!r} ({exc})"
        ) from None
    cls = getattr(module, class_name, None)
    if cls is None or not hasattr(module, "error_row"):
        raise AnnotatorError(
            f"annotator {config.annotator!r}: module {module_name!r} lacks "
            + ("class " + repr(class_name) if cls is None else "error_row")
        )
    return module, cls


def get_annotator(config: PrepConfig):
    """This process's annotator for `config`, built on first use (models load once per worker)."""
    key = (config.annotator, config.fingerprint() + "|" + config.device)
    with _LOCK:
        if key not in _CACHE:
            _, cls = annotator_module(config)
            if in_dask_worker():  # MediaPipe's native log lines would flood the run's output
                filter_native_stderr()
            t0 = time.perf_counter()
            _CACHE[key] = cls(config)
            logger.info("pid %d built %s in %.2f s", os.getpid(), config.annotator, time.perf_counter() - t0)
        return _CACHE[key]


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
