"""A rerun that finds every shard complete need not parse the input again.

Planning a record source (folder, hagrid, coco, interhand) builds every record to fingerprint the
shards, and for HaGRID-style annotations that parse is most of a rerun's time (`bench/scale.py`:
7.0 of 7.9 s at 100k images). After planning, a run writes ``OUT/_prep_plan.json``: a key (the
row-shaping settings, format, input, annotation file, shard size, limit, and the name, size and
modification time of every file under the input, from one listing) and each shard's fingerprint and
image count. A later run whose key matches checks the shards against those fingerprints; when every
shard is complete and undamaged it skips the parse. Otherwise (a shard to do, a changed file, other
settings) it plans as before. Its name starts with ``_``, so readers ignore it.

Sources read by units plan from a listing already and are not cached.
"""

from __future__ import annotations

import hashlib
import json
import logging

from manifests.storage import join, read_json, write_json

from .config import PrepConfig
from .sources import UNIT_SOURCES
from .sources.base import open_input, relative, run_outputs

logger = logging.getLogger(__name__)

PLAN_FILE = "_prep_plan.json"
VERSION = 1


def input_state(config: PrepConfig) -> str | None:
    """A hash of everything the plan depends on, from one listing of the input; None for sources
    read by units, or when the input cannot be listed (planning then reports why)."""
    if config.format in UNIT_SOURCES:
        return None
    try:
        fs, root = open_input(config.input)
        if fs.isdir(root):
            written = run_outputs(config, fs, root)  # this run's own output, when it is inside the input
            entries = {p: i for p, i in fs.find(root, detail=True).items() if not written(relative(p, root))}
        else:
            entries = {root: fs.info(root)}
        extra = {}
        if config.annotations:
            afs, apath = open_input(config.annotations)
            extra = {apath: afs.info(apath)}
    except (OSError, ValueError):
        return None
    h = hashlib.sha1()
    key = [
        VERSION,
        config.fingerprint(),
        config.format,
        str(config.input),
        config.annotations,
        config.shard_size,
        config.limit,
    ]
    h.update(json.dumps(key, default=str).encode())
    for path, info in sorted({**entries, **extra}.items()):
        changed = info.get("mtime") or info.get("LastModified") or info.get("ETag") or ""
        h.update(f"\0{path}\0{info.get('size')}\0{changed}".encode())
    return h.hexdigest()


def load(fs, path: str, state: str | None) -> list[tuple[int, str, int]] | None:
    """[(index, fingerprint, images)] of the plan saved under `state`, or None (no plan, another key)."""
    if state is None:
        return None
    try:
        saved = read_json(fs, join(path, PLAN_FILE))
        if not isinstance(saved, dict) or saved.get("state") != state:
            return None
        return [(int(i), str(fp), int(n)) for i, fp, n in saved["shards"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(fs, path: str, state: str | None, shards) -> None:
    """Record the plan of `shards` under `state`; a failure to write it only costs the next rerun a parse."""
    if state is None:
        return
    try:
        write_json(
            fs,
            join(path, PLAN_FILE),
            {"state": state, "shards": [[s.index, s.fingerprint, s.num_images] for s in shards]},
        )
    except OSError as exc:
        logger.warning("could not write %s: %s", join(path, PLAN_FILE), exc)
