"""Where the two-stage pipeline's hands go: crop boxes in the output frame, and the stage-1 crops pasted
back into it.

- `place_hands`: per request hand, prep's square crop box (`manifests.geometry.square_crop_box` of the
  visible keypoints with the hand model's crop margin) and the keypoints in crop pixels; hands smaller
  than `min_hand_size` are skipped (left to stage 2) or refused (`SMALL_HAND_POLICIES`).
- `fix_masks`: a stage-1 mask that misses its hand is replaced by a `MASK_FALLBACKS` entry.
- `paste_hands`: the crops and masks resized back into their boxes, in an `OVERLAP_ORDERS` order.
- `feathered_alpha`: the hand interiors' alpha for compositing the crops over the decoded image.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from manifests.geometry import (
    CropBox,
    hand_silhouette,
    keypoint_bbox,
    keypoint_coverage,
    paste_crop,
    square_crop_box,
)

logger = logging.getLogger(__name__)


class HandTooSmallError(ValueError):
    """A hand is too small in the output to be drawn at the stage-1 crop size (``small_hands="refuse"``)."""


def _larger_on_top(sizes: Sequence[float]) -> list[int]:
    # Without depth, the larger hand is the likelier one in front: paste it last. Stable for ties.
    return sorted(range(len(sizes)), key=lambda i: (sizes[i], i))


def _given(sizes: Sequence[float]) -> list[int]:
    return list(range(len(sizes)))


# name -> (hand sizes) -> paste order (indices; a later hand covers an earlier one where they overlap)
OVERLAP_ORDERS: dict[str, Callable[[Sequence[float]], list[int]]] = {
    "larger_on_top": _larger_on_top,
    "given": _given,
}

SMALL_HAND_POLICIES = ("skip", "refuse")


def _visible(kps: np.ndarray) -> np.ndarray:
    valid = kps[:, 2] > 0
    return kps[valid] if valid.any() else kps


def skeleton_mask(keypoints: np.ndarray, size: int) -> np.ndarray:
    """An (S, S) bool hand mask drawn from (21, 3) crop keypoints (`manifests.geometry.hand_silhouette`),
    with bones 9% of the visible hand's extent thick, as the synthetic manifest draws hands."""
    x0, y0, x1, y1 = keypoint_bbox(_visible(keypoints))
    return hand_silhouette(keypoints, (size, size), max(2, int(round(0.09 * max(x1 - x0, y1 - y0)))))


def mask_coverage(mask: np.ndarray, keypoints: np.ndarray) -> float:
    """Share of the visible crop keypoints on the stage-1 mask, grown by one pixel since fingertips sit
    on its border; a keypoint past the crop is looked up at the border."""
    return keypoint_coverage(mask, keypoints, grow=1, outside="clip")


# What to do with a stage-1 mask that misses the hand (fewer than `min_mask_coverage` of its keypoints
# fall on it), as an undertrained mask head gives: name -> (mask, crop keypoints, size) -> mask, or
# None to keep the stage-1 mask whatever its coverage.
MASK_FALLBACKS: dict[str, Callable[[np.ndarray, np.ndarray, int], np.ndarray] | None] = {
    "skeleton": lambda mask, kps, size: skeleton_mask(kps, size),
    "none": None,
}


@dataclass
class PlacedHand:
    """One hand of the request, where stage 1 draws it and where it lands in the output."""

    index: int  # position in the request's hand list
    handedness: str | None
    keypoints: np.ndarray  # (21, 3) output pixels
    size: float  # longer side of the visible keypoints' box, output pixels
    box: CropBox  # square crop box in output pixels, resampled to the stage-1 crop size
    crop_keypoints: np.ndarray  # (21, 3) stage-1 crop pixels
    prompt: str = ""


def place_hands(
    hands: Sequence[np.ndarray],
    handedness: Sequence[str | None],
    prompts: Sequence[str],
    crop_size: int,
    crop_margin: float,
    min_hand_size: float,
    small_hands: str,
    latent_factor: int,
) -> tuple[list[PlacedHand], list[dict]]:
    """Crop box and crop keypoints per hand; hands under `min_hand_size` output pixels are skipped
    (reported in the second list) or refused (`HandTooSmallError`). `latent_factor` (the VAE's) only
    words the message."""
    placed, skipped = [], []
    for i, (kps, side, prompt) in enumerate(zip(hands, handedness, prompts)):
        visible = _visible(kps)
        x0, y0, x1, y1 = keypoint_bbox(visible)
        size = float(max(x1 - x0, y1 - y0))
        box = square_crop_box(visible, size=crop_size, margin=crop_margin)
        if size < min_hand_size:
            reason = (
                f"hand {i} ({side or 'unknown side'}) spans {size:.1f} px, {min_hand_size - size:.1f} px less "
                f"than min_hand_size={min_hand_size:g} px; stage 1 would draw it at {crop_size} px and shrink "
                f"it {crop_size / box.side:.1f}x to a {box.side:.1f} px box "
                f"({box.side / latent_factor:.1f} latent pixels)"
            )
            if small_hands == "refuse":
                raise HandTooSmallError(reason + " (small_hands='refuse'; use 'skip' to leave it to stage 2)")
            logger.warning("%s: skipped, stage 2 paints it", reason)
            skipped.append({"index": i, "handedness": side, "reason": reason})
            continue
        placed.append(PlacedHand(i, side, kps, size, box, box.to_crop(kps), prompt))
    return placed, skipped


def fix_masks(
    placed: Sequence[PlacedHand], masks: np.ndarray, mask_fallback: str, min_mask_coverage: float
) -> list[str]:
    """Replace, in place, each (S, S) stage-1 mask on which fewer than `min_mask_coverage` of its hand's
    keypoints fall by the `MASK_FALLBACKS` entry; return each hand's mask source ("stage1" or the
    fallback's name)."""
    fallback = MASK_FALLBACKS[mask_fallback]
    sources = []
    for k, p in enumerate(placed):
        if fallback is not None and mask_coverage(masks[k], p.crop_keypoints) < min_mask_coverage:
            masks[k] = fallback(masks[k], p.crop_keypoints, masks.shape[-1])
            sources.append(mask_fallback)
        else:
            sources.append("stage1")
    return sources


def paste_hands(
    placed: Sequence[PlacedHand],
    images: np.ndarray,
    masks: np.ndarray,
    canvas_hw: tuple[int, int],
    overlap_order: str,
    labels: bool = False,
) -> tuple:
    """Resize each (S, S, 3) uint8 hand and (S, S) bool mask back into its box on an (H, W) canvas.

    Returns (canvas (H, W, 3) uint8 with the hands' pixels, zeros elsewhere; mask (H, W) bool; the
    paste order as request indices), plus with `labels` an (H, W) int32 map of which hand owns each
    pixel (its position in `placed`; -1 outside), what the keep-masks are built from. Where hands
    overlap, the one pasted later wins the pixels.
    """
    h, w = canvas_hw
    canvas = np.zeros((h, w, 3), np.uint8)
    owner = np.full((h, w), -1, np.int32)
    order = OVERLAP_ORDERS[overlap_order]([p.size for p in placed])
    for k in order:
        box = placed[k].box
        pixels, coverage = paste_crop(canvas, images[k], box)
        soft, _ = paste_crop(np.zeros((h, w), np.uint8), masks[k].astype(np.uint8) * 255, box)
        inside = coverage & (soft > 127)
        canvas[inside] = pixels[inside]
        owner[inside] = k
    out = (canvas, owner >= 0, [placed[k].index for k in order])
    return (*out, owner) if labels else out


def feathered_alpha(mask: np.ndarray, feather: int) -> np.ndarray:
    """(H, W) bool hand mask -> (H, W) float32 alpha in [0, 1] covering the hand *interior*: the mask
    eroded by `feather` px, then Gaussian-blurred with sigma `feather` / 2, so the ramp ends inside the
    hand and the border stays the stage-2 painting."""
    m = mask.astype(np.uint8)
    if feather <= 0:
        return m.astype(np.float32)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * feather + 1, 2 * feather + 1))
    inner = cv2.erode(m, kernel).astype(np.float32)
    return np.clip(cv2.GaussianBlur(inner, (0, 0), sigmaX=feather / 2.0), 0.0, 1.0) * (m > 0)
