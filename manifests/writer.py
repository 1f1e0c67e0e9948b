"""Shard writer: one Parquet file per table per shard, written atomically, each with a stats file.

Layout of a manifest root::

    ROOT/_manifest.json                    dataset-level summary (both tables)
    ROOT/README.md                         a short dataset card (`manifests.hub`): one config per table
    ROOT/images/shard-00000.parquet        one file per shard
    ROOT/images/_stats/shard-00000.json    written last: its presence marks the shard complete
    ROOT/images/_manifest.json             table-level summary
    ROOT/hands/...                         the same for hands

Names starting with ``_`` or ``.`` are ignored by pyarrow, dask and datasets when they list a table
directory, so the tables load unchanged in all three.
"""

from __future__ import annotations

import io
import logging
import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from .hub import write_root_card
from .schema import SCHEMA_VERSION, TABLES, schema_for
from .storage import TEMP_NAME, atomic_write_bytes, filesystem, join, open_regular, read_json, write_json

logger = logging.getLogger(__name__)

MANIFEST_FILE = "_manifest.json"
STATS_DIR = "_stats"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("handfirst")
    except PackageNotFoundError:
        return "unknown"


def to_table(rows: Iterable[Mapping] | pa.Table, table: str) -> pa.Table:
    """Rows (dicts) -> a pyarrow table with exactly the manifest schema; unknown keys are an error."""
    schema = schema_for(table)
    if isinstance(rows, pa.Table):
        return rows.select(schema.names).cast(schema)
    rows = list(rows)
    extra = {k for r in rows for k in r} - set(schema.names)
    if extra:
        raise ValueError(f"{table} rows carry fields not in the schema: {sorted(extra)}")
    return pa.Table.from_pylist(rows, schema=schema)


def _table_stats(table_name: str, table: pa.Table) -> dict:
    stats = {"rows": table.num_rows}
    if table_name == "images":
        stats["status_counts"] = dict(Counter(table.column("status").to_pylist()))
    return stats


# Fields a hands row copies from its image's row, so hand crops filter and caption without a join.
FROM_IMAGE = ("split", "source_caption")


def _fill_hand_fields(tables: Mapping) -> Mapping:
    """Hand rows (dicts) lacking a `FROM_IMAGE` field get it from the same shard's image row."""
    hands, images = tables.get("hands"), tables.get("images")
    if hands is None or isinstance(hands, pa.Table) or images is None:
        return tables
    hands = list(hands)
    if all(name in h for h in hands for name in FROM_IMAGE):
        return {**tables, "hands": hands}
    images = images.to_pylist() if isinstance(images, pa.Table) else list(images)
    by_id = {r["image_id"]: r for r in images}
    hands = [
        {**{name: by_id.get(h.get("image_id"), {}).get(name) for name in FROM_IMAGE}, **h} for h in hands
    ]
    return {**tables, "images": images, "hands": hands}


class ManifestWriter:
    """Writes shards of a manifest at `root` (local path or fsspec URL).

    >>> w = ManifestWriter("out/manifest")
    >>> if not w.shard_done(3):
    ...     w.write_shard(3, {"images": image_rows, "hands": hand_rows})
    >>> w.finalize(config={...})
    """

    def __init__(self, root: str, row_group_size: int = 32, compression: str = "zstd"):
        self.root = str(root).rstrip("/")
        self.fs, self.path = filesystem(self.root)
        self.row_group_size = row_group_size
        self.compression = compression

    def _stats_path(self, table: str, index: int) -> str:
        return join(self.path, table, STATS_DIR, shard_name(index) + ".json")

    def shard_done(self, index: int) -> bool:
        return all(self.fs.exists(self._stats_path(t, index)) for t in TABLES)

    def done_shards(self) -> set[int]:
        done = None
        for t in TABLES:
            d = join(self.path, t, STATS_DIR)
            names = (
                {p.rsplit("/", 1)[-1] for p in self.fs.glob(join(d, "shard-*.json"))}
                if self.fs.exists(d)
                else set()
            )
            idx = {int(n[len("shard-") : -len(".json")]) for n in names}
            done = idx if done is None else done & idx
        return done or set()

    def remove_shard(self, index: int) -> list[str]:
        """Delete shard `index` from every table (stats files first, so a crash part-way leaves it
        incomplete, never complete with a table missing); returns the paths removed."""
        name = shard_name(index)
        paths = [self._stats_path(t, index) for t in TABLES] + [
            join(self.path, t, name + ".parquet") for t in TABLES
        ]
        removed = []
        for path in paths:
            if self.fs.exists(path):
                self.fs.rm(path)
                removed.append(path)
        return removed

    def remove_summaries(self) -> None:
        """Delete the `_manifest.json` files, so that a manifest being rewritten reads as not finalized
        rather than as a summary of shards that are gone."""
        for path in [join(self.path, MANIFEST_FILE)] + [join(self.path, t, MANIFEST_FILE) for t in TABLES]:
            if self.fs.exists(path):
                self.fs.rm(path)

    def remove_temporaries(self, older_than: float, root_files: tuple[str, ...] = ()) -> list[str]:
        """Delete the temporaries of writes that died (e.g. on a full disk) last modified before the
        time `older_than` (seconds since the epoch); returns the paths removed.

        Only files this writer makes are touched: a name `atomic_write_bytes` gives (``.{target}.{32
        hex}.handfirst.tmp``) whose target is a file of the manifest layout in that folder, holding
        what that target holds (a Parquet file starts with ``PAR1``, a JSON one with ``{``) or nothing
        yet; `root_files` names other files written at the root through `write_json` (prep's plan).
        Anything else a user keeps in the folder stays. Call it only while no other writer works
        on this root (prep holds the output lock): a live writer's temporary is about to be renamed.
        """
        removed = []
        for d, targets in self._temporary_targets(root_files).items():
            if not self.fs.isdir(d):
                continue
            for path in self.fs.ls(d, detail=False):
                match = TEMP_NAME.match(path.rstrip("/").rsplit("/", 1)[-1])
                if (
                    not match
                    or not targets.match(match["name"])
                    or not self._looks_written(path, match["name"])
                ):
                    continue
                try:
                    modified = self.fs.modified(path).timestamp()
                except (NotImplementedError, FileNotFoundError, OSError):
                    modified = None
                if modified is None or modified < older_than:
                    self.fs.rm(path)
                    removed.append(path)
        return removed

    def _temporary_targets(self, root_files: tuple[str, ...]) -> dict[str, re.Pattern]:
        """{folder: the names written there}."""
        root = re.compile("^(" + "|".join(re.escape(n) for n in (MANIFEST_FILE, *root_files)) + ")$")
        table = re.compile(rf"^({re.escape(MANIFEST_FILE)}|shard-\d{{5,}}\.parquet)$")
        stats = re.compile(r"^shard-\d{5,}\.json$")
        return {self.path: root} | {
            d: pattern
            for t in TABLES
            for d, pattern in ((join(self.path, t), table), (join(self.path, t, STATS_DIR), stats))
        }

    def _looks_written(self, path: str, target: str) -> bool:
        """Whether a temporary holds the start of what its target holds (or nothing yet)."""
        try:
            with open_regular(self.fs, path, None) as f:
                head = f.read(4)
        except (OSError, ValueError):
            return False
        return head == b"" or head.startswith(b"PAR1" if target.endswith(".parquet") else b"{")

    def write_shard(
        self,
        index: int,
        tables: Mapping[str, Iterable[Mapping] | pa.Table],
        extra_stats: Mapping | None = None,
    ) -> dict:
        """Write every table's rows for shard `index`; stats files go last so a crash leaves it incomplete.

        Rewriting a complete shard first removes its stats, so a crash part-way through a redo can never
        leave a new images file beside an old hands file under a stats file that calls the pair complete.
        """
        name = shard_name(index)
        tables = _fill_hand_fields(tables)
        encoded = {}
        for t in TABLES:  # encode everything before touching the disk: a schema error changes nothing
            table = to_table(tables.get(t, []), t)
            buf = io.BytesIO()
            pq.write_table(table, buf, compression=self.compression, row_group_size=self.row_group_size)
            encoded[t] = (table, buf.getvalue())
        for t in TABLES:
            if self.fs.exists(self._stats_path(t, index)):
                self.fs.rm(self._stats_path(t, index))
        stats = {}
        for t, (table, data) in encoded.items():
            self.fs.makedirs(join(self.path, t, STATS_DIR), exist_ok=True)
            atomic_write_bytes(self.fs, join(self.path, t, name + ".parquet"), data)
            stats[t] = {
                "shard": name,
                "file": name + ".parquet",
                "bytes": len(data),
                **_table_stats(t, table),
            }
        for t in TABLES:
            write_json(
                self.fs,
                self._stats_path(t, index),
                {**stats[t], "written_at": time.time(), **(extra_stats or {})},
            )
        logger.debug("wrote %s: %s", name, {t: s["rows"] for t, s in stats.items()})
        return stats

    def finalize(self, config: Mapping | None = None) -> dict:
        """Aggregate shard stats into `_manifest.json` files (per table and at the root), and write the
        root's short ``README.md`` unless one not written by `manifests.hub` is there."""
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        summary = {
            "schema_version": SCHEMA_VERSION,
            "code_version": code_version(),
            "created_at": created,
            "config": dict(config or {}),
            "tables": {},
        }
        for t in TABLES:
            shards = sorted(self.fs.glob(join(self.path, t, STATS_DIR, "shard-*.json")))
            entries = [read_json(self.fs, p) for p in shards]
            status = Counter()
            for e in entries:
                status.update(e.get("status_counts", {}))
            info = {
                "table": t,
                "schema_version": SCHEMA_VERSION,
                "code_version": summary["code_version"],
                "created_at": created,
                "config": summary["config"],
                "num_rows": sum(e["rows"] for e in entries),
                "num_shards": len(entries),
                "shards": {e["file"]: e["rows"] for e in entries},
            }
            if t == "images":
                info["status_counts"] = dict(status)
            self.fs.makedirs(join(self.path, t), exist_ok=True)  # a run whose every shard failed
            write_json(self.fs, join(self.path, t, MANIFEST_FILE), info)
            summary["tables"][t] = {k: info[k] for k in ("num_rows", "num_shards")} | (
                {"status_counts": info["status_counts"]} if t == "images" else {}
            )
        write_json(self.fs, join(self.path, MANIFEST_FILE), summary)
        write_root_card(self.root)  # README.md: datasets.load_dataset(root) works; pandas refuses the root
        return summary
