"""Sources read unit by unit: one tar, or one Parquet row group, is the input of one shard.

Datasets that the ecosystem has already downloaded (img2dataset's webdataset tars and Parquet files)
can hold millions of samples. Listing every sample on the driver before the first shard starts would
read all of them twice and hold every record in the driver's memory. Instead the driver lists only
the *units* (cheaply: file names from a brace pattern, a glob or a folder, and Parquet footers), the
shard index is the unit's position in that list, and the worker task expands its unit into records
(`UnitSource.expand`) and annotates them as it reads them. Resume and the fingerprint checks work as
for record shards: a unit's shard fingerprint hashes the unit's file, part and sample cap.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from itertools import islice
from typing import TYPE_CHECKING

from manifests.names import safe_name
from manifests.storage import url_to_fs

from ..records import ImageRecord
from .base import dedupe, error_record, is_hidden, relative, run_outputs, to_uri

if TYPE_CHECKING:
    from ..config import PrepConfig

logger = logging.getLogger(__name__)

GLOB_CHARS = re.compile(r"[*?\[]")
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
# Most names a brace pattern may expand to (img2dataset writes one tar per 10k samples: 10 billion samples).
MAX_PATTERN_NAMES = 1_000_000


@dataclass(frozen=True)
class SourceUnit:
    """One shard's input: a file (local path or fsspec URL) and, for Parquet, one row group of it."""

    uri: str
    part: int | None = None  # Parquet row group; None: the whole file (a tar)
    count: int | None = None  # samples in the unit, when known from metadata (Parquet footers)
    first: int = 0  # position of the unit's first row in its file (row ids of keyless Parquet tables)
    take: int | None = None  # --limit: expand at most this many samples
    file_label: str | None = None  # the file's name among the input's files (`unit_labels`); None: its stem

    @property
    def name(self) -> str:
        """A short, filename-safe name of the unit, unique among the input's units: `00012` for
        `.../00012.tar`, `part-3_rg2` for a row group, `x__part_rg0` for `x/part.parquet` beside
        `y/part.parquet`. It qualifies the ids of the unit's samples (`expand_unit`)."""
        stem = self.file_label or posixpath.splitext(posixpath.basename(self.uri.rstrip("/")))[0]
        return safe_name(stem if self.part is None else f"{stem}_rg{self.part}")

    @property
    def num_images(self) -> int | None:
        return self.count if self.take is None else min(self.take, self.count or self.take)

    def identity(self) -> str:
        return f"{self.uri}\0{self.part}\0{self.take}\0ids:{self.name}"


def unit_labels(units: list[SourceUnit]) -> list[SourceUnit]:
    """The units, each file named so that no two files share a name: by its stem, or, when two
    stems clash (`x/part.parquet`, `y/part.parquet`), by its path below the files' common folder."""
    uris = list(dict.fromkeys(u.uri for u in units))
    stems = {uri: posixpath.splitext(posixpath.basename(uri.rstrip("/")))[0] for uri in uris}
    if len(set(stems.values())) == len(stems):
        return units
    common = posixpath.commonpath([posixpath.dirname(u) for u in uris]) if len(uris) > 1 else ""
    labels = {uri: posixpath.splitext(posixpath.relpath(uri, common or "/"))[0] for uri in uris}
    return [replace(u, file_label=labels[u.uri]) for u in units]


@dataclass(frozen=True)
class UnitSource:
    """A source adapter read by units: `units` runs on the driver, `expand` inside the worker task."""

    units: Callable[[PrepConfig], list[SourceUnit]]
    expand: Callable[[SourceUnit, PrepConfig], Iterator[ImageRecord]]


def unit_fingerprint(unit: SourceUnit, config: PrepConfig) -> str:
    """The shard fingerprint of a unit's shard: the row-shaping settings and the unit's identity."""
    h = hashlib.sha1(config.fingerprint().encode())
    h.update(b"\0unit\0" + unit.identity().encode())
    return h.hexdigest()[:16]


def expand_braces(pattern: str) -> Iterator[str]:
    """Brace expansion as webdataset and img2dataset write shard lists: `{00000..00099}` (zero padding
    kept) and `{a,b}`, nested and repeated; text without braces is returned as is. Lazy: names are
    made one at a time."""
    match = _BRACE.search(pattern)
    if match is None:
        yield pattern
        return
    body, head, tail = match.group(1), pattern[: match.start()], pattern[match.end() :]
    if r := _RANGE.match(body):
        lo, hi = int(r.group(1)), int(r.group(2))
        width = len(r.group(1)) if r.group(1).startswith("0") else 0
        step = 1 if hi >= lo else -1
        options = (f"{n:0{width}d}" for n in range(lo, hi + step, step))
    else:
        options = iter(body.split(","))
    for option in options:
        yield from expand_braces(head + option + tail)


def _glob_base(path: str) -> str:
    """The folder a glob pattern's matches lie under: its part before the first wildcard."""
    return posixpath.dirname(path[: GLOB_CHARS.search(path).start()])


def input_files(
    spec: str, suffixes: tuple[str, ...], what: str, config: PrepConfig | None = None
) -> list[str]:
    """The files an `--input` names, as URIs a worker opens, in order: a brace pattern's expansion
    (in its own order, at most `MAX_PATTERN_NAMES` names), a glob's or a folder's files ending in
    `suffixes` (sorted; in a folder, hidden names below it are skipped), or one file. With `config`,
    what the run writes (`--out`, `--preview`) is never among them.

    Raises FileNotFoundError naming the input when nothing matches or a listed file is missing, and
    ValueError for a brace pattern of more than `MAX_PATTERN_NAMES` names.
    """
    if sum(1 for _ in islice(expand_braces(str(spec)), MAX_PATTERN_NAMES + 1)) > MAX_PATTERN_NAMES:
        raise ValueError(
            f"{what} input {spec}: its braces name more than {MAX_PATTERN_NAMES} files; "
            "split the input into several runs, or name a folder or a glob"
        )
    files: list[str] = []
    missing, first_missing = 0, None
    for item in expand_braces(str(spec)):
        # url_to_fs, unlike `open_input`, leaves a glob unexpanded, so that it is matched below.
        local = "://" not in item
        fs, path = url_to_fs(os.path.abspath(os.path.expanduser(item)) if local else item)
        if GLOB_CHARS.search(path):
            base = _glob_base(path)
            written = run_outputs(config, fs, base) if config else (lambda rel: False)
            found = sorted(
                p
                for p in fs.glob(path)
                if p.lower().endswith(suffixes) and not written(relative(p, base)) and fs.isfile(p)
            )
        elif fs.isdir(path):
            written = run_outputs(config, fs, path) if config else (lambda rel: False)
            found = sorted(
                p
                for p in fs.find(path)
                if p.lower().endswith(suffixes)
                and not is_hidden(rel := relative(p, path))
                and not written(rel)
            )
        elif fs.isfile(path):
            found = [path]
        else:
            missing += 1
            first_missing = first_missing or item
            continue
        files.extend(to_uri(fs, p) for p in found)
    if missing:
        raise FileNotFoundError(
            f"{what} input not found: {first_missing}"
            + (f" (and {missing - 1} more of {spec})" if missing > 1 else "")
        )
    if not files:
        raise FileNotFoundError(f"no {'/'.join(suffixes)} files found in {spec} ({what} input)")
    return files


def apply_limit(units: list[SourceUnit], limit: int | None) -> list[SourceUnit]:
    """The units that hold the first `limit` samples, the last one capped. A unit whose size is
    unknown (a tar) is taken whole up to the cap and ends the list: it may hold fewer samples."""
    if limit is None:
        return units
    out, left = [], limit
    for unit in units:
        if left <= 0:
            break
        take = left if unit.count is None or unit.count > left else None
        out.append(unit if take is None else replace(unit, take=take))
        left = 0 if unit.count is None else left - unit.count
    return out


def expand_unit(source: UnitSource, unit: SourceUnit, config: PrepConfig) -> Iterator[ImageRecord]:
    """The unit's records, at most `unit.take` of them, each id qualified by the unit's name
    (`{unit}__{key}`): ids are unique within a unit (`dedupe`) and unit names among the input's units,
    so two tars with the same keys, or one key in two row groups, never write one id twice. The
    sample's own key stays in `source_key`.

    A unit that stops being readable part way (a truncated tar, a corrupt row group) ends with one
    error record naming the unit and the reason, so the samples read before it are kept and the
    shard says what was lost. An OSError (the store did not answer) is raised instead, so that the
    task is retried rather than recorded as complete.
    """
    n = 0
    try:
        for record in dedupe(source.expand(unit, config)):
            if unit.take is not None and n >= unit.take:
                return
            n += 1
            yield replace(record, image_id=f"{unit.name}__{record.image_id}")
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged container becomes an error row, not a lost shard
        message = f"{unit.uri}: unreadable after {n} samples: {type(exc).__name__}: {exc}"
        logger.warning(message)
        yield error_record(f"{unit.name}__unreadable", unit.uri, config.format, message, split=config.split)


def all_records(source: UnitSource) -> Callable[[PrepConfig], Iterator[ImageRecord]]:
    """A plain `SOURCES` adapter over a unit source: every unit expanded in order (small inputs, tests)."""

    def records(config: PrepConfig) -> Iterator[ImageRecord]:
        for unit in unit_labels(source.units(config)):
            yield from expand_unit(source, unit, config)

    return records
