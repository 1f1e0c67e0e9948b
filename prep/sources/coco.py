"""COCO-style keypoint JSON (the layout of `keypoints_gt/{freihand,onehand10k}`).

`images` give `id`, `file_name` (relative to the dataset root), `width`, `height`; `annotations` give
`image_id`, `keypoints` as a flat list of 21 x [x, y, v] in pixels (MediaPipe order), optional `bbox`
[x, y, w, h] and optional `handedness` / `hand_type` ("left" / "right").

- The annotation file is `config.annotations` (relative to the input or absolute), or the input itself
  when it is a file, or every `*.json` directly in the input folder or its `annotations/` folder.
  Images are resolved against the input folder (the file's folder when the input is a file).
- The split is `config.split`, else train/val/test when the file's name has it as a token.
- A file that is not valid JSON or lacks an `images` list stops the run before any work, naming the
  file. A malformed image or annotation entry becomes an error row naming the file and the entry.
- Annotations whose image_id is not among the images are reported in the log with their count.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from ..records import HandAnnotation, ImageRecord
from .base import (
    AnnotationFileError,
    by_image_id,
    describe,
    entry_list,
    error_record,
    expect,
    is_id,
    load_json,
    open_input,
    relative,
    safe_id,
    safe_relpath,
    split_from_name,
    to_uri,
)

if TYPE_CHECKING:
    from ..config import PrepConfig

logger = logging.getLogger(__name__)

NUM_KEYPOINTS = 21


def annotation_files(config: PrepConfig, suffix: str = ".json") -> tuple[object, str, list[str]]:
    """(fs, dataset root, annotation files) for coco-like inputs."""
    fs, path = open_input(config.input)
    if not fs.exists(path):
        raise FileNotFoundError(f"input not found: {config.input}")
    if fs.isfile(path):
        return fs, posixpath.dirname(path), [path]
    if config.annotations:
        ann = config.annotations
        ann_path = open_input(ann)[1] if ann.startswith("/") or "://" in ann else f"{path}/{ann}"
        if not fs.isfile(ann_path):
            raise FileNotFoundError(f"annotation file not found: {ann_path}")
        return fs, path, [ann_path]
    files = sorted(fs.glob(f"{path}/*{suffix}") + fs.glob(f"{path}/annotations/*{suffix}"))
    if not files:
        raise FileNotFoundError(
            f"no annotation file (*{suffix}) in {config.input} or its annotations/ folder"
        )
    return fs, path, files


def parse_hand(ann, what: str) -> HandAnnotation:
    expect(isinstance(ann, dict), f"{what}: annotation must be an object")
    kp = ann.get("keypoints")
    keypoints = None
    if kp is not None:
        arr = np.asarray(kp, dtype=np.float64).reshape(-1)
        expect(
            arr.size == NUM_KEYPOINTS * 3,
            f"{what}: {arr.size} keypoint values, expected {NUM_KEYPOINTS * 3} (21 x [x, y, v])",
        )
        expect(bool(np.isfinite(arr).all()), f"{what}: keypoints contain NaN or infinity")
        keypoints = arr.reshape(NUM_KEYPOINTS, 3).astype(np.float32)
    bbox = ann.get("bbox")
    if bbox is not None:
        b = np.asarray(bbox, dtype=np.float64)
        expect(
            b.shape == (4,) and bool(np.isfinite(b).all()),
            f"{what}: bbox must be 4 numbers [x, y, w, h], got {bbox!r}",
        )
        bbox = [b[0], b[1], b[0] + b[2], b[1] + b[3]]
    handed = ann.get("handedness", ann.get("hand_type"))
    return HandAnnotation(
        keypoints=keypoints, bbox=bbox, handedness=handed if handed in ("left", "right") else None
    )


def coco_records(config: PrepConfig) -> Iterator[ImageRecord]:
    fs, root, files = annotation_files(config)
    for path in files:
        data = load_json(fs, path)
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise AnnotationFileError(f"{path}: not COCO-style keypoint JSON (no 'images' list)")
        where = relative(path, root)
        split = config.split or split_from_name(path)
        by_image = by_image_id(entry_list(data, "annotations", path), path)
        known = set()
        for n, img in enumerate(data["images"]):
            what = f"{where} images[{n}]"
            raw_id = img.get("id") if isinstance(img, dict) else None
            usable = is_id(raw_id)
            if usable:
                known.add(raw_id)
            image_id = safe_id(str(raw_id) if usable else f"{posixpath.basename(path)}-{n}")
            name = img.get("file_name") if isinstance(img, dict) else None
            uri = str(name)
            try:
                expect(raw_id is not None, f"{what}: image entry has no 'id'")
                expect(usable, f"{what}: 'id' must be a string or integer, got {type(raw_id).__name__}")
                uri = to_uri(fs, safe_relpath(name, root, what))
                hands = [parse_hand(a, f"{where} annotations[{i}]") for i, a in by_image.get(raw_id, [])]
            except (ValueError, TypeError) as exc:
                yield error_record(
                    image_id, uri, "coco", describe(exc, what, where), split=split, label=_label(img)
                )
                continue
            yield ImageRecord(
                image_id=image_id,
                source_uri=uri,
                dataset="coco",
                split=split,
                label=_label(img),
                subject_id=_subject(img),
                hands=hands,
            )
        orphans = sum(len(v) for k, v in by_image.items() if k not in known)
        if orphans:
            logger.warning(
                "%s: %d annotations refer to image ids that are not in 'images'; they are ignored",
                path,
                orphans,
            )


def _label(img) -> str | None:
    value = img.get("label") if isinstance(img, dict) else None
    return str(value) if value is not None else None


def _subject(img) -> str | None:
    value = img.get("subject", img.get("subject_id")) if isinstance(img, dict) else None
    return str(value) if value is not None else None
