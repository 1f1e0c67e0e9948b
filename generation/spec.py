"""The pose spec: what a user asks `handfirst-gen generate` for, as a JSON file.

Schema (all coordinates in output-image pixels, origin top-left)::

    {
      "width": 512, "height": 512,
      "body": {"format": "mediapipe33" | "openpose18",
               "keypoints": [[x, y, score], ...]},          # 33 or 18 rows; score optional (default 1)
      "hands": [{"handedness": "left" | "right",
                 "keypoints": [[x, y], ...]}],               # 21 rows each, MediaPipe order
      "prompt": "a person showing a peace sign", "negative_prompt": "", "seed": 0
    }

`body` may be null (hands only). Every problem is reported with its JSON path; a key the schema does not
have (a misspelt ``"negative_promt"``) is an error naming the keys allowed there, never ignored.

The spec's name (the file stem, a manifest ``image_id``, a sidecar's ``name``) becomes the output file
names, so it must be a safe file name (`manifests.names.check_name`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from manifests.names import UnsafeNameError, check_name
from manifests.pose import BODY_FORMATS, KeypointError, keypoint_array
from manifests.schema import NUM_HAND_KEYPOINTS
from manifests.storage import MAX_JSON_BYTES, FileTooLargeError, NotRegularFileError, read_bounded, url_to_fs

HANDEDNESS = ("left", "right")
# The keys of each object of the schema; any other key is refused.
SPEC_KEYS = ("width", "height", "body", "hands", "prompt", "negative_prompt", "seed")
BODY_KEYS = ("format", "keypoints")
HAND_KEYS = ("handedness", "keypoints")


class SpecError(ValueError):
    """A pose spec is malformed; the message names the field."""


@dataclass
class HandSpec:
    handedness: str
    keypoints: np.ndarray  # (21, 3) [x, y, score] output pixels


@dataclass
class PoseSpec:
    width: int
    height: int
    body: np.ndarray | None  # (33, 3) or (18, 3)
    body_format: str | None
    hands: list[HandSpec] = field(default_factory=list)
    prompt: str = ""
    negative_prompt: str = ""
    seed: int = 0
    name: str = "sample"

    def to_dict(self) -> dict:
        return {
            "width": self.width,
            "height": self.height,
            "body": None
            if self.body is None
            else {"format": self.body_format, "keypoints": np.asarray(self.body).tolist()},
            "hands": [{"handedness": h.handedness, "keypoints": h.keypoints.tolist()} for h in self.hands],
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "seed": self.seed,
        }


def _points(value, count: int, where: str, width: int, height: int) -> np.ndarray:
    try:
        return keypoint_array(value, count, where, frame=(width, height))
    except KeypointError as exc:
        raise SpecError(str(exc)) from None


def _whole(value, where: str) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or float(value) != int(value)
    ):
        raise SpecError(f"{where}: expected a whole number, got {value!r}")
    return int(value)


def _text(obj: dict, key: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SpecError(f"{key}: expected a string, got {type(value).__name__}")
    return value


def _known_keys(obj: dict, allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(obj) - set(allowed), key=str)
    if unknown:
        names = ", ".join(repr(k) for k in unknown)
        raise SpecError(f"{where}unknown key(s) {names}; allowed: {', '.join(allowed)}")


def parse_spec(obj: dict, name: str = "sample") -> PoseSpec:
    """Validate a spec dict and return a PoseSpec; raises SpecError naming the offending field.

    `name` names the output files, so it must be a safe file name (`manifests.names`)."""
    try:
        check_name(name, "name")
    except UnsafeNameError as exc:
        raise SpecError(str(exc)) from None
    if not isinstance(obj, dict):
        raise SpecError(f"spec must be a JSON object, got {type(obj).__name__}")
    _known_keys(obj, SPEC_KEYS, "")
    for key in ("width", "height"):
        if key not in obj:
            raise SpecError(f"missing field {key!r}")
    width, height = _whole(obj["width"], "width"), _whole(obj["height"], "height")
    if width < 8 or height < 8 or width * height > 8192 * 8192:
        raise SpecError(f"canvas {width}x{height} is out of range")
    body, body_format = None, None
    if obj.get("body") is not None:
        body_obj = obj["body"]
        if not isinstance(body_obj, dict):
            raise SpecError(
                f"body: expected an object with format and keypoints, got {type(body_obj).__name__}"
            )
        _known_keys(body_obj, BODY_KEYS, "body: ")
        body_format = body_obj.get("format")
        if body_format not in BODY_FORMATS:
            raise SpecError(
                f"body.format: unknown body format {body_format!r}; expected one of {sorted(BODY_FORMATS)}"
            )
        body = _points(body_obj.get("keypoints"), BODY_FORMATS[body_format], "body.keypoints", width, height)
    hand_objs = obj.get("hands") or []
    if not isinstance(hand_objs, list):
        raise SpecError(f"hands: expected a list of hands, got {type(hand_objs).__name__}")
    hands = []
    for i, h in enumerate(hand_objs):
        if not isinstance(h, dict):
            raise SpecError(
                f"hands[{i}]: expected an object with handedness and keypoints, got {type(h).__name__}"
            )
        _known_keys(h, HAND_KEYS, f"hands[{i}]: ")
        handed = h.get("handedness")
        if not isinstance(handed, str) or handed.lower() not in HANDEDNESS:
            raise SpecError(f"hands[{i}].handedness: expected 'left' or 'right', got {handed!r}")
        hands.append(
            HandSpec(
                handed.lower(),
                _points(h.get("keypoints"), NUM_HAND_KEYPOINTS, f"hands[{i}].keypoints", width, height),
            )
        )
    if body is None and not hands:
        raise SpecError("spec has neither a body nor any hands")
    seed = obj.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise SpecError(f"seed must be an integer, got {seed!r}")
    return PoseSpec(
        width,
        height,
        body,
        body_format,
        hands,
        _text(obj, "prompt"),
        _text(obj, "negative_prompt"),
        seed,
        name,
    )


def read_json_file(path, error: type[Exception], what: str, max_bytes: int = MAX_JSON_BYTES):
    """The parsed JSON of a user-given file (a local path or an fsspec URL); `error` names the file for a
    missing file, one that is not a regular file (a FIFO would block, /dev/zero never ends), one over
    `max_bytes`, bad UTF-8, bad JSON or nesting too deep to parse. NaN and Infinity parse, and the field
    that holds one says so."""
    try:
        fs, where = url_to_fs(str(path))
        return json.loads(read_bounded(fs, where, max_bytes, str(path)).decode("utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: no such {what} file") from None
    except (NotRegularFileError, FileTooLargeError) as exc:
        raise error(str(exc)) from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise error(f"{path}: JSON nested too deeply to read") from None


def load_spec(path: str | Path) -> PoseSpec:
    path = Path(path)
    obj = read_json_file(path, SpecError, "spec")
    try:
        return parse_spec(obj, name=path.stem)
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None


__all__ = ["PoseSpec", "HandSpec", "SpecError", "parse_spec", "load_spec"]
