"""Helpers shared by the source adapters: safe paths, stable ids, annotation-file loading."""

from __future__ import annotations

import logging
import os
import posixpath
import re
from collections.abc import Callable, Iterable, Iterator

from manifests.names import safe_name
from manifests.names import short_hash as short_hash
from manifests.storage import filesystem, is_local, join, loads_json

from ..errors import ImageReadError
from ..imageio import open_regular_file
from ..records import ImageRecord

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
SPLIT_NAMES = ("train", "val", "test")

# Every id an adapter makes is a safe file name (generate writes ``<image_id>.png``); the rule and the
# reduction live in `manifests.names`, shared with validation and generation.
safe_id = safe_name


class AnnotationFileError(ValueError):
    """An annotation file as a whole cannot be used (unreadable, not JSON, wrong top-level shape)."""


class UnsafePathError(ValueError):
    """An annotation names an image outside the dataset root."""


def open_input(uri: str):
    """(fs, root path) for a dataset root given as a local path or fsspec URL (local paths made absolute)."""
    uri = str(uri)
    if "://" not in uri:
        uri = os.path.abspath(os.path.expanduser(uri))
    return filesystem(uri.rstrip("/") or "/")


def to_uri(fs, path: str) -> str:
    """A path as the worker should open it: plain for local files, with the protocol otherwise."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if protocol in ("file", "local") else fs.unstrip_protocol(path)


def relative(path: str, root: str) -> str:
    return posixpath.relpath(path, root) if root else path


def is_hidden(rel: str) -> bool:
    """Whether a path relative to the input root has a part starting with `.` (hidden below the root;
    the folders above the root, such as ``~/.cache``, do not count)."""
    return any(part.startswith(".") for part in rel.split("/"))


def _location(fs, uri: str) -> str | None:
    """`uri` as a path on `fs` (local paths absolute, symlinks resolved), None when it is on another
    filesystem."""
    if "://" not in uri and is_local(fs):
        return os.path.realpath(os.path.expanduser(uri))
    other, path = filesystem(uri)
    return path if other.protocol == fs.protocol else None


def run_outputs(config, fs, root: str) -> Callable[[str], bool]:
    """A test of paths relative to the input root `root`: True for what a run writes under it (the
    `--out` folder and the `--preview` file), which is never read as input."""
    base = os.path.realpath(root) if is_local(fs) else root
    inside = []
    for target in (config.out, getattr(config, "preview", None)):
        where = _location(fs, str(target)) if target else None
        rel = posixpath.relpath(where, base) if where else ".."
        if rel != ".." and not rel.startswith("../"):
            inside.append(rel)
    return lambda rel: any(rel == r or rel.startswith(r + "/") or r == "." for r in inside)


def safe_relpath(name, root: str, what: str) -> str:
    """`root`/`name` for a path read from an annotation file; refuse anything that could leave `root`.

    Raises UnsafePathError for absolute paths, URLs, drive letters and any `..` component (backslashes
    count as separators, so Windows-style traversal is refused too).
    """
    if not isinstance(name, str) or not name.strip():
        raise UnsafePathError(f"{what}: image path {name!r} is empty or not a string")
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or "://" in name or re.match(r"^[A-Za-z]:", name):
        raise UnsafePathError(
            f"{what}: image path {name!r} is absolute; paths must be relative to the dataset root"
        )
    if ".." in parts:
        raise UnsafePathError(f"{what}: image path {name!r} leaves the dataset root ('..' is refused)")
    clean = posixpath.normpath("/".join(p for p in parts if p not in ("", ".")))
    return join(root, clean)


def split_from_name(name: str) -> str | None:
    """train/val/test when it is a token of an annotation file's name (test_freihand.json -> test)."""
    tokens = re.split(r"[^a-z0-9]+", posixpath.basename(name).lower())
    for split in SPLIT_NAMES:
        if split in tokens:
            return split
    return None


def load_json(fs, path: str):
    """Parse one annotation file; any failure names the file (and the position for bad JSON).

    Only a regular file is read: a FIFO would block the run forever and a link to a device such as
    /dev/zero would never end.
    """
    uri = to_uri(fs, path)
    try:
        with open_regular_file(uri, max_bytes=None) as f:
            raw = f.read()
    except (ImageReadError, OSError) as exc:
        reason = str(exc).removeprefix(f"{uri}: ")
        raise AnnotationFileError(f"{path}: cannot read annotation file: {reason}") from exc
    try:
        return loads_json(raw)
    except ValueError as exc:  # bad JSON, bad UTF-8, or nested too deeply for the parser
        raise AnnotationFileError(f"{path}: malformed annotation JSON: {exc}") from exc


def is_id(value) -> bool:
    """Whether an id read from an annotation file can key a lookup: a string or an integer (not a bool)."""
    return isinstance(value, (str, int)) and not isinstance(value, bool)


def entry_list(data: dict, key: str, path: str) -> list:
    """`data[key]` as a list (absent or null: empty); any other type stops the run naming the file."""
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise AnnotationFileError(f"{path}: {key!r} must be a list, got {type(value).__name__}")
    return value


def by_image_id(annotations: list, path: str) -> dict:
    """image id -> [(index, annotation)]; entries without a usable `image_id` are logged with their count."""
    out: dict = {}
    bad = []
    for n, ann in enumerate(annotations):
        key = ann.get("image_id") if isinstance(ann, dict) else None
        if is_id(key):
            out.setdefault(key, []).append((n, ann))
        else:
            bad.append(n)
    if bad:
        logger.warning(
            "%s: %d annotations have no usable image_id (a string or integer), e.g. annotations[%d]; they are ignored",
            path,
            len(bad),
            bad[0],
        )
    return out


def expect(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def describe(exc: Exception, what: str, where: str) -> str:
    """An exception's message, prefixed with `what` (file and entry) unless it already names the file `where`."""
    message = str(exc)
    return message if message.startswith(where) else f"{what}: {type(exc).__name__}: {message}"


def error_record(image_id: str, source_uri: str, dataset: str, message: str, **kw) -> ImageRecord:
    """A record the worker turns into an error row without opening anything."""
    return ImageRecord(image_id=image_id, source_uri=source_uri, dataset=dataset, error=message, **kw)


def dedupe(records: Iterable[ImageRecord]) -> Iterator[ImageRecord]:
    """Keep image ids unique: a repeated id becomes an error record `{id}__dup{n}` naming the first."""
    seen: dict[str, str] = {}
    counts: dict[str, int] = {}
    for r in records:
        if r.image_id in seen:
            counts[r.image_id] = n = counts.get(r.image_id, 0) + 1
            message = f"duplicate image_id {r.image_id!r} (first from {seen[r.image_id]}); this entry from {r.source_uri} is not processed"
            logger.warning(message)
            yield error_record(
                f"{r.image_id}__dup{n}", r.source_uri, r.dataset, message, split=r.split, label=r.label
            )
        else:
            seen[r.image_id] = r.source_uri
            yield r
