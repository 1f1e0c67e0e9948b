"""Source adapters: each turns a dataset into ImageRecords, in a deterministic order.

`SOURCES` maps the `--format` name to the adapter; `load_records(config)` runs it, keeps ids unique
and applies `config.limit`. The order is the adapter's own sorted order (sorted file paths, sorted
annotation files and keys, or the annotation file's image order), so shard N always holds the same
images for the same input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import islice

from ..config import PrepConfig
from ..records import ImageRecord
from .base import AnnotationFileError, UnsafePathError, dedupe
from .coco import coco_records
from .folder import folder_records
from .hagrid import hagrid_records
from .interhand import interhand_records

SOURCES: dict[str, Callable[[PrepConfig], Iterable[ImageRecord]]] = {
    "folder": folder_records,
    "hagrid": hagrid_records,
    "coco": coco_records,
    "interhand": interhand_records,
}


def load_records(config: PrepConfig) -> list[ImageRecord]:
    try:
        adapter = SOURCES[config.format]
    except KeyError:
        raise ValueError(
            f"unknown input format {config.format!r}; expected one of {sorted(SOURCES)}"
        ) from None
    records = dedupe(adapter(config))
    if config.limit is not None:
        records = islice(records, max(0, config.limit))
    return list(records)


__all__ = ["SOURCES", "AnnotationFileError", "UnsafePathError", "load_records"]
