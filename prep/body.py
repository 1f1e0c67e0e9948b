"""Body pose from MediaPipe Pose (the model bundled in the mediapipe wheel).

The 33 landmarks are stored as they come (pixels of the oriented image plus visibility); the
18-point OpenPose layout that ControlNet conditioning uses is derived on demand by
`manifests.pose.mediapipe33_to_openpose18`, the one implementation of that conversion.
MediaPipe Pose names sides from the person's point of view (``left_wrist`` is the person's left hand)
and, unlike MediaPipe Hands, does not assume a mirrored image.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from manifests.pose import MEDIAPIPE_POSE_NAMES, mediapipe33_to_openpose18

from .config import PrepConfig

log = logging.getLogger(__name__)

# Pose landmark indices used by the wrist-guided hand search, per side of the person.
POSE_ARM = {
    "left": {"wrist": 15, "elbow": 13, "hand": (17, 19, 21)},  # pinky, index, thumb
    "right": {"wrist": 16, "elbow": 14, "hand": (18, 20, 22)},
}
assert MEDIAPIPE_POSE_NAMES[15] == "left_wrist" and MEDIAPIPE_POSE_NAMES[16] == "right_wrist"


@dataclass
class BodyPose:
    keypoints: (
        np.ndarray
    )  # (33, 3) float32 [x, y, visibility]; x, y in oriented-image pixels, visibility 0..1

    @property
    def score(self) -> float:
        """Mean landmark visibility, 0..1."""
        return float(np.mean(self.keypoints[:, 2]))

    def openpose18(self, min_visibility: float = 0.3) -> np.ndarray:
        """(18, 3) OpenPose [x, y, score]."""
        return mediapipe33_to_openpose18(self.keypoints, min_visibility=min_visibility)

    def wrist(self, side: str) -> tuple[np.ndarray, float]:
        """((2,) pixel position, visibility) of the person's `side` ("left"/"right") wrist."""
        kp = self.keypoints[POSE_ARM[side]["wrist"]]
        return kp[:2].astype(np.float64), float(kp[2])

    def shoulder_width(self) -> float:
        """Distance between the shoulders in pixels (a body scale; small for a person seen side-on)."""
        return float(np.linalg.norm(self.keypoints[11, :2] - self.keypoints[12, :2]))

    def hand_center(self, side: str) -> np.ndarray:
        """(2,) estimate of the hand's centre: midway between the wrist and the mean of the pose's
        pinky, index and thumb landmarks (which sit near the knuckles)."""
        arm = POSE_ARM[side]
        wrist = self.keypoints[arm["wrist"], :2].astype(np.float64)
        knuckles = self.keypoints[list(arm["hand"]), :2].astype(np.float64).mean(axis=0)
        return (wrist + knuckles) / 2.0


class BodyPoseDetector:
    """MediaPipe Pose, static-image mode, model_complexity=1 (the only one bundled). Loaded on first use."""

    def __init__(self, config: PrepConfig):
        self.config = config
        self._pose = None

    def _model(self):
        if self._pose is None:
            import mediapipe as mp

            self._pose = mp.solutions.pose.Pose(
                static_image_mode=True,
                model_complexity=1,
                enable_segmentation=False,
                min_detection_confidence=self.config.min_pose_confidence,
            )
        return self._pose

    def detect(self, image: np.ndarray) -> BodyPose | None:
        """(H, W, 3) uint8 RGB -> the most prominent person's pose, or None when no body is found."""
        h, w = image.shape[:2]
        result = self._model().process(image)
        if result.pose_landmarks is None:
            return None
        kps = np.array(
            [[lm.x * w, lm.y * h, lm.visibility] for lm in result.pose_landmarks.landmark], dtype=np.float32
        )
        # MediaPipe extrapolates landmarks past the frame (knees below a half-body shot) and may still
        # call them likely visible (up to 0.9 seen on hagrid_mini). Outside the image nothing is
        # visible: their visibility becomes 0, their positions are kept.
        outside = (kps[:, 0] < 0) | (kps[:, 0] > w) | (kps[:, 1] < 0) | (kps[:, 1] > h)
        kps[outside, 2] = 0.0
        return BodyPose(kps)

    def close(self) -> None:
        if self._pose is not None:
            self._pose.close()
            self._pose = None
