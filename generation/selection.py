"""Which manifest rows `handfirst-gen generate --from-manifest` and `handfirst-gen evaluate` take.

Both commands select through `iter_selected`, so ``generate --from-manifest M --limit N`` followed by
``evaluate --manifest M --limit N`` (same `--split`) scores exactly the images that were generated:

- rows of the images table whose status is one of `statuses` (``ok``; evaluate adds ``no_hands``
  with ``--include-no-hands``),
- of one `split`. The default, ``auto``, is ``test`` when the manifest's images carry a split and
  every row when none does (a folder of photos), which the log says; ``all`` (or None / "") takes
  every split,
- in manifest order: shards in name order, row groups and rows in file order,
- the first `limit` of them. Reading stops at the row group that completes the budget, so a small
  limit over a large manifest reads a few row groups, not the table.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Sequence

logger = logging.getLogger(__name__)

AUTO_SPLIT = "auto"
DEFAULT_SPLIT = AUTO_SPLIT
TEST_SPLIT = "test"  # what `auto` takes when the manifest has splits
ALL_SPLITS = "all"


class SelectionError(ValueError):
    """No row matches the selection, or the selection itself is malformed."""


def split_filter(split: str | None) -> str | None:
    """The split to filter on: None for every split ("all", "" or None)."""
    return None if split in (None, "", ALL_SPLITS) else split


def has_splits(manifest) -> bool:
    """Whether any images row carries a split (reads the one light column)."""
    column = manifest.read("images", ["split"]).column("split")
    return column.null_count < len(column)


def resolve_split(manifest, split: str | None) -> str | None:
    """The split to filter on for `split` as given (None: every split); see the module docstring."""
    if split != AUTO_SPLIT:
        return split_filter(split)
    if has_splits(manifest):
        return TEST_SPLIT
    logger.warning("%s: the images carry no split, so every row is selected (--split auto)", manifest.url)
    return None


def iter_selected(
    manifest,
    columns: Sequence[str],
    split: str | None = DEFAULT_SPLIT,
    statuses: Sequence[str] = ("ok",),
    limit: int | None = None,
) -> Iterator[tuple[object, list[dict]]]:
    """Yield (row-group unit, [row dict with `columns`]) of the selected images rows, in manifest order.

    `manifest` is an opened `manifests.reader.Manifest`; units without a selected row are skipped.
    At most `limit` rows in all (None: no limit); no row group after the one that fills it is read.
    """
    from manifests.reader import build_filter

    if limit is not None and limit < 1:
        raise SelectionError(f"limit must be at least 1 (or None for no limit), got {limit}")
    table = manifest.images
    expr = build_filter("images", split=resolve_split(manifest, split), status=list(statuses))
    remaining = limit
    for unit in table.units():
        rows = table.read_unit(unit, columns, expr).to_pylist()
        if remaining is not None:
            rows = rows[:remaining]
            remaining -= len(rows)
        if rows:
            yield unit, rows
        if remaining == 0:
            return


def select_rows(
    manifest,
    columns: Sequence[str],
    split: str | None = DEFAULT_SPLIT,
    statuses: Sequence[str] = ("ok",),
    limit: int | None = None,
) -> list[dict]:
    """The selected rows as one list; raises `SelectionError` (with the rows per split) when there is none."""
    rows = [row for _, part in iter_selected(manifest, columns, split, statuses, limit) for row in part]
    if not rows:
        raise SelectionError(nothing_selected(manifest, split, statuses))
    return rows


def nothing_selected(manifest, split: str | None, statuses: Sequence[str] = ("ok",)) -> str:
    """Why a selection came out empty: the rows of those statuses per split (reads two light columns)."""
    t = manifest.read("images", ["split"], status=list(statuses))
    present = dict(Counter(t.column("split").to_pylist()))
    wanted = split_filter(split) if split != AUTO_SPLIT else (TEST_SPLIT if has_splits(manifest) else None)
    wanted = "every split" if wanted is None else f"split {wanted!r}"
    return (
        f"{manifest.url}: no images with status {'/'.join(statuses)} in {wanted}; such images per split: "
        f"{present} (--split {ALL_SPLITS} takes every split)"
    )
