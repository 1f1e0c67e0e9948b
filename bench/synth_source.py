"""A synthetic HaGRID-layout source of many small JPEGs with known hand keypoints (annotation mode).

`write_tree(root, n)` writes `root/<gesture>/<id>.jpg` and `root/annotations/train/<gesture>.json`
(normalised `hand_landmarks`, `bboxes`, `labels`, `user_id`, as HaGRID has them). Each photo is one
of `VARIANTS` pre-drawn pictures (a skin-coloured hand skeleton on a noisy background, the hand placed,
scaled and turned differently in each), so writing 100,000 files costs a copy each; the landmarks
are exactly where the variant's skeleton is drawn.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np

GESTURES = ("call", "four", "rock", "palm")
VARIANTS = 64
SIZE = (160, 120)  # (w, h): a small JPEG, about 4 kB

# A right hand in MediaPipe order (wrist, thumb 1-4, index 5-8, middle 9-12, ring 13-16, little 17-20),
# in units of the hand's size, wrist at the origin, fingers up.
_FINGERS = [(-0.35, 0.15), (-0.15, 0.0), (0.0, 0.0), (0.15, 0.0), (0.3, 0.05)]
HAND = np.array(
    [[0.0, 0.0]] + [[bx * (1 + 0.25 * j), -0.3 - by - 0.17 * j] for bx, by in _FINGERS for j in range(4)],
    dtype=np.float64,
)


def _variant(seed: int) -> tuple[bytes, np.ndarray]:
    """(JPEG bytes, (21, 2) normalised landmarks) of one picture."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    w, h = SIZE
    noise = rng.integers(40, 200, size=(h, w, 3), dtype=np.uint8)
    im = Image.fromarray(noise)
    size = rng.uniform(0.3, 0.5) * h
    angle = rng.uniform(-0.6, 0.6)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = np.array([rng.uniform(0.35, 0.65) * w, rng.uniform(0.6, 0.8) * h])
    pts = HAND @ rot.T * size + centre
    draw = ImageDraw.Draw(im)
    for f in range(5):
        chain = [0] + [1 + 4 * f + j for j in range(4)]
        draw.line([tuple(pts[i]) for i in chain], fill=(225, 180, 150), width=4)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return buf.getvalue(), pts / np.array([w, h])


def write_tree(root: str, n: int, gestures=GESTURES) -> int:
    """`n` photos (ids `<gesture>-<k>`) spread evenly over `gestures`; returns n."""
    variants = [_variant(s) for s in range(VARIANTS)]
    per = {g: {} for g in gestures}
    for g in gestures:
        os.makedirs(os.path.join(root, g), exist_ok=True)
    for k in range(n):
        g = gestures[k % len(gestures)]
        data, marks = variants[k % VARIANTS]
        image_id = f"{g}-{k:07d}"
        with open(os.path.join(root, g, image_id + ".jpg"), "wb") as f:
            f.write(data)
        x0, y0 = marks.min(0)
        x1, y1 = marks.max(0)
        per[g][image_id] = {
            "bboxes": [[x0, y0, x1 - x0, y1 - y0]],
            "labels": [g],
            "hand_landmarks": [marks.tolist()],
            "user_id": f"user{k % 997}",
            "leading_hand": "right",
        }
    os.makedirs(os.path.join(root, "annotations", "train"), exist_ok=True)
    for g, entries in per.items():
        with open(os.path.join(root, "annotations", "train", f"{g}.json"), "w") as f:
            json.dump(entries, f)
    return n
