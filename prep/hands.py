"""Hand keypoints and handedness: MediaPipe Hands, a wrist-guided second pass, or the dataset's own.

Detection runs in two passes:

1. MediaPipe Hands (static-image mode, the model bundled in the wheel) on the whole image.
2. For small hands, which the palm detector misses after it shrinks the whole image to 192 px:
   for each wrist of the body pose that no first-pass hand covers, a square region around the pose's
   estimate of the hand centre (side ``wrist_crop_scale`` x the image's longer side) is upscaled to at
   least ``wrist_crop_min_size`` px and searched again. A hand found there is kept only if its wrist
   lies near a pose wrist and it does not duplicate a hand already found (box IoU).
   When the image searched is a reduced copy of a larger photo, these crops are cut from the
   full-resolution photo: a small hand gets back the pixels the reduction dropped, and the crop's
   size still follows the reduced image, so the search does not depend on the photo's resolution.

3. Only when both found nothing: the whole image once more, centred in a zero border of
   ``pad_retry`` x its longer side, since the palm detector also misses hands that fill the frame.

Handedness: MediaPipe Hands assumes a mirrored (selfie) image and so labels the person's right hand
"Left" in an ordinary photo. On the 40 `hagrid_mini` photos its raw label was the opposite of the
MediaPipe Pose wrist nearest to the hand on every one of 40 hands, and on a frontal photo with a
palm-forward right hand (little finger on the image's outer side) Pose's side is the true one. The
label is therefore swapped, so `handedness` is the person's own left/right.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from manifests.geometry import CropBox, visible_bbox

from .body import POSE_ARM, BodyPose
from .config import PrepConfig
from .crops import warp_crop
from .errors import AnnotationError
from .records import HandAnnotation

log = logging.getLogger(__name__)

# MediaPipe's label (mirrored-image convention) -> the person's own side in an ordinary photo.
UNMIRROR = {"Left": "right", "Right": "left"}

PAD_PASS_MAX_SIDE = 2048

# Cuts a crop box given in the searched (reduced) image's pixels from the full-resolution photo.
FullCrop = Callable[[CropBox], np.ndarray]

SOURCE_FULL = "mediapipe"
SOURCE_WRIST = "mediapipe_wrist_crop"
SOURCE_ANNOTATION = "annotation"


@dataclass
class Hand:
    """One hand in oriented-image pixels.

    keypoints: (21, 3) float64 [x, y, score], MediaPipe order. Score is 1 for detector keypoints
    (MediaPipe Hands gives no per-keypoint confidence) and the clipped visibility flag for annotations.
    """

    keypoints: np.ndarray
    handedness: str | None
    handedness_score: float | None
    source: str

    @property
    def bbox(self) -> np.ndarray:
        """Tight [x0, y0, x1, y1] of the visible keypoints (score > 0)."""
        return visible_bbox(self.keypoints)

    @property
    def size(self) -> float:
        x0, y0, x1, y1 = self.bbox
        return float(max(x1 - x0, y1 - y0))


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def reach_outside(keypoints: np.ndarray, image_shape: tuple[int, ...]) -> float:
    """How far (px) the furthest visible keypoint lies past the image border; zero or less when all are
    inside (an invisible point, score 0, may lie anywhere)."""
    h, w = image_shape[:2]
    xy = np.asarray(keypoints, dtype=np.float64)
    if xy.shape[1] > 2 and (xy[:, 2] > 0).any():
        xy = xy[xy[:, 2] > 0]
    xy = xy[:, :2]
    return float(np.max(np.concatenate([-xy[:, 0], xy[:, 0] - w, -xy[:, 1], xy[:, 1] - h])))


def hands_from_annotation(
    annotations: list[HandAnnotation],
    uri: str,
    image_shape: tuple[int, ...] | None = None,
    max_outside: float = 0.25,
) -> list[Hand]:
    """The record's keypoint-bearing hand annotations as `Hand`s (source "annotation").

    With `image_shape`, a hand must fit the image as detected hands do (no keypoint more than
    `max_outside` x the hand's size past the border) and span at least a pixel: coordinates in
    another frame (normalised, another resolution, garbage such as 1e6) would otherwise become
    black crops of an "ok" hand. Such an annotation raises `AnnotationError`, so the image becomes
    an error row naming the hand.
    """
    hands = []
    for i, ann in enumerate(annotations):
        if ann.keypoints is None:
            continue
        kps = np.asarray(ann.keypoints, dtype=np.float64)
        if kps.ndim != 2 or kps.shape[0] != 21 or kps.shape[1] not in (2, 3):
            raise AnnotationError(f"{uri}: hand {i} keypoints must have shape (21, 2|3), got {kps.shape}")
        if not np.all(np.isfinite(kps[:, :2])):
            raise AnnotationError(f"{uri}: hand {i} keypoints contain NaN or infinity")
        score = np.clip(kps[:, 2], 0.0, 1.0) if kps.shape[1] == 3 else np.ones(21)
        if not np.any(score > 0):
            continue  # a hand with no labelled keypoint carries nothing to train on
        out = np.column_stack([kps[:, :2], score])
        handed = ann.handedness.lower() if ann.handedness else None
        if handed not in (None, "left", "right"):
            raise AnnotationError(f"{uri}: hand {i} handedness must be left/right, got {ann.handedness!r}")
        hand = Hand(out, handed, 1.0 if handed else None, SOURCE_ANNOTATION)
        if image_shape is not None:
            _check_fits(hand, i, uri, image_shape, max_outside)
        hands.append(hand)
    return hands


def _check_fits(hand: Hand, i: int, uri: str, image_shape: tuple[int, ...], max_outside: float) -> None:
    h, w = image_shape[:2]
    beyond = reach_outside(hand.keypoints, image_shape)
    if beyond > max_outside * hand.size:
        x0, y0, x1, y1 = hand.bbox
        raise AnnotationError(
            f"{uri}: hand {i} keypoints reach {beyond:.6g} px outside the {w}x{h} image (x {x0:.6g}..{x1:.6g}, "
            f"y {y0:.6g}..{y1:.6g}; max_outside={max_outside:g} x the hand's size); are they pixels of this image?"
        )
    if hand.size < 1.0:
        raise AnnotationError(
            f"{uri}: hand {i} keypoints span {hand.size:.3g} px: a degenerate (zero-size) hand"
        )


class HandDetector:
    """MediaPipe Hands plus the wrist-guided second pass. Models load on first use."""

    def __init__(self, config: PrepConfig):
        self.config = config
        self._hands = None

    def _model(self):
        if self._hands is None:
            import mediapipe as mp

            self._hands = mp.solutions.hands.Hands(
                static_image_mode=True,
                max_num_hands=self.config.max_hands,
                model_complexity=self.config.hand_model_complexity,
                min_detection_confidence=self.config.min_detection_confidence,
            )
        return self._hands

    def _run(self, image: np.ndarray, crop: CropBox | None, source: str) -> list[Hand]:
        """MediaPipe on `image` (a crop when `crop` is given) -> hands in oriented-image pixels."""
        result = self._model().process(image)
        if not result.multi_hand_landmarks:
            return []
        h, w = image.shape[:2]
        hands = []
        for landmarks, handedness in zip(result.multi_hand_landmarks, result.multi_handedness):
            cls = handedness.classification[0]
            if cls.score < self.config.min_hand_score:
                continue
            pts = np.array([[lm.x * w, lm.y * h, 1.0] for lm in landmarks.landmark], dtype=np.float64)
            if crop is not None:
                pts = crop.to_image(pts)
            hands.append(Hand(pts, UNMIRROR.get(cls.label), float(cls.score), source))
        return hands

    def detect(
        self, image: np.ndarray, body: BodyPose | None = None, full: FullCrop | None = None
    ) -> list[Hand]:
        """(H, W, 3) uint8 RGB (+ optional body pose) -> hands in `image` pixels, at most `max_hands`,
        best first. When `image` is a reduced copy, `full` cuts the wrist-guided pass's crops (boxes in
        `image` pixels) from the full-resolution photo."""
        hands = self._run(image, None, SOURCE_FULL)
        if self.config.wrist_refine and body is not None:
            for extra in self._wrist_pass(image, body, hands, full):
                if not any(self._duplicate(extra, kept) for kept in hands):
                    hands.append(extra)
        if not hands and self.config.pad_retry > 0:
            hands = self._padded_pass(image)
        hands = [hand for hand in hands if self._in_frame(hand, image.shape)]
        hands.sort(key=lambda hd: (hd.source != SOURCE_FULL, -(hd.handedness_score or 0.0)))
        return hands[: self.config.max_hands]

    def _padded_pass(self, image: np.ndarray) -> list[Hand]:
        """Search once more with the image centred in a zero border of `pad_retry` x its longer side:
        the palm detector misses hands that fill the frame (close-ups) and finds them when they are
        smaller relative to the input."""
        h, w = image.shape[:2]
        side = max(h, w) * (1.0 + 2.0 * self.config.pad_retry)
        # Native resolution, but a huge photo is shrunk: the palm detector sees 192 px anyway and a
        # frame-filling hand keeps ample pixels for the 224 px landmark model.
        crop = CropBox((w - side) / 2.0, (h - side) / 2.0, side, int(round(min(side, PAD_PASS_MAX_SIDE))))
        return self._run(warp_crop(image, crop), crop, SOURCE_FULL)

    def _in_frame(self, hand: Hand, image_shape: tuple[int, ...]) -> bool:
        """False for a hand MediaPipe extrapolated far past the frame (more than `max_outside` x its size):
        such a hand is mostly cut off, its keypoints are guesses and its crop mostly padding."""
        beyond = reach_outside(hand.keypoints, image_shape)
        if beyond > self.config.max_outside * hand.size:
            log.debug("dropping a hand reaching %.0f px past the frame (size %.0f px)", beyond, hand.size)
            return False
        return True

    def _duplicate(self, a: Hand, b: Hand) -> bool:
        return box_iou(a.bbox, b.bbox) > self.config.dedupe_iou

    def _covered(self, wrist: np.ndarray, hands: list[Hand]) -> bool:
        """Whether a found hand already sits at this pose wrist (its box grown by half its size)."""
        for hand in hands:
            x0, y0, x1, y1 = hand.bbox
            pad = 0.5 * hand.size
            if x0 - pad <= wrist[0] <= x1 + pad and y0 - pad <= wrist[1] <= y1 + pad:
                return True
        return False

    def wrist_crops(
        self, image_shape: tuple[int, ...], body: BodyPose, hands: list[Hand]
    ) -> list[tuple[np.ndarray, list[CropBox]]]:
        """The regions the second pass searches: per visible pose wrist that no found hand covers, the
        square at `wrist_crop_scale` followed by its retries at x `wrist_crop_retry` and / `wrist_crop_retry`
        (searched only while nothing is found: the palm detector's hit rate depends on the hand's share
        of the crop, and the best share varies with pose-estimate error)."""
        h, w = image_shape[:2]
        scales = [self.config.wrist_crop_scale]
        if self.config.wrist_crop_retry and self.config.wrist_crop_retry != 1.0:
            scales += [
                self.config.wrist_crop_scale * self.config.wrist_crop_retry,
                self.config.wrist_crop_scale / self.config.wrist_crop_retry,
            ]
        out = []
        for arm in POSE_ARM:
            wrist, visibility = body.wrist(arm)
            if visibility < self.config.wrist_min_visibility or self._covered(wrist, hands):
                continue
            cx, cy = body.hand_center(arm)
            tries = []
            for scale in scales:
                side = scale * max(h, w)
                size = max(self.config.wrist_crop_min_size, int(round(side)))
                tries.append(CropBox(cx - side / 2.0, cy - side / 2.0, side, size))
            out.append((wrist, tries))
        return out

    def _wrist_pass(
        self, image: np.ndarray, body: BodyPose, hands: list[Hand], full: FullCrop | None = None
    ) -> list[Hand]:
        found: list[Hand] = []
        wrists = [
            body.wrist(arm)[0] for arm in POSE_ARM if body.wrist(arm)[1] >= self.config.wrist_min_visibility
        ]
        # A hand is rarely under a fifth of the shoulder width; smaller "hands" in the zoomed crop are
        # background texture (seen on hagrid_mini: an 11 px false hand beside a 66 px true one).
        min_size = self.config.wrist_min_hand_ratio * body.shoulder_width()
        for wrist, tries in self.wrist_crops(image.shape, body, hands):
            if self._covered(wrist, found):
                continue  # the other wrist's crop already found the hand at this one
            for crop in tries:
                new = self._search(image, crop, wrists, min_size, full)
                for hand in new:
                    if not any(self._duplicate(hand, other) for other in found):
                        found.append(hand)
                if new:
                    break
        return found

    def _search(
        self,
        image: np.ndarray,
        crop: CropBox,
        wrists: list[np.ndarray],
        min_size: float,
        full: FullCrop | None = None,
    ) -> list[Hand]:
        kept = []
        pixels = warp_crop(image, crop) if full is None else full(crop)
        for hand in self._run(pixels, crop, SOURCE_WRIST):
            nearest = min(float(np.linalg.norm(hand.keypoints[0, :2] - wr)) for wr in wrists)
            if nearest > self.config.wrist_match_dist * crop.side:
                log.debug("dropping a wrist-crop hand %.0f px from every pose wrist", nearest)
                continue
            if hand.size < min_size:
                log.debug(
                    "dropping a %.0f px wrist-crop hand (body scale needs >= %.0f px)", hand.size, min_size
                )
                continue
            kept.append(hand)
        return kept

    def close(self) -> None:
        if self._hands is not None:
            self._hands.close()
            self._hands = None
