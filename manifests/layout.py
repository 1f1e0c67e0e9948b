"""Find and check the files of a manifest table: shards, their stats files, `_manifest.json`.

`scan_table` reads only the small things (directory listings, JSON, Parquet footers) and returns
every problem it sees, so that the reader can raise on them and `validate` can list them all. The
row contents are checked elsewhere (`manifests.validate`).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import (
    CorruptShardError,
    CountMismatchError,
    ManifestError,
    MissingFileError,
    Problem,
    SchemaMismatchError,
)
from .schema import SCHEMA_VERSION, TABLES, schema_problems, version_tuple
from .storage import join, open_regular, read_json, url_for
from .writer import MANIFEST_FILE, STATS_DIR

logger = logging.getLogger(__name__)

SHARD_SUFFIX = ".parquet"

# Problem.kind -> the exception the reader raises for it.
PROBLEM_ERRORS = {
    "missing": MissingFileError,
    "corrupt": CorruptShardError,
    "schema": SchemaMismatchError,
    "counts": CountMismatchError,
    "layout": ManifestError,
    "settings": ManifestError,
}


@dataclass
class ShardFile:
    """One Parquet shard of a table, as found on disk.

    `path` is the filesystem path (protocol stripped), `url` the full location used in messages,
    `row_groups` the number of rows in each row group (from the footer).
    """

    name: str
    path: str
    url: str
    stats_path: str
    stats: dict | None = None
    num_rows: int | None = None
    row_groups: list[int] = field(default_factory=list)
    schema_version: str | None = None


@dataclass
class TableScan:
    table: str
    path: str
    url: str
    shards: list[ShardFile]
    info: dict | None
    problems: list[Problem]

    @property
    def num_rows(self) -> int:
        return sum(s.num_rows or 0 for s in self.shards)


def read_json_object(fs, path: str, what: str) -> tuple[dict | None, Problem | None]:
    """(the JSON object at `path`, None) or (None, the problem): unreadable, not JSON, or not an object."""
    url = url_for(fs, path)
    try:
        value = read_json(fs, path)
    except Exception as exc:
        return None, Problem(url, f"unreadable {what}: {' '.join(str(exc).split())}", kind="corrupt")
    if not isinstance(value, dict):
        return None, Problem(url, f"{what} must be a JSON object, got {type(value).__name__}", kind="corrupt")
    return value, None


def _read_footer(fs, shard: ShardFile, table: str) -> list[Problem]:
    try:
        with open_regular(fs, shard.path, None) as f:
            pf = pq.ParquetFile(f)
            md = pf.metadata
            schema = pf.schema_arrow
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for truncated or foreign files
        return [
            Problem(
                shard.url, f"corrupt or truncated Parquet file: {' '.join(str(exc).split())}", kind="corrupt"
            )
        ]
    shard.num_rows = md.num_rows
    shard.row_groups = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
    raw = (schema.metadata or {}).get(b"handfirst.schema_version")
    shard.schema_version = raw.decode() if raw else None
    return [Problem(shard.url, r, kind="schema") for r in schema_problems(schema, table)]


def damaged_file(fs, path: str, stats: dict) -> str | None:
    """Why the table file `path` of a shard whose stats file is `stats` cannot be trusted, or None.

    Checks only what is cheap: the file exists, its size is the `bytes` its stats recorded, and its
    Parquet footer reads and holds the recorded `rows` (no row group is read).
    """
    try:
        size = fs.size(path)
    except FileNotFoundError:
        return "its Parquet file is missing"
    if stats.get("bytes") is not None and size != stats["bytes"]:
        return f"its Parquet file has {size} bytes, its stats say {stats['bytes']} (truncated or overwritten)"
    try:
        with open_regular(fs, path, None) as f:
            rows = pq.ParquetFile(f).metadata.num_rows
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid / OSError for a bad footer
        return f"its Parquet footer cannot be read: {' '.join(str(exc).split())}"
    if stats.get("rows") is not None and rows != stats["rows"]:
        return f"its Parquet file holds {rows} rows, its stats say {stats['rows']}"
    return None


def mixed_settings_problem(url: str, shards: list[ShardFile]) -> Problem | None:
    """A problem if the shards' stats record more than one `config_fingerprint` (prep settings).

    Shards written under other row-shaping settings (crop size, heatmap size, ...) do not belong in
    one manifest: their rows differ in shape, and a reader would fail far from the cause.
    """
    groups: dict[str, list[str]] = {}
    for s in shards:
        fp = (s.stats or {}).get("config_fingerprint")
        if fp:
            groups.setdefault(fp, []).append(s.name[: -len(SHARD_SUFFIX)])
    if len(groups) < 2:
        return None
    parts = "; ".join(
        f"{fp}: {', '.join(names[:3])}{f' and {len(names) - 3} more' if len(names) > 3 else ''}"
        for fp, names in sorted(groups.items(), key=lambda kv: kv[1][0])
    )
    return Problem(
        url,
        f"shards written under {len(groups)} different prep settings (config_fingerprint {parts}); "
        "rerun prep on this output with --overwrite to redo it under one",
        kind="settings",
    )


def shard_table(schema: pa.Schema, default: str | None = None) -> str | None:
    raw = (schema.metadata or {}).get(b"handfirst.table")
    return raw.decode() if raw else default


def list_shards(fs, path: str) -> tuple[list[str], list[str]]:
    """(shard names, unexpected names) in a table directory; names starting with `_` or `.` are ignored."""
    names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
    visible = [n for n in names if not n.startswith(("_", "."))]
    return [n for n in visible if n.endswith(SHARD_SUFFIX)], [
        n for n in visible if not n.endswith(SHARD_SUFFIX)
    ]


def infer_table(fs, path: str) -> str | None:
    """Which table a table directory holds: from its `_manifest.json`, else from a shard's metadata."""
    mpath = join(path, MANIFEST_FILE)
    if fs.exists(mpath):
        try:
            t = read_json(fs, mpath).get("table")
            if t in TABLES:
                return t
        except Exception:
            pass
    shards, _ = list_shards(fs, path)
    for name in shards:
        try:
            with open_regular(fs, join(path, name), None) as f:
                t = shard_table(pq.read_schema(f))
            if t in TABLES:
                return t
        except Exception:
            continue
    return None


def scan_table(fs, path: str, table: str, require_manifest: bool = True) -> TableScan:
    """List and check one table directory; every problem found is in the result, nothing is raised."""
    url = url_for(fs, path)
    problems: list[Problem] = []
    if not fs.isdir(path):
        return TableScan(
            table,
            path,
            url,
            [],
            None,
            [Problem(url, f"table directory for {table!r} is missing", kind="missing")],
        )
    names, unexpected = list_shards(fs, path)
    for n in unexpected:
        problems.append(
            Problem(
                join(url, n),
                "unexpected file in a table directory (readers would try to load it)",
                kind="layout",
            )
        )
    shards = [
        ShardFile(n, join(path, n), join(url, n), join(path, STATS_DIR, n[: -len(SHARD_SUFFIX)] + ".json"))
        for n in names
    ]

    # Footers: one small read per shard, in threads so remote stores are not read one by one.
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(shards)))) as pool:
        for found in pool.map(lambda s: _read_footer(fs, s, table), shards):
            problems.extend(found)

    for s in shards:
        stats_url = url_for(fs, s.stats_path)
        if not fs.exists(s.stats_path):
            problems.append(
                Problem(
                    stats_url,
                    f"stats file missing: shard {s.name} is incomplete or its stats were lost",
                    kind="missing",
                )
            )
            continue
        s.stats, problem = read_json_object(fs, s.stats_path, "stats file")
        if problem is not None:
            problems.append(problem)
            continue
        if s.num_rows is not None and s.stats.get("rows") != s.num_rows:
            problems.append(
                Problem(
                    s.url, f"{s.num_rows} rows, but {stats_url} says {s.stats.get('rows')}", kind="counts"
                )
            )
    mixed = mixed_settings_problem(url, shards)
    if mixed is not None:
        problems.append(mixed)
    stats_dir = join(path, STATS_DIR)
    if fs.isdir(stats_dir):
        have = {s.name[: -len(SHARD_SUFFIX)] for s in shards}
        for p in fs.ls(stats_dir, detail=False):
            stem = p.rstrip("/").rsplit("/", 1)[-1].removesuffix(".json")
            if stem.startswith("shard-") and stem not in have:
                problems.append(
                    Problem(
                        url_for(fs, p), f"stats file without its shard {stem}{SHARD_SUFFIX}", kind="missing"
                    )
                )

    info = None
    mpath = join(path, MANIFEST_FILE)
    murl = url_for(fs, mpath)
    if not fs.exists(mpath):
        if require_manifest:
            problems.append(
                Problem(murl, "_manifest.json missing: the manifest was never finalized", kind="missing")
            )
    else:
        info, problem = read_json_object(fs, mpath, "_manifest.json")
        if problem is not None:
            problems.append(problem)
    if info is not None:
        problems.extend(_manifest_problems(info, murl, table, shards, url))
    return TableScan(table, path, url, shards, info, problems)


def _manifest_problems(info: dict, murl: str, table: str, shards: list[ShardFile], url: str) -> list[Problem]:
    problems = []
    version = str(info.get("schema_version"))
    try:
        same_major = version_tuple(version)[:1] == version_tuple(SCHEMA_VERSION)[:1]
    except ValueError:
        same_major = False
    if not same_major:
        problems.append(
            Problem(
                murl, f"schema version {version}, but this code reads version {SCHEMA_VERSION}", kind="schema"
            )
        )
    if info.get("table", table) != table:
        problems.append(
            Problem(murl, f"describes table {info.get('table')!r}, expected {table!r}", kind="layout")
        )
    listed = info.get("shards", {})
    if not isinstance(listed, dict) or not all(isinstance(n, int) for n in listed.values()):
        problems.append(
            Problem(
                murl, f"'shards' must map shard names to row counts, got {_short(listed)}", kind="corrupt"
            )
        )
        listed = {}
    present = {s.name: s for s in shards}
    for name in sorted(set(listed) - set(present)):
        problems.append(Problem(join(url, name), f"shard listed in {murl} is missing", kind="missing"))
    for name in sorted(set(present) - set(listed)):
        problems.append(
            Problem(join(url, name), f"shard not listed in {murl} (written after finalize?)", kind="counts")
        )
    for name in sorted(set(listed) & set(present)):
        rows = present[name].num_rows
        if rows is not None and listed[name] != rows:
            problems.append(
                Problem(present[name].url, f"{rows} rows, but {murl} says {listed[name]}", kind="counts")
            )
    total = sum(s.num_rows or 0 for s in shards)
    if "num_rows" in info and info["num_rows"] != total and all(s.num_rows is not None for s in shards):
        problems.append(
            Problem(murl, f"num_rows is {info['num_rows']}, but the shards hold {total} rows", kind="counts")
        )
    return problems


def root_problems(fs, path: str, scans: dict[str, TableScan]) -> tuple[dict | None, list[Problem]]:
    """Check the root `_manifest.json` against the tables it summarises."""
    mpath = join(path, MANIFEST_FILE)
    murl = url_for(fs, mpath)
    if not fs.exists(mpath):
        return None, [
            Problem(murl, "_manifest.json missing: the manifest was never finalized", kind="missing")
        ]
    info, problem = read_json_object(fs, mpath, "_manifest.json")
    if problem is not None:
        return None, [problem]
    problems = []
    try:
        same_major = version_tuple(str(info.get("schema_version")))[:1] == version_tuple(SCHEMA_VERSION)[:1]
    except ValueError:
        same_major = False
    if not same_major:
        problems.append(
            Problem(
                murl,
                f"schema version {info.get('schema_version')}, but this code reads version {SCHEMA_VERSION}",
                kind="schema",
            )
        )
    tables = info.get("tables", {})
    if not isinstance(tables, dict):
        problems.append(
            Problem(
                murl, f"'tables' must be an object keyed by table name, got {_short(tables)}", kind="corrupt"
            )
        )
        tables = {}
    for t, scan in scans.items():
        summary = tables.get(t)
        if not isinstance(summary, (dict, type(None))):
            problems.append(
                Problem(
                    murl, f"summary of table {t!r} must be an object, got {_short(summary)}", kind="corrupt"
                )
            )
        elif summary is None:
            problems.append(Problem(murl, f"no summary for table {t!r}", kind="counts"))
        elif all(s.num_rows is not None for s in scan.shards) and summary.get("num_rows") != scan.num_rows:
            problems.append(
                Problem(
                    murl,
                    f"says {t} has {summary.get('num_rows')} rows, but its shards hold {scan.num_rows}",
                    kind="counts",
                )
            )
    return info, problems


def _short(value, limit: int = 60) -> str:
    """A JSON value for a message: its type and a bounded repr."""
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= limit else text[:limit] + '...'}"


def raise_for(problems: list[Problem], limit: int = 20) -> None:
    """Raise the exception for the first problem's kind, listing up to `limit` problems."""
    if not problems:
        return
    lines = [str(p) for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"... and {len(problems) - limit} more (run `python -m manifests validate` for all)")
    raise PROBLEM_ERRORS.get(problems[0].kind, ManifestError)("\n".join(lines))
