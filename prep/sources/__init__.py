"""Source adapters: each turns a dataset into ImageRecords, in a deterministic order.

`SOURCES` maps the `--format` name to the adapter; `load_records(config)` runs it, keeps ids unique
and applies `config.limit`. The formats in `UNIT_SOURCES` (webdataset, parquet) are read unit by unit
instead: the runner lists their units (tars, row groups) and each worker task expands its own
(`prep.sources.units`); their `SOURCES` entry expands every unit, for small inputs and tests. The order is the adapter's own sorted order (sorted file paths, sorted
annotation files and keys, or the annotation file's image order), so shard N always holds the same
images for the same input.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import TYPE_CHECKING

from manifests.storage import filesystem

from ..records import ImageRecord
from .base import AnnotationFileError, UnsafePathError, dedupe
from .coco import coco_records
from .folder import folder_records
from .hagrid import hagrid_records
from .interhand import interhand_records
from .parquet import PARQUET
from .units import SourceUnit, UnitSource, all_records, apply_limit, expand_unit, unit_labels
from .webdataset import WEBDATASET

if TYPE_CHECKING:
    from ..config import PrepConfig

# Sources whose input is listed by units on the driver and expanded inside the worker tasks.
UNIT_SOURCES: dict[str, UnitSource] = {"webdataset": WEBDATASET, "parquet": PARQUET}

SOURCES: dict[str, Callable[[PrepConfig], Iterable[ImageRecord]]] = {
    "folder": folder_records,
    "hagrid": hagrid_records,
    "coco": coco_records,
    "interhand": interhand_records,
    **{name: all_records(source) for name, source in UNIT_SOURCES.items()},
}


def load_units(config: PrepConfig) -> list[SourceUnit] | None:
    """The units of a unit-read source, `config.limit` applied; None for a record source."""
    source = UNIT_SOURCES.get(config.format)
    return None if source is None else apply_limit(unit_labels(source.units(config)), config.limit)


def unit_records(config: PrepConfig, unit: SourceUnit) -> Iterator[ImageRecord]:
    """The records of one unit (inside the worker task)."""
    return expand_unit(UNIT_SOURCES[config.format], unit, config)


def input_identity(config: PrepConfig) -> str:
    """What a manifest's rows are made from, recorded in each shard's stats: the format, the input and
    an absolute annotation file, local paths made absolute with symlinks resolved (URLs as given), so
    a run naming the same input another way is the same input."""

    def where(uri: str | None) -> str | None:
        if not uri:
            return None
        if "://" not in uri:
            return os.path.realpath(os.path.expanduser(uri))
        fs, path = filesystem(uri)
        return fs.unstrip_protocol(path)

    annotations = config.annotations
    absolute = annotations and (annotations.startswith("/") or "://" in annotations)
    return json.dumps([config.format, where(config.input), where(annotations) if absolute else annotations])


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


__all__ = [
    "SOURCES",
    "UNIT_SOURCES",
    "AnnotationFileError",
    "SourceUnit",
    "UnsafePathError",
    "input_identity",
    "load_records",
    "load_units",
    "unit_records",
]
