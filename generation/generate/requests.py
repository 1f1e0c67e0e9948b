"""Requests: the images a batch makes, each a pose spec in output pixels plus where it came from.

Three sources build them here: spec files, manifest rows (scaled by the framing rule, see
`requests_from_manifest`) and photos (poses detected by prep's detectors); the fourth, a replayed
sidecar, is read by `generation.generate.sidecars`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ..selection import DEFAULT_SPLIT
from ..spec import PoseSpec, SpecError, load_spec, parse_spec
from ..window import FrameMap


@dataclass
class Request:
    """One image to make: the pose spec (output pixels) plus where it came from and per-hand captions."""

    spec: PoseSpec
    source: dict = field(default_factory=dict)
    hand_prompts: list[str] | None = None

    @property
    def name(self) -> str:
        return self.spec.name


class RequestError(ValueError):
    """A request cannot be built (bad manifest row, unknown image id, nothing detected in a photo)."""


def requests_from_specs(paths: list[str]) -> list[Request]:
    """Spec files -> requests named by the file stems; two files with the same stem are refused."""
    out, seen = [], {}
    for path in paths:
        spec = load_spec(path)
        if spec.name in seen:
            raise SpecError(f"{path} and {seen[spec.name]} would both write {spec.name}.png; rename one")
        seen[spec.name] = path
        out.append(Request(spec, {"kind": "spec", "path": os.path.abspath(path)}))
    return out


def output_size(width: int, height: int, longest: int, fit: str | None = None) -> tuple[int, int]:
    """(w, h) of a (width, height) frame, the aspect ratio kept: with the longer side `longest`, or, with
    `fit` (the body model's training framing), at the scale the body trainer sees the frame in its
    `longest` x `longest` square (`manifests.transforms.frame_at_training_scale`)."""
    if fit is not None:
        from manifests.transforms import frame_at_training_scale

        return frame_at_training_scale(width, height, longest, fit)
    scale = longest / float(max(width, height))
    return max(8, int(round(width * scale))), max(8, int(round(height * scale)))


# How `generate --from-manifest` frames a row (``--framing``): the whole frame, or the body trainer's
# square centred on the hands (`train-body --crop hands`), the canvas stage 2 was trained on.
FRAMINGS = ("whole", "hands")


def frame_window(
    frame: tuple[int, int], size: int, fit: str | None = None, framing: str = "whole", hand_points=None
) -> FrameMap:
    """Where a (W, H) `frame` goes in its output image.

    - ``whole``: the whole frame, at `output_size(W, H, size, fit)`;
    - ``hands``: the `size` x `size` square that `train-body --fit FIT --crop hands` cuts from the
      frame, centred on `hand_points` (N, >=2 frame pixels; the frame centre without), at the trainer's
      scale (`manifests.transforms.FitTransform.fit`, as the body dataset frames its samples)."""
    if framing not in FRAMINGS:
        raise ValueError(f"unknown framing {framing!r}; expected one of {FRAMINGS}")
    if framing == "hands":
        from manifests.transforms import FitTransform, hands_focus

        t = FitTransform.fit(frame[0], frame[1], size, size, fit or "cover", hands_focus(hand_points))
        return FrameMap((t.scale, t.scale), (t.tx, t.ty), (size, size), windowed=True)
    w, h = output_size(frame[0], frame[1], size, fit)
    return FrameMap.whole(frame, (w, h))


def _scaled(kps, window: FrameMap) -> np.ndarray:
    """Keypoints into the output image; points off the canvas (MediaPipe predicts joints outside the
    frame, and a window shows only part of it) get score 0, so they are neither drawn nor checked."""
    arr = window.to_image(kps)
    width, height = window.size
    off = (arr[:, 0] < 0) | (arr[:, 0] > width) | (arr[:, 1] < 0) | (arr[:, 1] > height)
    arr[off | ~np.isfinite(arr[:, :2]).all(axis=1), 2] = 0.0
    arr[~np.isfinite(arr)] = 0.0
    return arr


def _spec_from_pose(
    name: str, window: FrameMap, body, hands, prompt: str, seed: int
) -> tuple[PoseSpec, list[int]]:
    """A PoseSpec of the `window`'s size from keypoints in its frame; hands = [(side, (21, 3))].

    Returns the spec and the indices of the hands it kept (a hand with no point on the canvas is
    dropped). A hand without a known side is taken as a right hand."""
    w, h = window.size
    body_obj = None
    if body is not None:
        body_obj = {"format": "mediapipe33", "keypoints": _scaled(body, window).tolist()}
    hand_objs, kept = [], []
    for i, (side, kps) in enumerate(hands):
        scaled = _scaled(kps, window)
        if not (scaled[:, 2] > 0).any():
            continue
        kept.append(i)
        hand_objs.append(
            {"handedness": side if side in ("left", "right") else "right", "keypoints": scaled.tolist()}
        )
    spec = parse_spec(
        {
            "width": w,
            "height": h,
            "body": body_obj,
            "hands": hand_objs,
            "prompt": prompt,
            "negative_prompt": "",
            "seed": seed,
        },
        name=name,
    )
    return spec, kept


def requests_from_manifest(
    manifest: str,
    image_ids: list[str] | None,
    size: int,
    split: str | None = DEFAULT_SPLIT,
    limit: int | None = None,
    seed: int = 0,
    fit: str | None = None,
    framing: str = "whole",
) -> list[Request]:
    """One request per images row: the given `image_ids` (each must exist), else the ``ok`` rows of
    `split` ("all" or None: every split) in manifest order, the first `limit` of them, selected by
    `generation.selection` exactly as `handfirst-gen evaluate` selects them. Poses are scaled from the
    original frame to the whole frame at `output_size(W, H, size, fit)`: with `fit` (the body model's
    training framing, `size` its training side) at the scale the body trainer saw such a frame, so hands
    are as large as in training; without, at longer side `size`. With `framing` ``hands`` each request is
    instead the trainer's `size` square centred on the row's hands (`frame_window`). Each request's
    source records its window (`FrameMap.record`), so that evaluation maps the frame into it. The stage-1 captions are the
    manifest's hand captions, the prompt its image caption."""
    import pyarrow.dataset as pads

    from manifests.decode import body_keypoints, hand_keypoints
    from manifests.reader import open_manifest

    from ..selection import SelectionError, select_rows

    m = open_manifest(manifest)
    columns = ["image_id", "width", "height", "caption", "label", "status", "split", "body_keypoints"]
    if image_ids:
        rows = m.lookup("images", image_ids, columns).to_pylist()
        found = {r["image_id"] for r in rows}
        missing = [i for i in image_ids if i not in found]
        if missing:
            raise RequestError(f"{m.url}: no image(s) {missing} in the images table")
        order = {i: k for k, i in enumerate(image_ids)}
        rows.sort(key=lambda r: order[r["image_id"]])
        rows = rows[:limit] if limit else rows
    else:
        try:
            rows = select_rows(m, columns, split, ("ok",), limit)
        except SelectionError as exc:
            raise RequestError(str(exc)) from None
    ids = [r["image_id"] for r in rows]
    hand_rows = m.read(
        "hands",
        ["image_id", "hand_index", "handedness", "keypoints", "caption"],
        filter=pads.field("image_id").isin(ids),
    ).to_pylist()
    by_image: dict[str, list[dict]] = {}
    for hr in sorted(hand_rows, key=lambda r: (r["image_id"], r["hand_index"])):
        by_image.setdefault(hr["image_id"], []).append(hr)
    out = []
    for row in rows:
        image_id = row["image_id"]
        if row["status"] == "error":
            raise RequestError(f"{m.url}: image {image_id} has status error; it has no pose to regenerate")
        if not row["width"] or not row["height"]:
            raise RequestError(f"{m.url}: image {image_id} has no width/height")
        body = body_keypoints(row) if row.get("body_keypoints") is not None else None
        hands = [(hr["handedness"], hand_keypoints(hr)) for hr in by_image.get(image_id, [])]
        points = np.concatenate([k[np.isfinite(k[:, :2]).all(axis=1)] for _, k in hands]) if hands else None
        window = frame_window((row["width"], row["height"]), size, fit, framing, points)
        try:
            spec, kept = _spec_from_pose(
                image_id, window, body, hands, row["caption"] or "a photo of a person", seed
            )
        except SpecError as exc:
            raise RequestError(f"{m.url}: image {image_id}: {exc}") from None
        captions = [by_image[image_id][k]["caption"] or "" for k in kept]
        source = {
            "kind": "manifest",
            "manifest": m.url,
            "image_id": image_id,
            "frame": [row["width"], row["height"]],
            "framing": {"side": size, "fit": fit, "mode": framing},
            "window": window.record,
        }
        out.append(Request(spec, source, hand_prompts=captions))
    return out


def request_from_image(
    path: str, size: int | None, seed: int = 0, prompt: str | None = None, gesture=None, annotator=None
) -> Request:
    """Poses of a photo through prep's detectors (MediaPipe Pose, then Hands with the wrist pass)."""
    from prep import PrepConfig, detection_config, get_annotator, image_caption, load_image

    try:
        decoded, _ = load_image(path, PrepConfig().max_pixels)
    except Exception as exc:  # noqa: BLE001 - prep raises its own error types for unreadable images
        raise RequestError(f"{path}: cannot read the photo ({type(exc).__name__}: {exc})") from None
    image = decoded.pixels
    hands, body = (annotator or get_annotator(detection_config())).detect(image)
    if not hands and body is None:
        raise RequestError(f"{path}: no hands and no body pose detected; nothing to regenerate")
    h, w = image.shape[:2]
    sides = [hd.handedness for hd in hands]
    name = os.path.splitext(os.path.basename(path))[0]
    spec, _ = _spec_from_pose(
        name,
        frame_window((w, h), size or max(w, h)),
        None if body is None else body.keypoints,
        [(hd.handedness, hd.keypoints) for hd in hands],
        prompt or image_caption(gesture, sides),
        seed,
    )
    return Request(
        spec,
        {
            "kind": "image",
            "path": os.path.abspath(path),
            "detected_hands": len(hands),
            "detected_body": body is not None,
            "photo_size": [w, h],
        },
    )
