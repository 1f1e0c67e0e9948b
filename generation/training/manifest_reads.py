"""Cheap reads of a training manifest: null counts from the Parquet footers, the first rows that pass a
filter (for checks and validation grids, without a pass over the table), and the rows that lack a
source caption."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def null_counts(table, columns) -> dict[str, int]:
    """Nulls per column over the whole table, from Parquet footers (no data read)."""
    counts = dict.fromkeys(columns, 0)
    for frag in table.dataset.get_fragments():
        md = frag.metadata
        names = [md.schema.column(i).name for i in range(md.num_columns)]
        for g in range(md.num_row_groups):
            rg = md.row_group(g)
            for col in columns:
                if col in names:
                    stats = rg.column(names.index(col)).statistics
                    if stats is not None and stats.has_null_count:
                        counts[col] += stats.null_count
    return counts


def first_rows(manifest, table: str, columns, n: int, **filters) -> list[dict]:
    """The first `n` rows of `table` passing `filters`, in manifest order, reading row groups only until
    `n` are found (validation needs a handful of rows, not a pass over the table)."""
    out: list[dict] = []
    if n <= 0:
        return out
    for _, rows in manifest.iter_row_groups(table, columns, **filters):
        out += rows.slice(0, n - len(out)).to_pylist()
        if len(out) >= n:
            break
    return out


def count_missing_source_captions(column) -> int:
    """Rows of a `source_caption` column (pyarrow) with no source caption: null or blank."""
    return sum(1 for text in column.to_pylist() if not (text or "").strip())


def log_caption_fallbacks(command: str, choice: str, missing: int, total: int) -> None:
    """Say once, before training, how many selected rows train on the generated caption for lack of a
    source caption under ``--caption source`` / ``both``."""
    if choice == "generated" or not missing:
        return
    logger.warning(
        "%s --caption %s: %d of %d selected rows have no source caption and use the generated one%s",
        command,
        choice,
        missing,
        total,
        " (the manifest's source gives none)" if missing == total else "",
    )
