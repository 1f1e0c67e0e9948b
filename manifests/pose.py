"""Keypoint layouts: MediaPipe hand (21), MediaPipe Pose (33) and OpenPose body (18), plus conversions.

Drawing lives in `manifests.draw`; this module is pure data and numpy.
"""

from __future__ import annotations

import numpy as np

HAND_KEYPOINT_NAMES = [
    "wrist",
    "thumb_cmc", "thumb_mcp", "thumb_ip", "thumb_tip",
    "index_mcp", "index_pip", "index_dip", "index_tip",
    "middle_mcp", "middle_pip", "middle_dip", "middle_tip",
    "ring_mcp", "ring_pip", "ring_dip", "ring_tip",
    "little_mcp", "little_pip", "little_dip", "little_tip",
]  # fmt: skip

# Each finger is a chain from the wrist, base to tip.
HAND_EDGES = [(0, 1), (1, 2), (2, 3), (3, 4)] + [
    e
    for base in (5, 9, 13, 17)
    for e in [(0, base), (base, base + 1), (base + 1, base + 2), (base + 2, base + 3)]
]

MEDIAPIPE_POSE_NAMES = [
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
    "right_eye_outer", "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_pinky",
    "right_pinky", "left_index", "right_index", "left_thumb", "right_thumb", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle", "left_heel", "right_heel",
    "left_foot_index", "right_foot_index",
]  # fmt: skip


def _mirror_name(name: str) -> str:
    return name.replace("left", "\0").replace("right", "left").replace("\0", "right")


# The MediaPipe Pose landmark each one becomes in the mirrored image: left and right swap (the nose stays).
MEDIAPIPE_POSE_MIRROR = [MEDIAPIPE_POSE_NAMES.index(_mirror_name(n)) for n in MEDIAPIPE_POSE_NAMES]

OPENPOSE18_NAMES = [
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
    "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
]  # fmt: skip

# OpenPose index -> MediaPipe index; the neck (1) is the shoulders' midpoint.
_MP_FOR_OPENPOSE = {0: 0, 2: 12, 3: 14, 4: 16, 5: 11, 6: 13, 7: 15, 8: 24, 9: 26, 10: 28, 11: 23, 12: 25, 13: 27,
                    14: 5, 15: 2, 16: 8, 17: 7}  # fmt: skip

# ControlNet's OpenPose limbs (0-based) and the standard 18 colours (RGB), as in the OpenPose renderer.
OPENPOSE_LIMBS = [(1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12),
                  (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17)]  # fmt: skip
OPENPOSE_COLORS = [
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
]  # fmt: skip

BODY_FORMATS = {"mediapipe33": 33, "openpose18": 18}


def mediapipe33_to_openpose18(kps: np.ndarray, min_visibility: float = 0.3) -> np.ndarray:
    """(33, 3) MediaPipe Pose [x, y, visibility] -> (18, 3) OpenPose [x, y, score].

    Points whose visibility is below `min_visibility` get score 0 (not drawn). The neck is the
    midpoint of the shoulders, with the smaller of their two scores.
    """
    kps = np.asarray(kps, dtype=np.float32)
    if kps.shape != (33, 3):
        raise ValueError(f"expected MediaPipe Pose keypoints of shape (33, 3), got {kps.shape}")
    out = np.zeros((18, 3), dtype=np.float32)
    for op, mp in _MP_FOR_OPENPOSE.items():
        out[op] = kps[mp]
    out[1, :2] = (kps[11, :2] + kps[12, :2]) / 2
    out[1, 2] = min(kps[11, 2], kps[12, 2])
    out[out[:, 2] < min_visibility, 2] = 0.0
    return out


def to_openpose18(kps: np.ndarray, fmt: str = "mediapipe33") -> np.ndarray:
    """Body keypoints in any supported format -> (18, 3) OpenPose."""
    converters = {"mediapipe33": mediapipe33_to_openpose18, "openpose18": lambda k: np.asarray(k, np.float32)}
    if fmt not in converters:
        raise ValueError(f"unknown body keypoint format {fmt!r}; expected one of {sorted(converters)}")
    out = converters[fmt](kps)
    if out.shape != (18, 3):
        raise ValueError(f"{fmt} body keypoints must convert to (18, 3), got {out.shape}")
    return out


class KeypointError(ValueError):
    """Keypoints of the wrong shape, with NaN or infinite values, or outside their frame."""


def keypoint_array(value, count: int, where: str, frame: tuple[int, int] | None = None) -> np.ndarray:
    """`value` as a (count, 3) float64 [x, y, score] array; a missing score column is 1 (visible).

    Raises `KeypointError` naming `where` for anything that is not `count` rows of [x, y] or
    [x, y, score] numbers, for NaN or infinite values, and, with `frame` = (width, height), for a
    visible point (score > 0) outside [0, width] x [0, height]. The one check of keypoints handed in
    from outside: pose specs, pose files and the pipelines' arguments.
    """
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise KeypointError(f"{where}: not a list of numbers ({exc})") from None
    if arr.ndim != 2 or arr.shape[0] != count or arr.shape[1] not in (2, 3):
        raise KeypointError(
            f"{where}: expected {count} points of [x, y] or [x, y, score], got shape {arr.shape}"
        )
    if not np.isfinite(arr).all():
        bad = sorted({int(i) for i in np.argwhere(~np.isfinite(arr))[:, 0]})
        raise KeypointError(f"{where}: NaN or infinite values at points {bad}")
    if arr.shape[1] == 2:
        arr = np.concatenate([arr, np.ones((count, 1))], axis=1)
    if frame is not None:
        width, height = frame
        visible = arr[:, 2] > 0
        outside = visible & ((arr[:, 0] < 0) | (arr[:, 0] > width) | (arr[:, 1] < 0) | (arr[:, 1] > height))
        if outside.any():
            idx = np.flatnonzero(outside).tolist()
            raise KeypointError(
                f"{where}: points {idx} lie outside the {width}x{height} canvas (e.g. {arr[idx[0], :2].tolist()})"
            )
    return arr
