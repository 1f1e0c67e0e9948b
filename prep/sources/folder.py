"""A plain folder of images, searched recursively (local or any fsspec filesystem).

With `label_from_dir` the gesture label is the name of each image's parent folder, which is the
`hagrid_mini` layout (`call/xxx.jpg`, `four/yyy.jpg`, ...). Hidden files and folders below the input
are skipped, and so are the run's own `--out` folder and `--preview` file when they lie inside it.
"""

from __future__ import annotations

import logging
import posixpath
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..records import ImageRecord
from .base import IMAGE_EXTENSIONS, is_hidden, open_input, relative, run_outputs, safe_id, short_hash, to_uri

if TYPE_CHECKING:
    from ..config import PrepConfig

logger = logging.getLogger(__name__)


def image_id_for(relpath: str) -> str:
    """Stable id from a path relative to the root: `call/0413.jpg` -> `call__0413`."""
    return safe_id(posixpath.splitext(relpath)[0])


def folder_records(config: PrepConfig) -> Iterator[ImageRecord]:
    fs, root = open_input(config.input)
    if not fs.isdir(root):
        raise FileNotFoundError(f"input folder not found: {config.input}")
    images, skipped = [], 0
    written = run_outputs(config, fs, root)
    for path in fs.find(root):
        rel = relative(path, root)
        if is_hidden(rel) or written(rel):
            continue
        if posixpath.splitext(rel)[1].lower() in IMAGE_EXTENSIONS:
            images.append(rel)
        else:
            skipped += 1
    if skipped:
        logger.info(
            "%s: skipped %d files without an image extension (%s)",
            config.input,
            skipped,
            ", ".join(sorted(IMAGE_EXTENSIONS)),
        )
    images.sort()
    ids = [image_id_for(rel) for rel in images]
    clashes = {i for i, n in Counter(ids).items() if n > 1}  # a.jpg and a.png: keep both, distinctly
    for rel, image_id in zip(images, ids):
        if image_id in clashes:
            image_id = f"{image_id}-{short_hash(rel)}"
        parent = posixpath.dirname(rel)
        yield ImageRecord(
            image_id=image_id,
            source_uri=to_uri(fs, posixpath.join(root, rel)),
            dataset="folder",
            split=config.split,
            label=posixpath.basename(parent) if config.label_from_dir and parent else None,
        )
