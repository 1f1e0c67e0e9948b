"""Pose detection in images to evaluate: a registry of detectors, prep's annotators by default.

A detector (`DETECTORS`, chosen with ``--detector NAME``) is an object with a ``name``, a
``description``, the prep ``annotator`` it runs (a `prep.annotators.ANNOTATORS` name or an explicit
``module:Class``; None for a detector that is not a prep annotator) and ``load(prep_config)``, which
returns this worker process's model: an object whose ``detect(image)`` maps (H, W, 3) uint8 RGB pixels
to (hands, body), hands with ``keypoints`` (21, 3) in MediaPipe order, ``handedness`` and
``handedness_score`` (the hand's detection confidence, or None), the body with MediaPipe Pose
``keypoints`` (33, 3) ``[x, y, visibility]`` and a ``score`` (`prep.hands.Hand`, `prep.body.BodyPose`).
The loaded model is built once per worker and never shipped through the scheduler; the detector entry
itself travels with each task, so it must pickle (a frozen dataclass, say).

Every prep annotator is a detector (`AnnotatorDetector`): `prep.annotate.Annotator.detect` through
`prep.get_annotator` (the cache prep's Dask tasks use) on `prep.detection_config`, configured to
detect (``keypoint_source="detect"``) and to make no masks, so it runs the body and then the hands, with the
wrist-guided second pass around the body's wrists, exactly as prep annotates. A detector is never one
named by a manifest (see `run.detection_prep_config`); a plug-in adds its entry to `DETECTORS` with
`register_detector`, or names its annotator class on the command line (``--detect annotator=module:Class``).

A task (`detect_unit`) is one row group of the manifest's images table, opened once by the caller
(and scattered to the Dask workers once, not re-opened per task): it reads that row group itself (light columns, plus the stored `image` column when scoring the real images), opens the
generated images named ``<image_id>.png`` from the generated folder, detects, and returns keypoints
already mapped into the target frame (the manifest's original ``width`` x ``height``) through the
image's `framing.FrameMap`: a generated image of another size is taken to show the whole target frame,
rescaled per axis, unless its sidecar records the window it shows (``generate --framing hands``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from manifests.names import path_in

from .framing import FrameMap, frame_map

logger = logging.getLogger(__name__)

REAL = "real"
GENERATED_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


DEFAULT_DETECTOR = "mediapipe"  # prep.annotators.DEFAULT_ANNOTATOR, the annotator prep uses by default


@dataclass(frozen=True)
class AnnotatorDetector:
    """A prep annotator (`prep.annotators.ANNOTATORS` name or explicit ``module:Class``) as a detector."""

    annotator: str
    description: str = ""

    @property
    def name(self) -> str:
        return self.annotator

    def load(self, config):
        """This worker's annotator for `config` (a PrepConfig), through prep's per-worker cache."""
        from prep import detection_config, get_annotator

        return get_annotator(dataclasses.replace(detection_config(config), annotator=self.annotator))


DESCRIPTIONS = {"mediapipe": "prep.annotate.Annotator: MediaPipe Pose, then MediaPipe Hands + wrist pass"}

DETECTORS: dict = {}  # name -> detector; prep's annotators are added on first use (`detectors()`)


def register_detector(detector) -> None:
    """Make `detector` (see the module docstring for what it provides) choosable as ``--detector NAME``.

    A name already taken (prep's annotators included) is refused: a plug-in never replaces another."""
    taken = detectors().get(detector.name)
    if taken is not None and taken is not detector:
        raise ValueError(f"detector {detector.name!r} is already registered ({taken.description})")
    DETECTORS[detector.name] = detector


def detectors() -> dict:
    """Every detector by name: prep's registered annotators, then the plug-ins."""
    from prep import ANNOTATORS

    for name in ANNOTATORS:
        DETECTORS.setdefault(name, AnnotatorDetector(name, DESCRIPTIONS.get(name, f"prep annotator {name}")))
    return DETECTORS


def detector_names() -> tuple[str, ...]:
    return tuple(sorted(detectors()))


def get_detector(config):
    """This worker's detector model for `config`: the prep annotator it names (prep's cache)."""
    return AnnotatorDetector(config.annotator).load(config)


@dataclass
class HandDetection:
    keypoints: np.ndarray  # (21, 3) [x, y, 1] in target-frame pixels
    handedness: str | None
    score: float  # ranks the hand for OKS AP: its confidence, 1 when the detector gives none
    confidence: float | None = None  # the detector's confidence in this hand, if it gives one


@dataclass
class ImageDetections:
    """What one image yielded. `error` is set (and nothing detected) when the image could not be read."""

    image_id: str
    hands: list[HandDetection] = field(default_factory=list)
    body: np.ndarray | None = None  # (33, 3) [x, y, visibility] in target-frame pixels
    body_score: float | None = None
    size: tuple[int, int] | None = None  # (width, height) of the evaluated image
    frame_map: FrameMap | None = None  # target frame -> evaluated image
    error: str | None = None
    worker_pid: int | None = None


def find_generated(folder: str, image_id: str) -> str | None:
    """Path of the generated image for `image_id` (``<image_id>.png``, or .jpg/.jpeg/.webp), or None.

    Raises `manifests.names.UnsafeNameError` for an id that is not a safe file name: it could name a
    file outside `folder`."""
    for suffix in GENERATED_SUFFIXES:
        path = path_in(folder, image_id, suffix, "image_id")
        if os.path.isfile(path):
            return path
    return None


def load_generated(path: str) -> np.ndarray:
    """A generated image file -> (H, W, 3) uint8 RGB."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def load_real(row: dict) -> np.ndarray:
    """The manifest's stored image of an images row -> (H, W, 3) uint8 RGB."""
    from manifests.decode import image_array

    return image_array(row)


def detect_image(annotator, image_id: str, image: np.ndarray, target) -> ImageDetections:
    """Detect in one image and map the keypoints into its target frame: `target` is the image's
    `FrameMap`, or the (W, H) frame that the image shows whole."""
    h, w = image.shape[:2]
    fmap = target if isinstance(target, FrameMap) else FrameMap.whole(tuple(target), (w, h))
    hands, body = annotator.detect(image)
    out = ImageDetections(image_id, size=(w, h), frame_map=fmap, worker_pid=os.getpid())
    for hand in hands:
        kps = fmap.to_frame(hand.keypoints)
        kps[:, 2] = 1.0
        conf = None if hand.handedness_score is None else float(hand.handedness_score)
        out.hands.append(HandDetection(kps, hand.handedness, 1.0 if conf is None else conf, conf))
    if body is not None:
        out.body = fmap.to_frame(body.keypoints)
        out.body_score = float(body.score)
    return out


LIGHT_COLUMNS = ["image_id", "width", "height", "image_width", "image_height"]


def detect_unit(
    table, unit, image_ids: list[str], generated: str, config, detector=None
) -> list[ImageDetections]:
    """Detect in the images of one row group `unit` of the images `table` whose id is in `image_ids`.

    `table` is the opened images table (`manifests.reader.ManifestTable`; it pickles without its open
    files, so Dask ships it to a worker once), or a manifest path, which is opened (and every shard
    footer checked) on each call. `generated` is a folder of ``<image_id>.png`` files or "real" (the
    manifest's stored images). A file that cannot be read gives an `ImageDetections` with `error` set;
    it never raises for one image. `detector` is a `DETECTORS` entry (default: the prep annotator
    `config` names).
    """
    if isinstance(table, (str, os.PathLike)):
        from manifests.reader import open_manifest

        table = open_manifest(str(table)).images
    model = (detector or AnnotatorDetector(config.annotator)).load(config)
    columns = LIGHT_COLUMNS + (["image"] if generated == REAL else [])
    wanted = set(image_ids)
    out = []
    for row in table.read_unit(unit, columns).to_pylist():
        image_id = row["image_id"]
        if image_id not in wanted:
            continue
        frame = (row["width"], row["height"])
        try:
            if generated == REAL:
                image = load_real(row)
                target = frame
            else:
                path = find_generated(generated, image_id)
                if path is None:
                    raise FileNotFoundError(f"no generated image {image_id}.png in {generated}")
                image = load_generated(path)
                target = frame_map(generated, image_id, frame, image.shape[1::-1])
        except Exception as exc:  # noqa: BLE001 - an unreadable image is a scored miss, not a crash
            out.append(
                ImageDetections(image_id, error=f"{type(exc).__name__}: {exc}", worker_pid=os.getpid())
            )
            continue
        out.append(detect_image(model, image_id, image, target))
    return out
