"""fsspec helpers: every path in handfirst may be local or a URL (s3://, gs://, memory://, ...)."""

from __future__ import annotations

import json
import uuid

import fsspec

# Seconds a network filesystem may take to answer when it is opened (an FTP server that accepts the
# connection and never speaks would otherwise hold the run for minutes).
CONNECT_TIMEOUT = 10.0
# Options that bound the connection, per protocol whose filesystem takes them.
TIMEOUT_OPTIONS = {"ftp": "timeout", "sftp": "timeout"}


class StorageError(ValueError):
    """A path or URL whose filesystem cannot be opened: a missing package, bad options, no answer."""


def _options(url: str) -> dict:
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    key = TIMEOUT_OPTIONS.get(protocol)
    return {key: CONNECT_TIMEOUT} if key else {}


def _opened(url: str, open_fs):
    """`open_fs(options)`, with each way a filesystem fails to open as one `StorageError` naming `url`."""
    try:
        return open_fs(_options(url))
    except ImportError as exc:
        raise StorageError(f"{url}: this kind of URL needs a package that is not installed: {exc}") from None
    except TimeoutError:
        raise StorageError(f"{url}: no answer from the server within {CONNECT_TIMEOUT:g} s") from None
    except (TypeError, OSError) as exc:
        raise StorageError(
            f"{url}: cannot open it: {type(exc).__name__}: {' '.join(str(exc).split())}"
        ) from None


def filesystem(path: str):
    """(fs, stripped_path) for a local path or fsspec URL; `StorageError` when it cannot be opened."""
    fs, _, paths = _opened(
        str(path), lambda options: fsspec.get_fs_token_paths(str(path), storage_options=options)
    )
    return fs, paths[0]


def url_to_fs(url: str):
    """`fsspec.core.url_to_fs` (a glob stays unexpanded) with `filesystem`'s bounds and errors."""
    return _opened(str(url), lambda options: fsspec.core.url_to_fs(str(url), **options))


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
