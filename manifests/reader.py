"""Open a manifest (local path or any fsspec URL) as pyarrow datasets, with filters and decoding.

>>> m = open_manifest("out/manifest")                      # a root with images/ and hands/
>>> t = m.read("hands", columns=["hand_id", "crop", "crop_size"], label="call", min_hand_size=64)
>>> crop = crop_array(t.slice(0, 1).to_pylist()[0])       # (S, S, 3) uint8
>>> for unit, rows in m.iter_row_groups("hands", columns=["hand_id"], split="train"): ...

Opening checks every shard's footer, schema version and field types, and that the row counts of
each shard, its stats file and `_manifest.json` agree; any problem raises (`manifests.errors`) with
the file named. Reading a row group that turns out to be corrupt raises `CorruptShardError` naming
the file and row group. Nothing is skipped silently.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .decode import (  # noqa: F401  (re-exported: the reader's decode helpers)
    body_keypoints,
    crop_array,
    crop_keypoints,
    decode_hand,
    decode_image_row,
    hand_keypoints,
    hands_mask_array,
    heatmap_array,
    image_array,
    keypoints_array,
    mask_array,
)
from .errors import CorruptShardError, ManifestError, MissingFileError
from .layout import ShardFile, TableScan, infer_table, raise_for, root_problems, scan_table
from .schema import TABLES, schema_for
from .storage import filesystem, is_local, join, url_for

logger = logging.getLogger(__name__)

ID_COLUMNS = {"images": "image_id", "hands": "hand_id"}


@dataclass(frozen=True)
class RowGroupUnit:
    """The unit of streaming and sharding: one row group of one shard file."""

    shard: int  # index into ManifestTable.shards
    name: str  # shard file name
    path: str  # filesystem path
    row_group: int
    num_rows: int

    @property
    def key(self) -> tuple[str, int]:
        return (self.name, self.row_group)


def arrow_filesystem(fs) -> pafs.FileSystem:
    """pyarrow's native filesystem for local paths (faster, GIL-free reads); fsspec wrapped otherwise."""
    if is_local(fs):
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def build_filter(
    table: str, label=None, split=None, status=None, min_hand_size=None, filter: ds.Expression | None = None
) -> ds.Expression | None:
    """Combine the common filters into one pyarrow expression (None when there is none).

    `label`, `split`, `status` take a value or a list of values; `status` exists only in `images`
    and `min_hand_size` (pixels of the original image, compared with `hand_size`) only in `hands`.
    `filter` is any extra ``pyarrow.dataset`` expression, ANDed with the others.
    """
    names = schema_for(table).names
    parts = []
    for column, value in (("label", label), ("split", split), ("status", status)):
        if value is None:
            continue
        if column not in names:
            raise ValueError(f"the {table} table has no {column!r} column to filter on")
        values = [value] if isinstance(value, str) else list(value)
        parts.append(ds.field(column).isin(values))
    if min_hand_size is not None:
        if "hand_size" not in names:
            raise ValueError(f"min_hand_size filters the hands table; the {table} table has no hand_size")
        parts.append(ds.field("hand_size") >= float(min_hand_size))
    if filter is not None:
        # Bind against an empty table now so a typo fails here, not as a "corrupt shard" later.
        try:
            schema_for(table).empty_table().filter(filter)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, TypeError) as exc:
            raise ValueError(f"filter {filter} does not apply to the {table} table: {exc}") from exc
        parts.append(filter)
    if not parts:
        return None
    expr = parts[0]
    for p in parts[1:]:
        expr = expr & p
    return expr


class ManifestTable:
    """One table (images or hands) of a manifest: its shards, row-group units, dataset and reads."""

    def __init__(self, scan: TableScan, fs):
        self.name = scan.table
        self.path = scan.path
        self.url = scan.url
        self.shards: list[ShardFile] = scan.shards
        self.info = scan.info or {}
        self.fs = fs
        self.arrow_fs = arrow_filesystem(fs)
        self.schema = schema_for(self.name)
        self.id_column = ID_COLUMNS[self.name]
        self._light = [f.name for f in self.schema if not pa.types.is_binary(f.type)]
        self._fragments: dict[int, ds.ParquetFileFragment] = {}
        self._files: dict[int, pq.ParquetFile] = {}
        self.open_files = 8
        self._pid = os.getpid()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fragments"] = {}  # fragments and open files are rebuilt lazily in each process
        state["_files"] = {}
        return state

    def __repr__(self) -> str:
        return f"ManifestTable({self.name!r}, {self.url!r}, shards={len(self.shards)}, rows={self.num_rows})"

    @property
    def num_rows(self) -> int:
        return sum(s.num_rows or 0 for s in self.shards)

    @property
    def files(self) -> list[str]:
        return [s.path for s in self.shards]

    @property
    def dataset(self) -> ds.Dataset:
        """A pyarrow dataset over exactly the checked shards (hidden `_`/`.` files are not part of it)."""
        return ds.dataset(self.files, schema=self.schema, format="parquet", filesystem=self.arrow_fs)

    def units(self) -> list[RowGroupUnit]:
        """Every non-empty row group, in shard name order."""
        return [
            RowGroupUnit(i, s.name, s.path, g, n)
            for i, s in enumerate(self.shards)
            for g, n in enumerate(s.row_groups)
            if n > 0
        ]

    def _fragment(self, shard: int) -> ds.ParquetFileFragment:
        frag = self._fragments.get(shard)
        if frag is None:
            frag = ds.ParquetFileFormat().make_fragment(self.shards[shard].path, filesystem=self.arrow_fs)
            self._fragments[shard] = frag
        return frag

    def _fail(self, where: str, exc: Exception):
        return CorruptShardError(f"{where}: cannot read: {type(exc).__name__}: {' '.join(str(exc).split())}")

    def _parquet_file(self, shard: int) -> pq.ParquetFile:
        """An open ParquetFile per shard, kept for the next row group (a few at a time)."""
        if self._pid != os.getpid():  # a forked DataLoader worker must not share the parent's file offsets
            self._files, self._pid = {}, os.getpid()
        pf = self._files.pop(shard, None)
        if pf is None:
            pf = pq.ParquetFile(self.arrow_fs.open_input_file(self.shards[shard].path))
        self._files[shard] = pf  # most recently used last
        while len(self._files) > self.open_files:
            self._files.pop(next(iter(self._files))).close()
        return pf

    def read_unit(
        self, unit: RowGroupUnit, columns: Sequence[str] | None = None, filter: ds.Expression | None = None
    ) -> pa.Table:
        """Rows of one row group, projected to `columns`, keeping those that pass `filter`.

        With a filter, the cheap (non-binary) columns are read and filtered first, and the
        requested columns only when some row survives, so a selective filter does not pay for
        decompressing crops of rows it drops.
        """
        where = f"{url_for(self.fs, unit.path)} row group {unit.row_group}"
        columns = list(columns) if columns is not None else self.schema.names
        try:
            pf = self._parquet_file(unit.shard)
            if filter is None:
                return self._row_group(pf, unit.row_group, columns)
            light = self._row_group(pf, unit.row_group, self._light)
            try:
                numbered = light.append_column("__row", pa.array(range(light.num_rows), pa.int64()))
                keep = numbered.filter(filter)["__row"]
            except pa.ArrowInvalid:  # the filter needs a binary column: filter the full rows instead
                full = self._row_group(pf, unit.row_group, self.schema.names)
                return full.filter(filter).select(columns)
            if len(keep) == 0:
                return self.schema.empty_table().select(columns)
            rows = self._row_group(pf, unit.row_group, columns)
            return rows if len(keep) == light.num_rows else rows.take(keep)
        except (OSError, pa.ArrowException) as exc:
            self._files.pop(unit.shard, None)
            raise self._fail(where, exc) from exc

    def _row_group(self, pf: pq.ParquetFile, row_group: int, columns: list[str]) -> pa.Table:
        """`columns` of one row group; a field an older minor schema version lacks (checked on
        opening) comes back as nulls."""
        present = set(pf.schema_arrow.names)
        rows = pf.read_row_group(row_group, columns=[c for c in columns if c in present], use_threads=False)
        for name in columns:
            if name not in present:
                rows = rows.append_column(
                    self.schema.field(name), pa.nulls(rows.num_rows, self.schema.field(name).type)
                )
        return rows.select(columns)

    def count_unit(self, unit: RowGroupUnit, filter: ds.Expression | None = None) -> int:
        """Rows of `unit` passing `filter` (reads only the cheap columns; metadata alone without filter)."""
        if filter is None:
            return unit.num_rows
        return self.read_unit(unit, [self.id_column], filter).num_rows

    def read(self, columns: Sequence[str] | None = None, filter: ds.Expression | None = None) -> pa.Table:
        """The whole table (after projection and filter), shard by shard in name order."""
        columns = list(columns) if columns is not None else self.schema.names
        parts = []
        for i, s in enumerate(self.shards):
            try:
                parts.append(self._fragment(i).to_table(schema=self.schema, columns=columns, filter=filter))
            except (OSError, pa.ArrowException) as exc:
                raise self._fail(s.url, exc) from exc
        if not parts:
            return self.schema.empty_table().select(columns)
        # A shard written by another tool may mark a column nullable where ours is not; the types
        # were checked on opening, so only nullability can differ, and "default" unifies it.
        return pa.concat_tables(parts, promote_options="default")

    def iter_row_groups(
        self,
        columns: Sequence[str] | None = None,
        filter: ds.Expression | None = None,
        units: Sequence[RowGroupUnit] | None = None,
    ) -> Iterator[tuple[RowGroupUnit, pa.Table]]:
        """Yield (unit, rows) for each row group (or the given `units`), never holding more than one."""
        for unit in self.units() if units is None else units:
            yield unit, self.read_unit(unit, columns, filter)


class Manifest:
    """An opened manifest: a root with both tables, or a single table directory.

    `tables` maps table name to `ManifestTable`; `info` is the root `_manifest.json` (the table's own
    one when a table directory was opened).
    """

    def __init__(self, url: str, tables: dict[str, ManifestTable], info: dict):
        self.url = url
        self.tables = tables
        self.info = info

    def __repr__(self) -> str:
        return f"Manifest({self.url!r}, tables={ {k: v.num_rows for k, v in self.tables.items()} })"

    def table(self, name: str) -> ManifestTable:
        if name not in self.tables:
            raise ManifestError(f"{self.url}: no {name!r} table here (tables: {sorted(self.tables)})")
        return self.tables[name]

    @property
    def images(self) -> ManifestTable:
        return self.table("images")

    @property
    def hands(self) -> ManifestTable:
        return self.table("hands")

    @property
    def config(self) -> dict:
        """The producing run's settings, as recorded in `_manifest.json` (empty when not recorded as an object)."""
        config = self.info.get("config", {})
        if not isinstance(config, dict):
            logger.warning(
                "%s: _manifest.json 'config' is %s, not an object; ignored", self.url, type(config).__name__
            )
            return {}
        return dict(config)

    def dataset(self, table: str) -> ds.Dataset:
        return self.table(table).dataset

    def read(
        self,
        table: str,
        columns: Sequence[str] | None = None,
        *,
        label=None,
        split=None,
        status=None,
        min_hand_size=None,
        filter: ds.Expression | None = None,
    ) -> pa.Table:
        """Read `table` with column projection and filters pushed into pyarrow (see `build_filter`)."""
        expr = build_filter(
            table, label=label, split=split, status=status, min_hand_size=min_hand_size, filter=filter
        )
        return self.table(table).read(columns, expr)

    def iter_row_groups(
        self,
        table: str,
        columns: Sequence[str] | None = None,
        *,
        label=None,
        split=None,
        status=None,
        min_hand_size=None,
        filter: ds.Expression | None = None,
    ) -> Iterator[tuple[RowGroupUnit, pa.Table]]:
        expr = build_filter(
            table, label=label, split=split, status=status, min_hand_size=min_hand_size, filter=filter
        )
        return self.table(table).iter_row_groups(columns, expr)

    def lookup(self, table: str, ids: Sequence[str], columns: Sequence[str] | None = None) -> pa.Table:
        """Rows whose id (image_id / hand_id) is in `ids` (reads every shard's id column)."""
        t = self.table(table)
        return t.read(columns, pc.field(t.id_column).isin(list(ids)))


def is_manifest_root(fs, path: str) -> bool:
    return any(fs.isdir(join(path, t)) for t in TABLES)


def open_manifest(path: str, table: str | None = None) -> Manifest:
    """Open a manifest root (with images/ and hands/) or one table directory, local or fsspec URL.

    Raises `MissingFileError`, `CorruptShardError`, `SchemaMismatchError`, `CountMismatchError` or
    `ManifestError`, each naming the offending file(s).
    """
    fs, p = filesystem(str(path))
    p = p.rstrip("/")
    url = url_for(fs, p)
    if not fs.exists(p):
        raise MissingFileError(f"{url}: no such manifest directory")
    if is_manifest_root(fs, p):
        scans = {t: scan_table(fs, join(p, t), t) for t in TABLES}
        info, problems = root_problems(fs, p, scans)
        problems = [q for s in scans.values() for q in s.problems] + problems
        raise_for(problems)
        tables = {t: ManifestTable(s, fs) for t, s in scans.items()}
        if table is not None:
            tables = {table: tables[table]} if table in tables else {}
        return Manifest(url, tables, info or {})
    name = table or infer_table(fs, p)
    if name is None:
        raise ManifestError(
            f"{url}: neither a manifest root (images/, hands/) nor a table directory of Parquet shards"
        )
    scan = scan_table(fs, p, name)
    raise_for(scan.problems)
    return Manifest(url, {name: ManifestTable(scan, fs)}, scan.info or {})
