"""fsspec helpers: every path in handfirst may be local or a URL (s3://, gs://, memory://, ...)."""

from __future__ import annotations

import json
import uuid

import fsspec


def filesystem(path: str):
    """(fs, stripped_path) for a local path or fsspec URL."""
    fs, _, paths = fsspec.get_fs_token_paths(str(path))
    return fs, paths[0]


def join(*parts: str) -> str:
    return "/".join(str(p).rstrip("/") for p in parts)


def atomic_write_bytes(fs, path: str, data: bytes) -> None:
    """Write to a hidden temporary name beside `path`, then rename, so readers never see half a file."""
    parent, name = path.rsplit("/", 1) if "/" in path else ("", path)
    tmp = join(parent, f".{name}.{uuid.uuid4().hex}.tmp") if parent else f".{name}.{uuid.uuid4().hex}.tmp"
    with fs.open(tmp, "wb") as f:
        f.write(data)
    fs.mv(tmp, path)


def write_json(fs, path: str, obj) -> None:
    atomic_write_bytes(fs, path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(fs, path: str):
    with fs.open(path, "rb") as f:
        return json.loads(f.read())


def is_local(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def url_for(fs, path: str) -> str:
    """Location to show in messages: the plain path for local files, the full URL otherwise."""
    return path if is_local(fs) else fs.unstrip_protocol(path)
