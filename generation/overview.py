"""The overview sheet of one generated image: what was asked, what each stage made, how blending went.

Rows (each a `manifests.draw.contact_sheet`):
1. the target skeleton (body as OpenPose 18 plus the hand skeletons), each stage-1 hand with its mask,
   and the pasted hand canvas with the hand mask;
2. the keep weights K_i over the stage-2 steps (up to `max_mask_tiles`, evenly spaced), white = kept,
   each captioned with the share of every hand's mask pixels it keeps;
3. the final image, and the final image with the pose detected in it drawn over.
"""

from __future__ import annotations

import cv2
import numpy as np

from manifests.draw import contact_sheet, draw_hand, draw_openpose, overlay_mask
from manifests.pose import mediapipe33_to_openpose18, to_openpose18


def body18(
    body: np.ndarray | None, body_format: str | None, min_visibility: float = 0.3
) -> np.ndarray | None:
    if body is None:
        return None
    kps = np.asarray(body, np.float32)
    if body_format == "mediapipe33":
        return mediapipe33_to_openpose18(kps, min_visibility=min_visibility)
    return to_openpose18(kps, body_format)


def draw_pose(image: np.ndarray, body: np.ndarray | None, body_format: str | None, hands) -> np.ndarray:
    """Body (any supported format) and (21, >=2) hands drawn over a copy of (H, W, 3) uint8 `image`."""
    side = max(image.shape[:2])
    out = image
    pose = body18(body, body_format)
    if pose is not None:
        out = draw_openpose(out, pose, stickwidth=max(1, side // 128), radius=max(1, side // 128))
    for kps in hands:
        out = draw_hand(out, np.asarray(kps, np.float64))
    return out if out is not image else image.copy()


def _stack(rows: list[np.ndarray], background: int = 32) -> np.ndarray:
    width = max(r.shape[1] for r in rows)
    padded = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=background) for r in rows]
    return np.concatenate(padded, axis=0)


def mask_steps(num_steps: int, max_tiles: int) -> list[int]:
    """Up to `max_tiles` evenly spaced step indices, always including the first and the last."""
    if num_steps <= max_tiles:
        return list(range(num_steps))
    return sorted({int(round(v)) for v in np.linspace(0, num_steps - 1, max_tiles)})


def mask_caption(step: int, num_steps: int, kept_shares=None) -> str:
    """ "K 3/30 98%" (with one kept share per hand, "98/91%") for the keep-mask tile of `step`."""
    text = f"K {step + 1}/{num_steps}"
    if kept_shares is None or not len(kept_shares):
        return text
    return text + " " + "/".join(f"{100 * v:.0f}" for v in np.asarray(kept_shares)[step]) + "%"


def overview_sheet(
    width: int,
    height: int,
    body: np.ndarray | None,
    body_format: str | None,
    hands: list[np.ndarray],
    hand_images: list[np.ndarray],
    hand_masks: list[np.ndarray],
    hand_captions: list[str],
    hand_canvas: np.ndarray,
    hand_mask: np.ndarray,
    keep_masks,
    image: np.ndarray,
    detected: tuple | None,
    tile: int = 192,
    max_mask_tiles: int = 8,
    kept_shares=None,
) -> np.ndarray:
    """(H', W', 3) uint8 sheet. `keep_masks` is (N, h, w) (torch or numpy) or None; `kept_shares` (N,
    hands) the share of each hand's pixels kept per step, or None; `detected` is (body33 or None,
    [hand (21, 3)], note) in the final image's pixels, or None when detection was off."""
    blank = np.zeros((height, width, 3), np.uint8)
    tiles = [draw_pose(blank, body, body_format, hands)]
    captions = ["target pose"]
    for img, m, cap in zip(hand_images, hand_masks, hand_captions):
        tiles.append(overlay_mask(img, m))
        captions.append(cap)
    tiles.append(overlay_mask(hand_canvas, hand_mask))
    captions.append("pasted hands + mask")
    rows = [contact_sheet(tiles, columns=len(tiles), tile=tile, captions=captions)]

    if keep_masks is not None and len(keep_masks):
        masks = np.asarray(keep_masks.cpu() if hasattr(keep_masks, "cpu") else keep_masks, np.float32)
        steps = mask_steps(len(masks), max_mask_tiles)
        strip = []
        for i in steps:
            up = cv2.resize(masks[i], (width, height), interpolation=cv2.INTER_NEAREST)
            strip.append(np.repeat((np.clip(up, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2))
        rows.append(
            contact_sheet(
                strip,
                columns=len(strip),
                tile=tile // 2,
                captions=[mask_caption(i, len(masks), kept_shares) for i in steps],
            )
        )

    final = [image]
    final_captions = ["final"]
    if detected is not None:
        det_body, det_hands, note = detected
        final.append(draw_pose(image, det_body, "mediapipe33" if det_body is not None else None, det_hands))
        final_captions.append(note)
    rows.append(contact_sheet(final, columns=len(final), tile=tile * 2, captions=final_captions))
    return _stack(rows)
