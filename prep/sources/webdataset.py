"""img2dataset's webdataset output: tar shards of `{key}.jpg`, `{key}.txt` (caption), `{key}.json`.

`--input` is one tar, a folder of tars, a glob or a brace pattern (`shards/{00000..00099}.tar`),
local or fsspec URLs. Each tar is one shard (`prep.sources.units`). img2dataset writes only the
samples it downloaded into the tar; every sample, failed ones included, is listed with its `status`
and `error_message` in the `{shard}.parquet` beside it. A sample whose status is not `success` (in its
`.json` or in that Parquet file) becomes an `error` row that says so, and a sample the Parquet file
lists as a success but the tar lacks (a truncated tar) becomes an error row too.

Read with the standard library's `tarfile` in streaming mode (`r|`) over an fsspec file: one
sequential pass, which is what an object store serves best, and no new dependency. The `webdataset`
package would also stream tars, but it opens URLs through its own `gopen` (shell pipes for remote
URLs) rather than fsspec, and decodes members itself, outside the byte and pixel bounds every other
source goes through (`prep.imageio`). Members are read only when they are regular files within
`max_file_bytes`.
"""

from __future__ import annotations

import logging
import posixpath
import tarfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pyarrow.parquet as pq

from manifests.storage import loads_json

from ..imageio import open_regular_file
from ..records import ImageRecord
from .base import IMAGE_EXTENSIONS, error_record, safe_id
from .parquet import row_group_rows
from .units import SourceUnit, UnitSource, input_files

if TYPE_CHECKING:
    from ..config import PrepConfig

logger = logging.getLogger(__name__)

SUCCESS = "success"
IMAGE_EXTS = tuple(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
TEXT_EXTS = ("txt", "json")
SIDECAR_COLUMNS = ("key", "status", "error_message", "url", "caption")


def tar_units(config: PrepConfig) -> list[SourceUnit]:
    return [SourceUnit(uri) for uri in input_files(config.input, (".tar",), "webdataset", config)]


def split_member(name: str) -> tuple[str, str]:
    """(key, extension) of a member as webdataset splits it: at the first dot of the base name."""
    folder, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(folder, stem), ext.lower()


def sidecar(tar_uri: str, config: PrepConfig) -> dict[str, dict]:
    """{key: row} of img2dataset's `{shard}.parquet` beside a tar ({} when there is none), read under the
    same caps as a Parquet input: a row with a value over `max_text_bytes` keeps only an error status."""
    uri = tar_uri[: -len(".tar")] + ".parquet"
    listed = {}
    try:
        with open_regular_file(uri, max_bytes=None) as f:
            pf = pq.ParquetFile(f)
            wanted = [c for c in SIDECAR_COLUMNS if c in pf.schema_arrow.names]
            if "key" not in wanted:
                return {}
            for group in range(pf.metadata.num_row_groups):
                for row, reasons in row_group_rows(f, group, wanted, config, SIDECAR_COLUMNS):
                    if row.get("key") is None:
                        if reasons:
                            logger.warning(
                                "%s: row group %d of the sample list is unread: %s", uri, group, reasons[0]
                            )
                            break
                        continue
                    if reasons:
                        row = {
                            "key": row["key"],
                            "status": "unreadable sample list",
                            "error_message": "; ".join(reasons),
                        }
                    listed[str(row["key"])] = row
    except Exception as exc:  # noqa: BLE001 - the sidecar is optional; the tar alone still reads
        if "file not found" not in str(exc):
            logger.warning("%s: ignoring img2dataset's sample list: %s", uri, exc)
        return {}
    return listed


def _samples(tar: tarfile.TarFile, max_bytes: int, max_text: int) -> Iterator[tuple[str, dict]]:
    """(key, {extension: bytes or an error string}) for each run of members that share a key.

    Only the members a record uses are read (images, `.txt`, `.json`); text members within `max_text`
    bytes, and all of a sample's members together within `max_bytes`, so a tar of sparse members
    cannot expand past the bounds."""
    key, parts, used = None, {}, 0
    for member in tar:
        k, ext = split_member(member.name)
        if k != key and key is not None:
            yield key, parts
            parts, used = {}, 0
        key = k
        if ext not in IMAGE_EXTS and ext not in TEXT_EXTS:
            continue
        cap, cap_name = (max_text, "max_text_bytes") if ext in TEXT_EXTS else (max_bytes, "max_file_bytes")
        if not member.isfile():
            parts[ext] = f"tar member {member.name} is not a regular file"
        elif member.size > cap:
            parts[ext] = f"tar member {member.name}: {member.size} bytes exceeds {cap_name}={cap}"
        elif used + member.size > max_bytes:
            parts[ext] = (
                f"tar member {member.name}: sample {posixpath.basename(k)} holds more than "
                f"max_file_bytes={max_bytes} in all its members"
            )
        else:
            parts[ext] = tar.extractfile(member).read(cap + 1)
            used += len(parts[ext])
    if key is not None:
        yield key, parts


def _text(value) -> str | None:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else None


def _record(
    key: str, parts: dict, meta_row: dict | None, unit: SourceUnit, config: PrepConfig
) -> ImageRecord:
    meta = {}
    if isinstance(parts.get("json"), bytes):
        try:
            meta = loads_json(parts["json"])
        except ValueError as exc:
            meta = {"status": "unreadable json", "error_message": str(exc)}
        meta = meta if isinstance(meta, dict) else {}
    meta = {**(meta_row or {}), **meta}
    ext = next((e for e in IMAGE_EXTS if e in parts), None)
    member = f"{key}.{ext or 'jpg'}"
    fields = dict(
        split=config.split,
        source_key=str(meta.get("key") or posixpath.basename(key)),
        source_url=meta.get("url"),
        source_caption=_text(parts.get("txt")) or meta.get("caption"),
    )
    uri = f"tar://{member}::{unit.uri}"
    image_id = safe_id(posixpath.basename(key))
    status = meta.get("status", SUCCESS)
    if status != SUCCESS:
        why = f"img2dataset status {status!r}" + (
            f": {meta['error_message']}" if meta.get("error_message") else ""
        )
        return error_record(image_id, uri, "webdataset", why, **fields)
    unread = [v for e, v in parts.items() if e in TEXT_EXTS and isinstance(v, str)]
    if unread:
        return error_record(image_id, uri, "webdataset", "; ".join(unread), **fields)
    data = parts.get(ext) if ext else None
    if not isinstance(data, bytes):
        why = data if isinstance(data, str) else f"sample {key} has no image member ({', '.join(IMAGE_EXTS)})"
        return error_record(image_id, uri, "webdataset", why, **fields)
    return ImageRecord(image_id=image_id, source_uri=uri, dataset="webdataset", data=data, **fields)


def tar_records(unit: SourceUnit, config: PrepConfig) -> Iterator[ImageRecord]:
    """The samples of one tar in member order, then those img2dataset listed but did not store."""
    listed = sidecar(unit.uri, config)
    seen = set()
    broken = None
    with open_regular_file(unit.uri, max_bytes=None) as f:
        try:
            with tarfile.open(fileobj=f, mode="r|") as tar:
                for key, parts in _samples(tar, config.max_file_bytes, config.max_text_bytes):
                    base = posixpath.basename(key)
                    seen.add(base)
                    yield _record(key, parts, listed.get(base), unit, config)
        except (tarfile.TarError, EOFError) as exc:  # truncated or corrupt: keep what was read
            broken = f"{type(exc).__name__}: {exc}"
    for key, row in listed.items():
        if key in seen:
            continue
        if row.get("status") == SUCCESS:
            where = f"the tar breaks off ({broken})" if broken else "the tar does not hold it"
            row = {
                **row,
                "status": "missing from the tar",
                "error_message": f"img2dataset lists it as a success, but {where}",
            }
        yield _record(key, {}, row, unit, config)
    if broken:  # samples past the break that no sample list names: one error row says so
        raise TarBrokenError(f"tar is truncated or corrupt after {len(seen)} samples ({broken})")


class TarBrokenError(ValueError):
    """A tar ends or breaks before its end-of-archive marker."""


WEBDATASET = UnitSource(tar_units, tar_records)
