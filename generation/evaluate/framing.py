"""Where the target frame lies in an evaluated image: ``image = frame * scale + offset``, per axis.

A generated image is taken to show the whole target frame (the manifest's original ``width`` x
``height``), rescaled per axis, unless its sidecar (``<image_id>.json``, written by ``handfirst-gen
generate``) records a window (``source.window``): ``generate --framing hands`` draws only the body
trainer's square around the hands. Targets are then mapped into that window, and the target points
that fall outside it are not scored: the image never showed them.
"""

from __future__ import annotations

import os

import numpy as np

from manifests.names import path_in

from ..spec import read_json_file
from ..window import FrameMap


class WindowError(ValueError):
    """A sidecar's window is unreadable or malformed."""


def frame_map(generated: str, image_id: str, frame: tuple[int, int], size: tuple[int, int]) -> FrameMap:
    """The `FrameMap` of the generated image `image_id` of (w, h) `size` for its (W, H) target `frame`:
    its sidecar's window if it records one, else the whole frame. Raises `WindowError` for a sidecar
    that is not JSON, or a window that is malformed (not two finite scales > 0 and two offsets)."""
    path = path_in(generated, image_id, ".json", "image_id")
    if not os.path.lexists(path):
        return FrameMap.whole(frame, size)
    # Bounded and regular files only: a FIFO in its place would block, a link to /dev/zero never end.
    sidecar = read_json_file(path, WindowError, "sidecar")
    source = sidecar.get("source") if isinstance(sidecar, dict) else None
    window = source.get("window") if isinstance(source, dict) else None
    if window is None:
        return FrameMap.whole(frame, size)
    try:
        return FrameMap.from_record(window, size)
    except (ValueError, TypeError, KeyError) as exc:
        raise WindowError(f"{path}: unreadable source.window ({type(exc).__name__}: {exc})") from None


def visible_targets(fmap: FrameMap, hands: list, boxes: list, body):
    """(hands, boxes, body) of one image as far as a windowed image shows them: each target hand's
    keypoints outside the window are not valid, a hand with none inside is dropped with its crop box
    (when there is one box per hand), and the body's keypoints outside get visibility 0. A whole-frame
    map returns them unchanged."""
    if not fmap.windowed:
        return hands, boxes, body
    from manifests.matching import Instance

    paired = len(boxes) == len(hands)
    kept_hands, kept_boxes = [], []
    for k, hand in enumerate(hands):
        valid = hand.valid & fmap.inside(hand.keypoints)
        if valid.any():
            kept_hands.append(Instance(hand.keypoints, hand.handedness, hand.score, valid))
            if paired:
                kept_boxes.append(boxes[k])
    if body is not None:
        body = np.array(body, dtype=np.float64, copy=True)
        body[~fmap.inside(body), 2] = 0.0
    return kept_hands, kept_boxes if paired else boxes, body
