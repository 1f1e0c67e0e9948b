"""A small synthetic manifest written through the real writer: for tests, demos and benchmarks of
code downstream of the manifest (datasets, training) that should not depend on the detectors.

Images are drawn, not photographed: a skin-coloured hand skeleton (thick strokes plus a palm) on a
textured background, so the mask, crop and heatmap columns all carry consistent, checkable content.
"""

from __future__ import annotations

import cv2
import numpy as np

from .codecs import encode_heatmap, encode_jpeg, encode_mask
from .geometry import crop_image, hand_silhouette, keypoint_bbox, render_heatmap, square_crop_box
from .writer import ManifestWriter

LABELS = ("call", "four", "rock", "peace")

# A canonical open right hand in a unit box (x right, y down), MediaPipe order.
_CANON = np.array(
    [
        [0.50, 0.95],
        [0.35, 0.85],
        [0.25, 0.72],
        [0.18, 0.60],
        [0.12, 0.50],
        [0.38, 0.55],
        [0.36, 0.38],
        [0.35, 0.26],
        [0.34, 0.15],
        [0.50, 0.52],
        [0.50, 0.33],
        [0.50, 0.20],
        [0.50, 0.08],
        [0.62, 0.55],
        [0.64, 0.38],
        [0.65, 0.26],
        [0.66, 0.16],
        [0.74, 0.60],
        [0.78, 0.47],
        [0.80, 0.38],
        [0.82, 0.30],
    ],
    dtype=np.float64,
)


def synthetic_hand(rng: np.random.Generator, center, size: float) -> np.ndarray:
    """(21, 3) keypoints [x, y, 1] of a randomly rotated and scaled canonical hand."""
    theta = rng.uniform(-0.6, 0.6)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    pts = (_CANON - 0.5) * size
    pts = pts * rng.uniform(0.9, 1.1, size=(1, 2))
    pts = pts @ rot.T + np.asarray(center, dtype=np.float64)
    return np.concatenate([pts, np.ones((21, 1))], axis=1)


def draw_synthetic_hand(image: np.ndarray, mask: np.ndarray, kps: np.ndarray, size: float) -> None:
    """Paint the hand into `image` and its exact silhouette into `mask`, in place."""
    mask[hand_silhouette(kps, mask.shape[:2], max(2, int(size * 0.09)))] = 255
    image[mask > 0] = (224, 172, 138)


def make_synthetic_manifest(
    root: str,
    num_images: int = 12,
    hands_per_image: int = 2,
    image_size=(256, 192),
    crop_size: int = 64,
    heatmap_size: int = 8,
    sigma: float = 1.0,
    shard_size: int = 4,
    seed: int = 0,
    no_hands_every: int = 5,
    row_group_size: int = 4,
) -> str:
    """Write a manifest of `num_images` drawn images to `root` and return `root`.

    Every `no_hands_every`-th image has no hands (status ``no_hands``); the rest have 1..hands_per_image.
    `row_group_size` is the writer's (small by default so tests see several row groups per shard).
    """
    rng = np.random.default_rng(seed)
    w, h = image_size
    writer = ManifestWriter(root, row_group_size=row_group_size)
    for shard in range(0, (num_images + shard_size - 1) // shard_size):
        images, hands = [], []
        for i in range(shard * shard_size, min(num_images, (shard + 1) * shard_size)):
            label = LABELS[i % len(LABELS)]
            image_id = f"synthetic_{i:05d}"
            noise = rng.integers(40, 90, size=(h // 8, w // 8, 3), dtype=np.uint8)
            image = cv2.resize(noise, (w, h), interpolation=cv2.INTER_LINEAR)
            all_mask = np.zeros((h, w), np.uint8)
            n = (
                0
                if (no_hands_every and i % no_hands_every == no_hands_every - 1)
                else 1 + i % hands_per_image
            )
            for j in range(n):
                size = rng.uniform(0.25, 0.4) * min(w, h)
                cx = (j + 0.5) * w / n + rng.uniform(-0.05, 0.05) * w
                cy = rng.uniform(0.35, 0.65) * h
                kps = synthetic_hand(rng, (cx, cy), size)
                if j % 2:
                    kps[:, 0] = 2 * cx - kps[:, 0]  # mirror into a left hand
                hand_mask = np.zeros((h, w), np.uint8)
                draw_synthetic_hand(image, hand_mask, kps, size)
                all_mask |= hand_mask
                box = square_crop_box(kps, size=crop_size, margin=0.2)
                crop_kps = box.to_crop(kps)
                heat, shape, dtype = encode_heatmap(render_heatmap(crop_kps, crop_size, heatmap_size, sigma))
                bbox = keypoint_bbox(kps)
                handed = "left" if j % 2 else "right"
                hands.append(
                    {
                        "hand_id": f"{image_id}_h{j}",
                        "image_id": image_id,
                        "hand_index": j,
                        "handedness": handed,
                        "handedness_score": 0.99,
                        "keypoints": kps.tolist(),
                        "keypoint_source": "annotation",
                        "bbox": bbox.tolist(),
                        "hand_size": float(max(bbox[2] - bbox[0], bbox[3] - bbox[1])),
                        "crop_box": box.box,
                        "crop_size": crop_size,
                        "crop": encode_jpeg(crop_image(image, box)),
                        "crop_keypoints": crop_kps.tolist(),
                        "mask": encode_mask(crop_image(hand_mask, box, resample=0)),
                        "mask_method": "synthetic",
                        "mask_score": 1.0,
                        "heatmap": heat,
                        "heatmap_shape": shape,
                        "heatmap_dtype": dtype,
                        "heatmap_sigma": sigma,
                        "label": label,
                        "caption": f"a hand showing a {label} gesture, {handed} hand",
                    }
                )
            body = np.zeros((33, 3), np.float32)
            body[:, 0] = rng.uniform(0.2, 0.8, 33) * w
            body[:, 1] = np.linspace(0.1, 0.95, 33) * h
            body[:, 2] = 0.9
            images.append(
                {
                    "image_id": image_id,
                    "source_uri": f"synthetic://{image_id}",
                    "dataset": "synthetic",
                    "split": "train" if i % 10 < 8 else "val",
                    "width": w,
                    "height": h,
                    "label": label,
                    "caption": f"a person showing a {label} gesture",
                    "subject_id": f"s{i % 3}",
                    "status": "ok" if n else "no_hands",
                    "error": None,
                    "num_hands": n,
                    "body_keypoints": body.tolist(),
                    "body_score": 0.9,
                    "hands_mask": encode_mask(all_mask),
                    "image": encode_jpeg(image),
                    "image_width": w,
                    "image_height": h,
                }
            )
        writer.write_shard(shard, {"images": images, "hands": hands})
    writer.finalize(
        {
            "source": "synthetic",
            "num_images": num_images,
            "seed": seed,
            "crop_size": crop_size,
            "heatmap_size": heatmap_size,
            "sigma": sigma,
        }
    )
    return root
