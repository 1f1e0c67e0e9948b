"""InterHand2.6M: COCO-style `*_data.json` plus `*_joint_3d.json` and `*_camera.json` beside it.

- `*_data.json`: `images` with `file_name`, `capture`, `camera`, `frame_idx`, `subject`;
  `annotations` with `image_id`, `joint_valid` (42 x [0/1]) and `hand_type`
  (right / left / interacting).
- `*_joint_3d.json`: `{capture: {frame_idx: {"world_coord": 42 x [X, Y, Z] mm, "joint_valid", ...}}}`.
  Joints 0-20 are the right hand and 21-41 the left. Within a hand each finger runs tip to base
  (thumb, index, middle, ring, little) and the wrist is last.
- `*_camera.json`: `{capture: {"campos"|"camrot"|"focal"|"princpt": {camera: ...}}}`.

2D points: `Xc = R (X - campos)`, `x = fx Xc/Zc + cx`, `y = fy Yc/Zc + cy`. The joints are reordered
to MediaPipe order (wrist, then each finger base to tip). A hand becomes a HandAnnotation when
`hand_type` includes it and at least one of its joints is valid; `v` is the joint's validity (0/1).

Images resolve against the data file's folder, or `images/{split}/` under the input (the official
layout). The split is `config.split`, else train/val/test from the data file's name.
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

# MediaPipe index -> InterHand index within one hand (wrist last; fingers tip to base).
INTERHAND_TO_MEDIAPIPE = np.array([20] + [4 * f + (3 - j) for f in range(5) for j in range(4)])
HANDS = (("right", 0), ("left", 21))


def project(world: np.ndarray, campos, camrot, focal, princpt) -> np.ndarray:
    """(N, 3) world mm -> (N, 3) [x, y, depth_mm] in pixels. Raises ValueError for points behind the camera."""
    cam = (np.asarray(camrot, dtype=np.float64) @ (world - np.asarray(campos, dtype=np.float64)).T).T
    z = cam[:, 2]
    expect(bool((z > 0).all()), "joints behind the camera (non-positive depth)")
    fx, fy = focal
    cx, cy = princpt
    return np.stack([fx * cam[:, 0] / z + cx, fy * cam[:, 1] / z + cy, z], axis=1)


def to_mediapipe(joints: np.ndarray) -> np.ndarray:
    """(21, ...) one InterHand hand -> MediaPipe order."""
    return joints[INTERHAND_TO_MEDIAPIPE]


def _hands(img: dict, ann: dict | None, joints: dict, cameras: dict, what: str) -> list[HandAnnotation]:
    capture, frame, cam = str(img["capture"]), str(img["frame_idx"]), str(img["camera"])
    frames = joints.get(capture, {})
    expect(
        isinstance(frames, dict), f"{what}: 3D joints of capture {capture} must be an object keyed by frame"
    )
    j = frames.get(frame)
    expect(j is not None, f"{what}: no 3D joints for capture {capture} frame {frame}")
    expect(isinstance(j, dict), f"{what}: 3D joints of capture {capture} frame {frame} must be an object")
    c = cameras.get(capture)
    expect(c is not None, f"{what}: no camera parameters for capture {capture}")
    expect(isinstance(c, dict), f"{what}: camera parameters of capture {capture} must be an object")
    expect(ann is None or isinstance(ann, dict), f"{what}: its annotation must be an object")
    try:
        params = [c[k][cam] for k in ("campos", "camrot", "focal", "princpt")]
    except KeyError as exc:
        raise ValueError(f"{what}: camera {cam} of capture {capture} lacks {exc}") from None
    world = np.asarray(j["world_coord"], dtype=np.float64)
    expect(world.shape == (42, 3), f"{what}: world_coord must be 42 x 3, got {world.shape}")
    valid = np.asarray(
        (ann or {}).get("joint_valid", j.get("joint_valid", np.ones(42))), dtype=np.float64
    ).reshape(-1)
    expect(valid.shape == (42,), f"{what}: joint_valid must have 42 entries, got {valid.size}")
    hand_type = (ann or {}).get("hand_type", j.get("hand_type", "interacting"))
    uv = project(world, *params)
    hands = []
    for side, start in HANDS:
        if hand_type not in (side, "interacting"):
            continue
        v = to_mediapipe(valid[start : start + 21])
        if not v.any():
            continue
        kp = np.zeros((21, 3), dtype=np.float32)
        kp[:, :2] = to_mediapipe(uv[start : start + 21, :2])
        kp[:, 2] = v
        pts = kp[v > 0, :2]
        bbox = [
            float(pts[:, 0].min()),
            float(pts[:, 1].min()),
            float(pts[:, 0].max()),
            float(pts[:, 1].max()),
        ]
        hands.append(HandAnnotation(keypoints=kp, bbox=bbox, handedness=side))
    return hands


def interhand_records(config: PrepConfig) -> Iterator[ImageRecord]:
    fs, root = open_input(config.input)
    if not fs.isdir(root):
        raise FileNotFoundError(f"input folder not found: {config.input}")
    if config.annotations:
        data_files = [
            config.annotations if config.annotations.startswith("/") else f"{root}/{config.annotations}"
        ]
    else:
        data_files = sorted(fs.glob(f"{root}/**/*_data.json"))
    if not data_files:
        raise FileNotFoundError(f"no InterHand2.6M *_data.json under {config.input}")
    for data_path in data_files:
        prefix = data_path[: -len("_data.json")]
        data = load_json(fs, data_path)
        joints = load_json(fs, prefix + "_joint_3d.json")
        cameras = load_json(fs, prefix + "_camera.json")
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise AnnotationFileError(f"{data_path}: not InterHand2.6M data JSON (no 'images' list)")
        for p, obj in ((prefix + "_joint_3d.json", joints), (prefix + "_camera.json", cameras)):
            if not isinstance(obj, dict):
                raise AnnotationFileError(f"{p}: expected an object keyed by capture id")
        split = config.split or split_from_name(data_path)
        image_root = posixpath.dirname(data_path)
        official = f"{root}/images/{split}" if split else None
        if official and fs.isdir(official):
            image_root = official
        where = relative(data_path, root)
        found = by_image_id(entry_list(data, "annotations", data_path), data_path)
        anns = {key: entries[-1][1] for key, entries in found.items()}  # an image's last annotation wins
        for n, img in enumerate(data["images"]):
            what = f"{where} images[{n}]"
            raw_id = img.get("id") if isinstance(img, dict) else None
            usable = is_id(raw_id)
            image_id = safe_id(str(raw_id) if usable else f"{posixpath.basename(data_path)}-{n}")
            uri = str(img.get("file_name")) if isinstance(img, dict) else "?"
            try:
                expect(isinstance(img, dict) and raw_id is not None, f"{what}: image entry has no 'id'")
                expect(usable, f"{what}: 'id' must be a string or integer, got {type(raw_id).__name__}")
                uri = to_uri(fs, safe_relpath(img.get("file_name"), image_root, what))
                hands = _hands(img, anns.get(raw_id), joints, cameras, what)
            except (ValueError, KeyError, TypeError) as exc:
                message = (
                    str(exc) if isinstance(exc, ValueError) else f"{what}: missing or malformed field {exc}"
                )
                yield error_record(image_id, uri, "interhand", message, split=split)
                continue
            subject = img.get("subject")
            yield ImageRecord(
                image_id=image_id,
                source_uri=uri,
                dataset="interhand",
                split=split,
                subject_id=str(subject) if subject is not None else None,
                hands=hands,
            )
