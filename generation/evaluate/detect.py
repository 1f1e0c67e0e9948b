"""Pose detection in images to evaluate, with prep's own annotator and prep's per-worker loading.

The detector is `prep.annotate.Annotator` itself (prep's registry default, or the annotator the user
names on the command line; never one named by a manifest, see `run._prep_config`), obtained through
`prep.process.get_annotator` (the cache prep's Dask tasks use, so it is built once per worker process
and never shipped through the scheduler), configured to detect (``keypoint_source="detect"``) and to
make no masks. Detection
calls its MediaPipe Pose and MediaPipe Hands detectors in the order `Annotator.annotate` does: the
body first, then the hands with the wrist-guided second pass around the body's wrists.

A task (`detect_unit`) is one row group of the manifest's images table, opened once by the caller
(and scattered to the Dask workers once, not re-opened per task): it reads that row group itself (light columns, plus the stored `image` column when scoring the real images), opens the
generated images named ``<image_id>.png`` from the generated folder, detects, and returns keypoints
already mapped into the target frame (the manifest's original ``width`` x ``height``): a generated
image of another size is assumed to show the whole target frame and is rescaled per axis.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from manifests.names import path_in

logger = logging.getLogger(__name__)

REAL = "real"
GENERATED_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def detector_config(config):
    """`config` (a PrepConfig) set to detect keypoints and skip masks: evaluation needs poses only."""
    return dataclasses.replace(config, keypoint_source="detect", mask_method="none")


def get_detector(config):
    """This worker's `prep.annotate.Annotator` for `config`, through prep's per-worker cache."""
    from prep.process import get_annotator

    return get_annotator(detector_config(config))


def detect_pixels(annotator, image: np.ndarray):
    """(H, W, 3) uint8 RGB -> (list of prep.hands.Hand, prep.body.BodyPose or None), image pixels.

    Runs the annotator's detectors as `Annotator.annotate` does, timing them in its `timings`.
    """
    t0 = time.perf_counter()
    body = annotator.body.detect(image) if annotator.body is not None else None
    t1 = time.perf_counter()
    hands = annotator.hands.detect(image, body)
    annotator.timings["pose"] += t1 - t0
    annotator.timings["hands"] += time.perf_counter() - t1
    return hands, body


@dataclass
class HandDetection:
    keypoints: np.ndarray  # (21, 3) [x, y, 1] in target-frame pixels
    handedness: str | None
    score: float


@dataclass
class ImageDetections:
    """What one image yielded. `error` is set (and nothing detected) when the image could not be read."""

    image_id: str
    hands: list[HandDetection] = field(default_factory=list)
    body: np.ndarray | None = None  # (33, 3) [x, y, visibility] in target-frame pixels
    body_score: float | None = None
    size: tuple[int, int] | None = None  # (width, height) of the evaluated image
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


def to_target_frame(
    points: np.ndarray, image_size: tuple[int, int], target_size: tuple[int, int]
) -> np.ndarray:
    """(N, >=2) pixels of an image of (w, h) `image_size` -> pixels of the (W, H) target frame."""
    out = np.array(points, dtype=np.float64, copy=True)
    out[:, 0] *= target_size[0] / image_size[0]
    out[:, 1] *= target_size[1] / image_size[1]
    return out


def detect_image(
    annotator, image_id: str, image: np.ndarray, target_size: tuple[int, int]
) -> ImageDetections:
    """Detect in one image and map the keypoints into the (W, H) `target_size` frame."""
    h, w = image.shape[:2]
    hands, body = detect_pixels(annotator, image)
    out = ImageDetections(image_id, size=(w, h), worker_pid=os.getpid())
    for hand in hands:
        kps = to_target_frame(hand.keypoints, (w, h), target_size)
        kps[:, 2] = 1.0
        score = hand.handedness_score if hand.handedness_score is not None else 1.0
        out.hands.append(HandDetection(kps, hand.handedness, float(score)))
    if body is not None:
        out.body = to_target_frame(body.keypoints, (w, h), target_size)
        out.body_score = float(body.score)
    return out


LIGHT_COLUMNS = ["image_id", "width", "height", "image_width", "image_height"]


def detect_unit(table, unit, image_ids: list[str], generated: str, config) -> list[ImageDetections]:
    """Detect in the images of one row group `unit` of the images `table` whose id is in `image_ids`.

    `table` is the opened images table (`manifests.reader.ManifestTable`; it pickles without its open
    files, so Dask ships it to a worker once), or a manifest path, which is opened (and every shard
    footer checked) on each call. `generated` is a folder of ``<image_id>.png`` files or "real" (the
    manifest's stored images). A file that cannot be read gives an `ImageDetections` with `error` set;
    it never raises for one image.
    """
    if isinstance(table, (str, os.PathLike)):
        from manifests.reader import open_manifest

        table = open_manifest(str(table)).images
    detector = get_detector(config)
    columns = LIGHT_COLUMNS + (["image"] if generated == REAL else [])
    wanted = set(image_ids)
    out = []
    for row in table.read_unit(unit, columns).to_pylist():
        image_id = row["image_id"]
        if image_id not in wanted:
            continue
        try:
            if generated == REAL:
                image = load_real(row)
            else:
                path = find_generated(generated, image_id)
                if path is None:
                    raise FileNotFoundError(f"no generated image {image_id}.png in {generated}")
                image = load_generated(path)
        except Exception as exc:  # noqa: BLE001 - an unreadable image is a scored miss, not a crash
            out.append(
                ImageDetections(image_id, error=f"{type(exc).__name__}: {exc}", worker_pid=os.getpid())
            )
            continue
        out.append(detect_image(detector, image_id, image, (row["width"], row["height"])))
    return out
