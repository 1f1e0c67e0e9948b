"""HaGRID: images plus `annotations/{split}/{gesture}.json`, each keyed by image id.

One entry::

    "<image id>": {"bboxes": [[x, y, w, h], ...],      # normalised to the image size, one per hand
                   "labels": ["call", "no_gesture"],   # one per box
                   "landmarks" | "hand_landmarks": [[[x, y] * 21], ...],   # optional, normalised
                   "user_id": "...", "leading_hand": "right", "united_bbox": [...], ...}

Choices:
- Images are looked up as `{gesture}/{image id}.jpg` under the first folder that has the gesture's
  folder among: the root, `images/`, `hagrid_dataset/`, `hagrid_dataset_512/`, or as `train_val_{gesture}/`
  (the v1 download). A missing file is not checked here: it becomes an error row when read.
- Split (`hagrid_split`): "user" (default) puts every image of one `user_id` in the same split by a
  stable hash of the id, with `split_fractions`, so no person is in two splits whatever the annotation
  folders say; "annotation" keeps the `annotations/{split}/` folder name. `config.split` overrides both.
- Coordinates stay normalised in the record (`normalized=True`): the annotator converts them to
  pixels after decoding the image, so listing 550k images opens none of them and each is read once.
- `leading_hand` (v1) sets the handedness of the one hand whose label is the gesture; other hands
  get none. `united_bbox` and `meta` are not used.
- A file that is not valid JSON, or not an object keyed by image id, stops the run before any work
  with an error naming the file (its images cannot even be listed). A malformed entry inside a valid
  file becomes an error row naming the file and the image id.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from ..records import HandAnnotation, ImageRecord
from .base import (
    AnnotationFileError,
    describe,
    error_record,
    expect,
    load_json,
    open_input,
    relative,
    safe_id,
    safe_relpath,
    to_uri,
)

if TYPE_CHECKING:
    from ..config import PrepConfig

logger = logging.getLogger(__name__)

IMAGE_DIRS = ("{root}/{gesture}", "{root}/images/{gesture}", "{root}/hagrid_dataset/{gesture}",
              "{root}/hagrid_dataset_512/{gesture}", "{root}/train_val_{gesture}", "{root}/images/train_val_{gesture}")  # fmt: skip
NO_GESTURE = "no_gesture"


def split_for_user(user_id: str, fractions: dict) -> str:
    """Stable split of a person: sha1(user_id) as a number in [0, 1) against cumulative fractions."""
    total = sum(fractions.values())
    expect(total > 0, f"split_fractions must have a positive sum, got {fractions}")
    u = int.from_bytes(hashlib.sha1(str(user_id).encode()).digest()[:8], "big") / 2**64
    acc = 0.0
    for name, frac in fractions.items():
        acc += frac / total
        if u < acc:
            return name
    return list(fractions)[-1]


def _image_dir(fs, root: str, gesture: str) -> str | None:
    for pattern in IMAGE_DIRS:
        d = pattern.format(root=root, gesture=gesture)
        if fs.isdir(d):
            return d
    return None


def _points(value, what: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    expect(
        arr.ndim == 2 and arr.shape[0] == 21 and arr.shape[1] in (2, 3),
        f"{what}: expected 21 [x, y] points, got shape {arr.shape}",
    )
    kp = np.ones((21, 3), dtype=np.float32)
    kp[:, :2] = arr[:, :2]
    return kp


def parse_entry(entry, gesture: str, what: str) -> tuple[list[HandAnnotation], str | None]:
    """(hands with normalised coordinates, user_id) from one annotation entry; ValueError if malformed."""
    expect(isinstance(entry, dict), f"{what}: entry must be an object, got {type(entry).__name__}")
    boxes = entry.get("bboxes", [])
    labels = entry.get("labels", [None] * len(boxes) if isinstance(boxes, list) else None)
    marks = entry.get("hand_landmarks", entry.get("landmarks")) or []
    expect(isinstance(boxes, list) and isinstance(labels, list), f"{what}: bboxes and labels must be lists")
    expect(isinstance(marks, list), f"{what}: landmarks must be a list, got {type(marks).__name__}")
    expect(len(labels) == len(boxes), f"{what}: {len(boxes)} bboxes but {len(labels)} labels")
    expect(len(marks) in (0, len(boxes)), f"{what}: {len(boxes)} bboxes but {len(marks)} landmark lists")
    leading = entry.get("leading_hand")
    gesture_hands = [i for i, lab in enumerate(labels) if lab == gesture and lab != NO_GESTURE]
    hands = []
    for i, box in enumerate(boxes):
        b = np.asarray(box, dtype=np.float64)
        expect(
            b.shape == (4,) and np.isfinite(b).all(),
            f"{what}: bbox {i} must be 4 numbers [x, y, w, h], got {box!r}",
        )
        x, y, w, h = b.tolist()
        mark = marks[i] if i < len(marks) else None
        expect(
            mark is None or isinstance(mark, list), f"{what}: landmarks {i} must be a list of [x, y] points"
        )
        kp = _points(mark, f"{what}: landmarks {i}") if mark else None
        handed = leading if leading in ("left", "right") and gesture_hands == [i] else None
        hands.append(HandAnnotation(keypoints=kp, bbox=[x, y, x + w, y + h], handedness=handed))
    user = entry.get("user_id")
    return hands, (str(user) if user is not None else None)


def hagrid_records(config: PrepConfig) -> Iterator[ImageRecord]:
    fs, root = open_input(config.input)
    if not fs.isdir(root):
        raise FileNotFoundError(f"input folder not found: {config.input}")
    files = sorted(fs.glob(f"{root}/annotations/*/*.json"))
    if not files:
        raise FileNotFoundError(
            f"no HaGRID annotations under {config.input}: expected annotations/{{split}}/{{gesture}}.json"
        )
    if config.hagrid_split not in ("user", "annotation"):
        raise ValueError(f"hagrid_split must be 'user' or 'annotation', got {config.hagrid_split!r}")
    for path in files:
        folder_split = posixpath.basename(posixpath.dirname(path))
        gesture = posixpath.splitext(posixpath.basename(path))[0]
        data = load_json(fs, path)
        if not isinstance(data, dict):
            raise AnnotationFileError(
                f"{path}: expected an object keyed by image id, got {type(data).__name__}"
            )
        image_dir = _image_dir(fs, root, gesture)
        where = relative(path, root)
        for key in sorted(data):
            what = f"{where}[{key!r}]"
            image_id = safe_id(key)  # HaGRID ids are UUIDs; anything else is made filename-safe
            uri = f"{image_dir or root + '/' + gesture}/{key}.jpg"
            try:
                if image_dir is None:
                    raise FileNotFoundError(
                        f"{what}: no image folder for gesture {gesture!r} under {config.input}"
                    )
                uri = to_uri(fs, safe_relpath(f"{key}.jpg", image_dir, what))
                expect(
                    "/" not in key and "\\" not in key, f"{what}: image id must not contain path separators"
                )
                hands, user = parse_entry(data[key], gesture, what)
            except (ValueError, TypeError, FileNotFoundError) as exc:
                yield error_record(
                    image_id,
                    uri,
                    "hagrid",
                    describe(exc, what, where),
                    label=gesture,
                    split=config.split or folder_split,
                )
                continue
            if config.split:
                split = config.split
            elif config.hagrid_split == "user" and user is not None:
                split = split_for_user(user, config.split_fractions)
            else:  # no user_id: nothing ties the image to a person, the folder's split is as good as any
                split = folder_split
            yield ImageRecord(
                image_id=image_id,
                source_uri=uri,
                dataset="hagrid",
                split=split,
                label=gesture,
                subject_id=user,
                hands=hands,
                normalized=True,
            )
