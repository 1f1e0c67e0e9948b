"""Bounded reads of Parquet row groups: a cell's size is known before it is decompressed.

A Parquet value lives whole in one page, and a page's header states its uncompressed size. A few
kilobytes of zstd can hold a page of gigabytes, so before a column chunk is decoded its page headers are
read (Thrift compact protocol, headers only) and a page larger than the bound refuses the row group.
The footer's `total_uncompressed_size` decides cheaply when no page can be over the bound. Rows are then
read in batches, and a text cell over its cap is dropped from the row with the reason, before it is
copied into Python.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc

HEADER_WINDOW = 64 * 2**10
MAX_HEADER_BYTES = 2**20
MAX_DEPTH = 32
# A page holds a value's bytes plus its length prefix and levels; this much over the bound is framing.
PAGE_FRAMING = 4096


class PageHeaderError(ValueError):
    """A page header that cannot be parsed within the bounds."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise PageHeaderError("page header cut off")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _zigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def _skip(buf: bytes, pos: int, ttype: int, depth: int) -> int:
    if depth > MAX_DEPTH:
        raise PageHeaderError("page header nested too deep")
    if ttype in (1, 2):  # booleans: the value is in the field header
        return pos
    if ttype == 3:
        return pos + 1
    if ttype in (4, 5, 6):
        return _varint(buf, pos)[1]
    if ttype == 7:
        return pos + 8
    if ttype == 8:
        n, pos = _varint(buf, pos)
        return pos + n
    if ttype in (9, 10):
        if pos >= len(buf):
            raise PageHeaderError("page header cut off")
        size, etype = buf[pos] >> 4, buf[pos] & 0x0F
        pos += 1
        if size == 15:
            size, pos = _varint(buf, pos)
        for _ in range(size):
            pos = pos + 1 if etype in (1, 2) else _skip(buf, pos, etype, depth + 1)
        return pos
    if ttype == 11:
        size, pos = _varint(buf, pos)
        if size:
            kinds = buf[pos]
            pos += 1
            for _ in range(size):
                pos = _skip(buf, pos, kinds >> 4, depth + 1)
                pos = _skip(buf, pos, kinds & 0x0F, depth + 1)
        return pos
    if ttype == 12:
        return _struct(buf, pos, depth + 1)[1]
    raise PageHeaderError(f"unknown Thrift type {ttype}")


def _struct(buf: bytes, pos: int, depth: int = 0) -> tuple[dict[int, int], int]:
    """({field id: value} of the struct's integer fields, end position)."""
    fields, last = {}, 0
    while True:
        if pos >= len(buf):
            raise PageHeaderError("page header cut off")
        head = buf[pos]
        pos += 1
        if head == 0:
            return fields, pos
        delta, ttype = head >> 4, head & 0x0F
        if delta:
            fid = last + delta
        else:
            raw, pos = _varint(buf, pos)
            fid = _zigzag(raw)
        last = fid
        if ttype in (4, 5, 6):
            raw, pos = _varint(buf, pos)
            fields[fid] = _zigzag(raw)
        else:
            pos = _skip(buf, pos, ttype, depth)


def page_sizes(f, column) -> Iterator[int]:
    """The uncompressed size of each page of a column chunk, from its page headers."""
    start = column.dictionary_page_offset if column.has_dictionary_page else column.data_page_offset
    end = start + column.total_compressed_size
    pos = start
    while pos < end:
        window = HEADER_WINDOW
        while True:
            f.seek(pos)
            buf = f.read(min(window, end - pos))
            try:
                fields, used = _struct(buf, 0)
                break
            except PageHeaderError:
                if window >= MAX_HEADER_BYTES or len(buf) < window:
                    raise
                window *= 4
        uncompressed, compressed = fields.get(2), fields.get(3)
        if uncompressed is None or compressed is None or uncompressed < 0 or compressed < 0:
            raise PageHeaderError("page header without its sizes")
        yield uncompressed
        pos += used + compressed


def oversized_pages(f, row_group, names: list[str], max_bytes: int) -> dict[str, str]:
    """{column: why} for the columns of `names` that have a page over `max_bytes` (or an unreadable one)."""
    bad = {}
    for i in range(row_group.num_columns):
        column = row_group.column(i)
        name = column.path_in_schema.split(".")[0]
        if name not in names or name in bad or column.total_uncompressed_size <= max_bytes:
            continue
        try:
            for size in page_sizes(f, column):
                if size > max_bytes + PAGE_FRAMING:
                    bad[name] = (
                        f"column {name!r} has a page of {size} bytes uncompressed, over max_file_bytes={max_bytes}"
                    )
                    break
        except (PageHeaderError, OSError) as exc:
            bad[name] = f"column {name!r}: unreadable page header: {exc}"
    return bad


def capped_rows(
    pf,
    group: int,
    columns: list[str],
    text_columns: set[str],
    max_text_bytes: int,
    batch_rows: int,
    reasons: list[str] = (),
) -> Iterator[tuple[dict, list[str]]]:
    """(row, reasons) for each row of one row group; a text cell over `max_text_bytes` is None in the
    row and named in its reasons, and never copied into Python. `reasons` apply to every row."""
    if not columns:
        for _ in range(pf.metadata.row_group(group).num_rows):
            yield {}, list(reasons)
        return
    for batch in pf.iter_batches(batch_size=batch_rows, row_groups=[group], columns=columns):
        over: dict[str, list] = {}
        arrays = {}
        for name in batch.schema.names:
            array = batch.column(name)
            kind = array.type
            if name in text_columns and (
                pa.types.is_string(kind)
                or pa.types.is_large_string(kind)
                or pa.types.is_binary(kind)
                or pa.types.is_large_binary(kind)
            ):
                lengths = pc.binary_length(array)
                mask = pc.fill_null(pc.greater(lengths, max_text_bytes), False)
                if pc.any(mask).as_py():
                    over[name] = lengths.to_pylist()
                    array = pc.if_else(mask, pa.scalar(None, kind), array)
            arrays[name] = array
        rows = pa.table(arrays).to_pylist()
        del arrays, batch
        for i, row in enumerate(rows):
            yield (
                row,
                [
                    *reasons,
                    *(
                        f"column {name!r} holds {lengths[i]} bytes, over max_text_bytes={max_text_bytes}"
                        for name, lengths in over.items()
                        if lengths[i] is not None and lengths[i] > max_text_bytes
                    ),
                ],
            )
