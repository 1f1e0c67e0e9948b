"""Parquet tables with embedded image bytes: img2dataset's Parquet output, or any table of images.

`--input` is one Parquet file, a folder of them, a glob or a brace pattern, local or fsspec URLs.
The image bytes are in the column `--parquet-image-column` (img2dataset: `jpg`). img2dataset's other
columns are used where present: `key` (else the row's position in its file, `row-{n}`), `txt` or
`caption` (kept as the source caption), `url`, and `status` / `error_message`: a row whose status is
not `success`, or whose image cell is null, becomes an `error` row that says so. Either is qualified
by the row group's unit name (`{unit}__{key}`, `part_rg2__row-000120`; `prep.sources.units`).

Each row group is one shard (`prep.sources.units`): the driver reads only the footers (row counts
and the schema, checked for the image column), and the worker reads its one row group, only the
columns it uses, in batches, with no page over `max_file_bytes` and no text cell over `max_text_bytes`
(`prep.sources.parquet_pages`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pyarrow.parquet as pq

from ..imageio import open_regular_file
from ..records import ImageRecord
from .base import AnnotationFileError, error_record, safe_id
from .parquet_pages import capped_rows, oversized_pages
from .units import SourceUnit, UnitSource, input_files

if TYPE_CHECKING:
    from ..config import PrepConfig

logger = logging.getLogger(__name__)

SUCCESS = "success"
# Optional img2dataset columns -> the record field each fills (the first one present wins).
TEXT_COLUMNS = {"source_key": ("key",), "source_caption": ("txt", "caption"), "source_url": ("url",)}
STATUS_COLUMNS = ("status", "error_message")


def parquet_units(config: PrepConfig) -> list[SourceUnit]:
    units = []
    column = config.parquet_image_column
    for uri in input_files(config.input, (".parquet",), "parquet", config):
        try:
            with open_regular_file(uri, max_bytes=None) as f:
                meta = pq.ParquetFile(f).metadata
                names = meta.schema.to_arrow_schema().names
        except Exception as exc:  # noqa: BLE001 - any unreadable footer is one line naming the file
            raise AnnotationFileError(
                f"{uri}: not a readable Parquet file: {type(exc).__name__}: {exc}"
            ) from None
        if column not in names:
            raise AnnotationFileError(
                f"{uri}: no image column {column!r} (--parquet-image-column); its columns are {names}"
            )
        first = 0
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            if n:
                units.append(SourceUnit(uri, part=g, count=n, first=first))
            first += n
    return units


def _cell(row: dict, names: tuple[str, ...]):
    return next((row[n] for n in names if row.get(n) is not None), None)


def row_group_rows(f, group: int, columns: list[str], config: PrepConfig, text_columns) -> Iterator[tuple]:
    """(row, reasons) for each row of row group `group` of the open Parquet file `f`, reading only
    `columns`, with no page over `max_file_bytes` and no text cell over `max_text_bytes` in memory
    (`prep.sources.parquet_pages`). A column with an oversized page is not read, and is a reason on
    every row of the group."""
    pf = pq.ParquetFile(f, buffer_size=2**20)
    present = set(pf.schema_arrow.names)
    columns = [c for c in dict.fromkeys(columns) if c in present]
    meta = pf.metadata.row_group(group)
    too_big = oversized_pages(f, meta, columns, config.max_file_bytes)
    columns = [c for c in columns if c not in too_big]
    total = sum(
        meta.column(i).total_uncompressed_size
        for i in range(meta.num_columns)
        if meta.column(i).path_in_schema.split(".")[0] in columns
    )
    batch = max(1, min(meta.num_rows, meta.num_rows * config.max_file_bytes // max(total, 1)))
    rows = capped_rows(
        pf, group, columns, set(text_columns), config.max_text_bytes, batch, [*too_big.values()]
    )
    yield from rows


def parquet_records(unit: SourceUnit, config: PrepConfig) -> Iterator[ImageRecord]:
    column = config.parquet_image_column
    text = [*(c for names in TEXT_COLUMNS.values() for c in names), *STATUS_COLUMNS]
    with open_regular_file(unit.uri, max_bytes=None) as f:
        rows = row_group_rows(f, unit.part, [column, *text], config, text)
        for i, (row, reasons) in enumerate(rows):
            fields = {field: _cell(row, names) for field, names in TEXT_COLUMNS.items()}
            fields = {k: None if v is None else str(v) for k, v in fields.items()}
            position = unit.first + i
            # the unit's name (`expand_unit`) already names the file: a keyless row adds its position only
            image_id = safe_id(fields["source_key"] or f"row-{position:06d}")
            uri = f"{unit.uri}#row={position}"
            status = row.get("status") or SUCCESS
            data = row.get(column)
            if reasons:
                why = f"row {position}: " + "; ".join(reasons)
                yield error_record(image_id, uri, "parquet", why, split=config.split, **fields)
            elif status != SUCCESS:
                why = f"img2dataset status {status!r}" + (
                    f": {row['error_message']}" if row.get("error_message") else ""
                )
                yield error_record(image_id, uri, "parquet", why, split=config.split, **fields)
            elif not isinstance(data, (bytes, bytearray)):
                why = f"row {position}: column {column!r} holds no image bytes ({type(data).__name__})"
                yield error_record(image_id, uri, "parquet", why, split=config.split, **fields)
            else:
                yield ImageRecord(
                    image_id=image_id,
                    source_uri=uri,
                    dataset="parquet",
                    split=config.split,
                    data=bytes(data),
                    **fields,
                )
            del data, row


PARQUET = UnitSource(parquet_units, parquet_records)
