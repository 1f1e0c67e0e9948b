"""The per-image annotator: one `ImageRecord` in, one `images` row and its `hands` rows out.

Stages (each timed cumulatively in `Annotator.timings`, in seconds):

- ``decode``: read through fsspec and decode (`prep.imageio`: EXIF orientation, every mode to RGB,
  pixel bound checked before decoding);
- ``pose``: MediaPipe Pose (`prep.body`);
- ``hands``: MediaPipe Hands plus the wrist-guided pass, or the record's own keypoints (`prep.hands`);
- ``masks``: SAM or GrabCut (`prep.masks`);
- ``crops_heatmaps``: square crops, crop keypoints and heatmaps (`prep.crops`);
- ``encode``: JPEG/PNG/heatmap bytes of the rows.

Rows match `manifests.schema.IMAGES_SCHEMA` / `HANDS_SCHEMA` exactly (same keys, Python values).
Status is ``ok`` when at least one hand was found and ``no_hands`` otherwise; anything that goes wrong
raises (`prep.errors`), and the runner turns the exception into an error row with `error_row`.
Models load once, on first use, and are not pickled with the annotator.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from contextlib import contextmanager

import numpy as np

from manifests.codecs import encode_jpeg, encode_mask
from manifests.schema import HANDS_SCHEMA, IMAGES_SCHEMA, NO_MASK

from .body import BodyPose, BodyPoseDetector
from .captions import hand_caption, image_caption
from .config import KEYPOINT_SOURCES, PrepConfig
from .crops import (
    box_to_full,
    box_to_reduced,
    encode_crop,
    full_resolution_crop,
    hand_crop_box,
    make_crop,
    needs_full_resolution,
    union_mask,
)
from .hands import FullCrop, Hand, HandDetector, hands_from_annotation
from .imageio import DecodedImage, load_image, reduced_size
from .masks import make_masker
from .records import HandAnnotation, ImageRecord

log = logging.getLogger(__name__)

STAGES = ("decode", "pose", "hands", "masks", "crops_heatmaps", "encode")
IMAGE_COLUMNS = tuple(IMAGES_SCHEMA.names)
HAND_COLUMNS = tuple(HANDS_SCHEMA.names)


def _base_row(record: ImageRecord) -> dict:
    row = dict.fromkeys(IMAGE_COLUMNS)
    row.update(
        image_id=record.image_id,
        source_uri=record.source_uri,
        dataset=record.dataset,
        split=record.split,
        label=record.label,
        subject_id=record.subject_id,
        source_key=record.source_key,
        source_url=record.source_url,
        source_caption=record.source_caption,
    )
    return row


def error_row(record: ImageRecord, exc: BaseException | str) -> dict:
    """The images row of a record that failed: status "error", `error` = "ExcType: message"."""
    row = _base_row(record)
    reason = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    row.update(status="error", error=reason, num_hands=0)
    return row


def _moved(found, to_frame):
    """A `Hand` or `BodyPose` (or None) with its keypoints' x, y mapped by `to_frame`
    (`DecodedImage.to_full` / `to_reduced`); scores and every other field are kept."""
    if found is None:
        return None
    kps = to_frame(found.keypoints).astype(found.keypoints.dtype)
    return dataclasses.replace(found, keypoints=kps)


def _kp_list(kps: np.ndarray) -> list[list[float]]:
    return np.asarray(kps, dtype=np.float32).tolist()


def gesture_hand(hands: list[Hand]) -> int | None:
    """Index of the hand taken to make the image's gesture: the highest one in the frame.

    In gesture photos (HaGRID) the gesturing hand is raised and the other hangs or rests lower, so the
    hand whose keypoint box starts highest is the best guess when no per-hand label exists.
    """
    if not hands:
        return None
    return int(np.argmin([hand.bbox[1] for hand in hands]))


def to_pixels(record: ImageRecord, width: int, height: int) -> list[HandAnnotation]:
    """The record's hand annotations in pixels (sources may give HaGRID's normalised coordinates)."""
    if not record.normalized:
        return record.hands
    scale = np.array([width, height], dtype=np.float64)
    out = []
    for ann in record.hands:
        kps = None
        if ann.keypoints is not None:
            kps = np.array(ann.keypoints, dtype=np.float64, copy=True)
            kps[:, :2] *= scale
        bbox = None if ann.bbox is None else (np.asarray(ann.bbox, np.float64) * np.tile(scale, 2)).tolist()
        out.append(dataclasses.replace(ann, keypoints=kps, bbox=bbox))
    return out


class Annotator:
    """Turns image records into manifest rows. Build once per worker process; not thread-safe."""

    def __init__(self, config: PrepConfig):
        if config.keypoint_source not in KEYPOINT_SOURCES:
            raise ValueError(
                f"keypoint_source must be one of {KEYPOINT_SOURCES}, got {config.keypoint_source!r}"
            )
        self.config = config
        self.body = BodyPoseDetector(config) if config.body_pose else None
        self.hands = HandDetector(config)
        self.masker = make_masker(config)  # SAM weights load on first use
        self.timings = dict.fromkeys(STAGES, 0.0)
        self._nested: list[float] = []  # per open `_timed` stage: seconds of the stages timed within it
        self.images = 0

    # Models (MediaPipe graphs, torch modules) never travel: a pickled annotator rebuilds them lazily.
    def __getstate__(self):
        return {"config": self.config}

    def __setstate__(self, state):
        self.__init__(state["config"])

    @contextmanager
    def _timed(self, stage: str):
        """Add the time spent inside to `stage`, less that of stages timed within it (the full-resolution
        decode runs inside the hands stage when the wrist pass needs it), so the stages add up."""
        t0 = time.perf_counter()
        self._nested.append(0.0)
        try:
            yield
        finally:
            elapsed = time.perf_counter() - t0
            self.timings[stage] += elapsed - self._nested.pop()
            if self._nested:
                self._nested[-1] += elapsed

    def detect(self, image: np.ndarray, full: FullCrop | None = None) -> tuple[list[Hand], BodyPose | None]:
        """(hands, body pose or None) detected in (H, W, 3) uint8 RGB pixels; timed in `timings`.

        The body comes first because the hands' wrist-guided second pass searches around the body's
        wrists. `annotate` runs this same method, so whoever detects through it (evaluation, the
        photo-to-pose path of generation) sees exactly what prep would have annotated.
        `full`: when `image` is a reduced copy, cuts crops from the full-resolution photo (see
        `HandDetector.detect`).
        """
        body = self._detect_body(image)
        with self._timed("hands"):
            hands = self.hands.detect(image, body, full)
        return hands, body

    def _detect_body(self, image: np.ndarray) -> BodyPose | None:
        if self.body is None:
            return None
        with self._timed("pose"):
            return self.body.detect(image)

    def find_hands(
        self, decoded: DecodedImage, record: ImageRecord, annotations: list[HandAnnotation]
    ) -> tuple[list[Hand], BodyPose | None]:
        """(hands, body) in original pixels: the record's own keypoints (original pixels) when configured
        and present, else `detect` on the decoded pixels, which may be a reduced copy."""
        image = decoded.pixels
        if self.config.keypoint_source == "annotation" and any(a.keypoints is not None for a in annotations):
            body = self._detect_body(image)
            with self._timed("hands"):
                hands = hands_from_annotation(
                    annotations, record.source_uri, (decoded.height, decoded.width), self.config.max_outside
                )
            return hands[: self.config.max_hands], _moved(body, decoded.to_full)
        hands, body = self.detect(image, self._full_crop(decoded) if decoded.reduced else None)
        return [_moved(hand, decoded.to_full) for hand in hands], _moved(body, decoded.to_full)

    def _decode_full(self, decoded: DecodedImage) -> None:
        """Decode the full-resolution image now if it is not at hand, timed as the "decode" stage."""
        if not decoded.full_decoded:
            with self._timed("decode"):
                decoded.full_image()

    def _full_crop(self, decoded: DecodedImage):
        """Crops of boxes in `decoded.pixels` coordinates, cut from the full-resolution image."""

        def crop(box):
            self._decode_full(decoded)
            return full_resolution_crop(decoded, box_to_full(decoded, box))

        return crop

    def annotate(self, record: ImageRecord) -> tuple[dict, list[dict]]:
        """One record -> (images row, hands rows). Raises a `prep.errors.PrepError` for a bad image."""
        cfg = self.config
        with self._timed("decode"):
            max_bytes = cfg.max_file_bytes
            # Decoded at the stored image's size (a JPEG in draft mode): detection and masks work on it
            # (MediaPipe's models see at most 256 px, GrabCut at most `grabcut_size`), so a full-HD photo
            # costs about what a 512-px one does, and the same photo at another resolution is searched
            # on the same pixels. Full resolution is decoded only for small hands: their crops and the
            # wrist-guided search.
            decoded, raw = load_image(
                record.source_uri, cfg.max_pixels, max_bytes, cfg.max_image_side, data=record.data
            )
        image = decoded.pixels
        width, height = decoded.width, decoded.height
        annotations = to_pixels(record, width, height)

        hands, body = self.find_hands(decoded, record, annotations)
        if any(needs_full_resolution(decoded, hand_crop_box(h.keypoints, cfg)) for h in hands):
            self._decode_full(decoded)

        gesture = gesture_hand(hands)
        sides = [hand.handedness for hand in hands]
        hand_rows, crop_masks = [], []
        if self.masker is not None and hands:
            with self._timed("masks"):
                self.masker.set_image(image)
        for i, hand in enumerate(hands):
            with self._timed("crops_heatmaps"):
                crop = make_crop(decoded, hand.keypoints, cfg)
            hand_mask = None
            if self.masker is not None:
                with self._timed("masks"):
                    # The mask is in crop pixels, the same whichever frame the hand and box are given in.
                    hand_mask = self.masker.predict(
                        image, _moved(hand, decoded.to_reduced), box_to_reduced(decoded, crop.box)
                    )
                crop_masks.append((hand_mask.mask, crop.box))
            with self._timed("encode"):
                row = dict.fromkeys(HAND_COLUMNS)
                row.update(encode_crop(crop, cfg))
                x0, y0, x1, y1 = (float(v) for v in hand.bbox)
                row.update(
                    hand_id=f"{record.image_id}_h{i}",
                    image_id=record.image_id,
                    split=record.split,
                    source_caption=record.source_caption,
                    hand_index=i,
                    handedness=hand.handedness,
                    handedness_score=hand.handedness_score,
                    keypoints=_kp_list(hand.keypoints),
                    keypoint_source=hand.source,
                    bbox=[x0, y0, x1, y1],
                    hand_size=hand.size,
                    label=record.label,
                    caption=hand_caption(
                        record.label, hand.handedness, i == gesture, cfg.all_caption_templates()
                    ),
                )
                if hand_mask is not None:
                    row.update(
                        mask=encode_mask(hand_mask.mask),
                        mask_method=hand_mask.method,
                        mask_score=hand_mask.score,
                    )
                else:  # --mask-method none: the row says so, and `mask` stays null (valid by the schema)
                    row.update(mask_method=NO_MASK)
            hand_rows.append(row)

        with self._timed("encode"):
            row = _base_row(record)
            size = reduced_size(width, height, cfg.max_image_side)
            row.update(
                width=width,
                height=height,
                caption=image_caption(record.label, sides, gesture, cfg.all_caption_templates()),
                status="ok" if hands else "no_hands",
                num_hands=len(hands),
                body_keypoints=None if body is None else _kp_list(body.keypoints),
                body_score=None if body is None else body.score,
                image=self._stored_bytes(decoded, raw, size),
                image_width=size[0],
                image_height=size[1],
            )
            if crop_masks:
                row["hands_mask"] = encode_mask(union_mask(crop_masks, width, height, size))
        self.images += 1
        return row, hand_rows

    def _stored_bytes(self, decoded: DecodedImage, raw: bytes, size: tuple[int, int]) -> bytes:
        """JPEG of the image at `size` (the decoded pixels' size); an upright RGB JPEG that needs no
        resizing is kept byte for byte."""
        unchanged = (decoded.width, decoded.height) == size
        if unchanged and decoded.format == "JPEG" and decoded.source_mode == "RGB" and not decoded.oriented:
            return raw
        return encode_jpeg(decoded.pixels, quality=self.config.jpeg_quality)

    def close(self) -> None:
        if self.body is not None:
            self.body.close()
        self.hands.close()
