"""Names that become file names: image ids, generated image names, spec and photo stems.

A manifest's ``image_id`` names files downstream (``handfirst-gen generate`` writes ``<image_id>.png``,
``evaluate`` reads it back), and so do the names of pose specs, photos and replayed sidecars. Any of
them may come from a file someone else wrote, so every such name passes `check_name` before it is
joined to a folder: a name is one plain path component that stays inside the folder on every
platform. `safe_name` is the other half: it turns any text (a relative image path, a dataset's id)
into a name `check_name` accepts. Both live here, in the contract package, so that prep (which makes
the ids), validation (which reports bad ones) and generation (which writes files named by them)
apply the same rule.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata

# Longest accepted name, in UTF-8 bytes. Writers add suffixes such as ``_overview.png``; 200 keeps
# name plus suffix under the 255-byte limit of common filesystems.
MAX_NAME_BYTES = 200
# `safe_name` keeps its result this much shorter, so that the suffixes prep appends to an id it made
# (``-<hash>`` for colliding file names, ``__dup<n>`` for duplicates, ``_h<i>`` for hand ids) still
# leave a name `check_name` accepts.
SAFE_NAME_BYTES = MAX_NAME_BYTES - 40

# Separators of POSIX and Windows paths, and ':' (drive letters ``C:``, URLs, NTFS streams ``a:b``).
_SEPARATORS = ("/", "\\", ":")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class UnsafeNameError(ValueError):
    """A name that would become a file name is not one plain, safe path component."""


def name_problem(name) -> str | None:
    """Why `name` cannot be used as a file name in a folder, or None when it can.

    Refused: non-strings, the empty string, text that is not valid UTF-8, names longer than
    `MAX_NAME_BYTES`, control characters (NUL included), path separators (``/``, ``\\``) and ``:``
    (so absolute paths, drive letters and URLs), and a leading ``.`` (``.``, ``..``, hidden files).
    """
    if not isinstance(name, str):
        return f"not a string ({type(name).__name__})"
    if not name:
        return "empty"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "not valid UTF-8 text"
    if size > MAX_NAME_BYTES:
        return f"{size} bytes long, more than {MAX_NAME_BYTES}"
    control = sorted({f"U+{ord(c):04X}" for c in name if unicodedata.category(c) == "Cc"})
    if control:
        return f"contains control character(s) {', '.join(control)}"
    found = [s for s in _SEPARATORS if s in name]
    if found:
        return f"contains {' '.join(repr(s) for s in found)} (a path, drive or URL, not a plain name)"
    if name.startswith("."):
        return "starts with '.' (a relative path or a hidden file, not a plain name)"
    return None


def unsafe_name(name, what: str = "name") -> str | None:
    """The one-line refusal of `name` (saying `what` it is and why), or None when it is safe."""
    problem = name_problem(name)
    return None if problem is None else f"{what} {name!r} is not a safe file name: {problem}"


def check_name(name, what: str = "name") -> str:
    """`name` itself when it is a safe file name; else `UnsafeNameError` with `unsafe_name`'s message."""
    message = unsafe_name(name, what)
    if message is not None:
        raise UnsafeNameError(message)
    return name


def path_in(folder: str, name, suffix: str = "", what: str = "name") -> str:
    """``folder/<name><suffix>`` for a `check_name`-safe `name` (the only way names become paths)."""
    return os.path.join(folder, check_name(name, what) + suffix)


def short_hash(text: str, n: int = 8) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:n]


def safe_name(text) -> str:
    """A safe file name made from any text: [A-Za-z0-9._-] kept, path separators become ``__``.

    When characters had to be replaced or dropped, when a path part itself contains the ``__``
    separator (so that ``a/b`` and a file named ``a__b`` would meet), or when the result had to be
    cut to `SAFE_NAME_BYTES`, an 8-hex hash of the original is appended so that the names stay
    distinct. The result always passes `check_name`.
    """
    text = str(text)
    parts = [p for p in text.replace("\\", "/").split("/") if p]
    cleaned = "__".join(_UNSAFE.sub("_", p) for p in parts).lstrip(".").rstrip(".") or "image"
    suffix = ""
    if cleaned != "__".join(parts) or any("__" in p for p in parts) or len(cleaned) > SAFE_NAME_BYTES:
        suffix = "-" + short_hash(text)
    # Only ASCII is kept, so characters and bytes are the same count here.
    return check_name(cleaned[: SAFE_NAME_BYTES - len(suffix)] + suffix)


__all__ = [
    "MAX_NAME_BYTES",
    "UnsafeNameError",
    "check_name",
    "name_problem",
    "path_in",
    "safe_name",
    "short_hash",
    "unsafe_name",
]
