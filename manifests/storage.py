"""fsspec helpers: every path in handfirst may be local or a URL (s3://, gs://, memory://, ...).

Files that handfirst wrote itself (``_manifest.json``, stats files, prep's lock and plan) are read as
inputs are: only a regular file is opened (a FIFO would block, a link to ``/dev/zero`` would never
end), and no read asks for more than a cap plus one byte (`open_regular`, `read_bounded`, `read_json`).
JSON nested deeper than Python's parser can follow is a ValueError like any other malformed JSON.
"""

from __future__ import annotations

import json
import os
import re
import stat
import uuid

import fsspec

# Cap of a JSON file handfirst wrote itself: a `_manifest.json` lists every shard (about 40 bytes each),
# so a million shards fit; a stats file or a lock is far smaller.
MAX_JSON_BYTES = 64 * 2**20

# Temporary files of `atomic_write_bytes`: ``.{name}.{32 hex digits}.handfirst.tmp`` beside the target.
TEMP_SUFFIX = ".handfirst.tmp"
TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{32}" + re.escape(TEMP_SUFFIX) + "$")

# stat file-type test -> the words an error uses for what was found instead of a regular file.
SPECIAL_FILES = {
    stat.S_ISDIR: "a directory",
    stat.S_ISFIFO: "a FIFO (named pipe)",
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
    stat.S_ISSOCK: "a socket",
}


class NotRegularFileError(ValueError):
    """A path to be read names a directory, FIFO, device or socket, not a regular file."""


class FileTooLargeError(ValueError):
    """A file to be read is larger than the read's cap."""


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


def is_local(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def _special(mode: int) -> str:
    return next((words for test, words in SPECIAL_FILES.items() if test(mode)), "a special file")


def _not_regular(label: str, what: str) -> NotRegularFileError:
    return NotRegularFileError(f"{label}: {what}, not a regular file; only regular files are read")


def _too_big(label: str, size, max_bytes: int, limit_name: str) -> FileTooLargeError:
    return FileTooLargeError(f"{label}: {size} bytes exceeds {limit_name}={max_bytes}")


def open_regular(
    fs, path: str, max_bytes: int | None, label: str | None = None, limit_name: str = "max_bytes"
):
    """An open binary file for `path` on `fs`, once it is known to be a regular file of at most
    `max_bytes` (None: no size bound). `label` names the file in errors (default: the path).

    Local files: the first stat follows symlinks, so a link to /dev/zero is refused as the device it is;
    the open is non-blocking and re-checked with fstat, so a FIFO swapped in between cannot block.
    Other filesystems: their `info` must say "file". Raises NotRegularFileError, FileTooLargeError,
    FileNotFoundError or the filesystem's own OSError.
    """
    label = label or path
    if is_local(fs):
        path = fs._strip_protocol(path)
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise _not_regular(label, _special(info.st_mode))
        if max_bytes is not None and info.st_size > max_bytes:
            raise _too_big(label, info.st_size, max_bytes, limit_name)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise _not_regular(label, _special(mode))
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise
    info = fs.info(path)
    if info.get("type") != "file":
        raise _not_regular(label, f"{info.get('type') or 'unknown'} entry")
    size = info.get("size")
    if max_bytes is not None and size is not None and size > max_bytes:
        raise _too_big(label, size, max_bytes, limit_name)
    return fs.open(path, "rb")


def read_bounded(
    fs, path: str, max_bytes: int, label: str | None = None, limit_name: str = "max_bytes"
) -> bytes:
    """The bytes of the regular file `path`, refused (FileTooLargeError) beyond `max_bytes`, even when
    the size the filesystem gave was wrong: no read asks for more than `max_bytes + 1`."""
    with open_regular(fs, path, max_bytes, label, limit_name) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise _too_big(label or path, f"more than {max_bytes}", max_bytes, limit_name)
    return data


def loads_json(data: bytes | str):
    """`json.loads`, with JSON nested too deeply for the parser a ValueError like other malformed JSON."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply to parse") from None


def temporary_name(path: str) -> str:
    """The hidden temporary name `atomic_write_bytes` writes `path` under before renaming it."""
    parent, name = path.rsplit("/", 1) if "/" in path else ("", path)
    tmp = f".{name}.{uuid.uuid4().hex}{TEMP_SUFFIX}"
    return join(parent, tmp) if parent else tmp


def atomic_write_bytes(fs, path: str, data: bytes) -> None:
    """Write to a hidden temporary name beside `path` (`temporary_name`), then rename, so readers never
    see half a file."""
    tmp = temporary_name(path)
    with fs.open(tmp, "wb") as f:
        f.write(data)
    fs.mv(tmp, path)


def write_json(fs, path: str, obj) -> None:
    atomic_write_bytes(fs, path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(fs, path: str, max_bytes: int = MAX_JSON_BYTES):
    """The JSON value of a regular file of at most `max_bytes`; ValueError if it is not one."""
    return loads_json(read_bounded(fs, path, max_bytes))


def url_for(fs, path: str) -> str:
    """Location to show in messages: the plain path for local files, the full URL otherwise."""
    return path if is_local(fs) else fs.unstrip_protocol(path)
