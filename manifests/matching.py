"""Keypoint matching and pose-accuracy metrics, shared by `handfirst-manifests score` (annotation
quality against ground truth) and `handfirst-gen evaluate` (pose accuracy of generated images).

Definitions (the same for hands and bodies):

- **Instance**: one hand or body, ``(K, 3)`` float ``[x, y, s]`` in pixels of one common frame.
  For a *target* (ground truth or conditioning pose), keypoint ``k`` counts only where
  ``valid[k]`` is true (by default ``s > 0``: COCO's ``v`` flag, or a visibility already
  thresholded). A target without any valid keypoint is dropped. Predicted keypoints are all used.
- **Box size** of a target: ``max(width, height)`` of the tight box around its valid keypoints
  (floored at `MatchConfig.min_box_size` px). It normalises both the matching distance and PCK.
- **Matching** (per image): the cost of (prediction p, target t) is the mean over t's valid
  keypoints of ``||p_k - t_k|| / box_size(t)``, plus `handedness_weight` when both sides name a
  handedness and they differ. Handedness is a tie-break only: the weight is small next to keypoint
  distances, so a hand that is in the right place with the wrong label still matches (and is counted
  in ``handedness_accuracy``). `scipy.optimize.linear_sum_assignment` solves the assignment; a pair
  whose mean normalised distance exceeds `gate` is rejected (the prediction is a false positive and
  the target a miss).
- **PCK@a**: share of valid keypoints of matched targets with ``||p_k - t_k|| <= a * box_size(t)``.
  ``pck_all_a`` also counts every valid keypoint of a missed target as wrong, so it folds detection
  failures into one number.
- **mean_error_px**: mean Euclidean distance over the valid keypoints of matched targets, in pixels.
- **detected_share** (= recall): matched targets / targets; **precision**: matched / predictions.
- **OKS AP**: COCO keypoint AP@[.5:.95] from pycocotools' `COCOeval`, with the sigmas below and
  the target's keypoint-box area as the OKS scale (``s^2``). Predictions are ranked by their score.

OKS sigmas:

- Hands: `HAND_OKS_SIGMAS`, the 21 per-keypoint hand sigmas of COCO-WholeBody (Jin et al., "Whole-Body
  Human Pose Estimation in the Wild", ECCV 2020; ``sigmas_lefthand`` / ``sigmas_righthand`` in the
  COCO-WholeBody evaluation code, also mmpose's ``coco_wholebody_hand`` dataset config). Their order
  (wrist, thumb1-4, forefinger1-4, ... pinky1-4, base to tip) is MediaPipe's hand order.
- Bodies: `COCO_BODY_SIGMAS`, the 17 COCO person-keypoint sigmas (pycocotools' defaults). Bodies are
  scored in the COCO-17 layout; MediaPipe Pose's 33 landmarks map onto it with `MEDIAPIPE33_TO_COCO17`
  (the extra face, hand and foot landmarks are not scored, since COCO has no sigma for them).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

# COCO-WholeBody hand sigmas, MediaPipe hand order (see the module docstring for the source).
HAND_OKS_SIGMAS = np.array(
    [
        0.029,
        0.022,
        0.035,
        0.037,
        0.047,
        0.026,
        0.025,
        0.024,
        0.035,
        0.018,
        0.024,
        0.022,
        0.026,
        0.017,
        0.021,
        0.021,
        0.032,
        0.020,
        0.019,
        0.022,
        0.031,
    ],
    dtype=np.float64,
)

COCO17_NAMES = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
    "right_knee", "left_ankle", "right_ankle",
]  # fmt: skip

# COCO person keypoint sigmas, as in pycocotools' COCOeval defaults.
COCO_BODY_SIGMAS = (
    np.array(
        [0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87, 0.89, 0.89]
    )
    / 10.0
)

# COCO-17 index -> MediaPipe Pose 33 index (same names in both layouts).
MEDIAPIPE33_TO_COCO17 = [0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28]


def mediapipe33_to_coco17(kps: np.ndarray) -> np.ndarray:
    """(33, 3) MediaPipe Pose ``[x, y, visibility]`` -> (17, 3) COCO body keypoints (a copy)."""
    kps = np.asarray(kps, dtype=np.float64)
    if kps.shape != (33, 3):
        raise ValueError(f"expected MediaPipe Pose keypoints of shape (33, 3), got {kps.shape}")
    return kps[MEDIAPIPE33_TO_COCO17].copy()


@dataclass
class MatchConfig:
    """Settings of matching and PCK; see the module docstring for what each one means."""

    gate: float = 0.5  # max mean keypoint distance of an accepted pair, in target box sizes
    handedness_weight: float = 0.05  # added cost when handedness differs (tie-break only)
    pck_thresholds: tuple[float, ...] = (0.1, 0.2)  # PCK thresholds, fractions of the target box size
    min_box_size: float = 1.0  # px floor of the box size, so a degenerate target cannot divide by 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Instance:
    """One hand or body: (K, 3) ``[x, y, s]`` pixels, an optional handedness and a ranking score."""

    keypoints: np.ndarray
    handedness: str | None = None
    score: float = 1.0
    valid: np.ndarray | None = None  # (K,) bool; default keypoints[:, 2] > 0

    def __post_init__(self):
        kps = np.asarray(self.keypoints, dtype=np.float64)
        if kps.ndim != 2 or kps.shape[1] < 2:
            raise ValueError(f"keypoints must be (K, 2) or (K, 3), got shape {kps.shape}")
        if kps.shape[1] == 2:
            kps = np.concatenate([kps, np.ones((len(kps), 1))], axis=1)
        self.keypoints = kps[:, :3]
        if self.valid is None:
            self.valid = self.keypoints[:, 2] > 0
        self.valid = np.asarray(self.valid, dtype=bool) & np.isfinite(self.keypoints[:, :2]).all(axis=1)
        if self.handedness is not None:
            self.handedness = str(self.handedness).lower()

    @property
    def num_valid(self) -> int:
        return int(self.valid.sum())

    def box(self) -> np.ndarray:
        """[x0, y0, x1, y1] of the valid keypoints."""
        xy = self.keypoints[self.valid, :2]
        return np.concatenate([xy.min(axis=0), xy.max(axis=0)])

    def box_size(self, min_size: float = 1.0) -> float:
        x0, y0, x1, y1 = self.box()
        return float(max(x1 - x0, y1 - y0, min_size))


@dataclass
class Pair:
    pred: int
    target: int
    distance: float  # mean normalised keypoint distance (the gated quantity)


def pair_distances(
    preds: Sequence[Instance], targets: Sequence[Instance], min_box_size: float = 1.0
) -> np.ndarray:
    """(P, T) mean over each target's valid keypoints of the distance / target box size."""
    out = np.full((len(preds), len(targets)), np.inf)
    for j, t in enumerate(targets):
        size = t.box_size(min_box_size)
        for i, p in enumerate(preds):
            if p.keypoints.shape[0] != t.keypoints.shape[0]:
                raise ValueError(
                    f"prediction has {p.keypoints.shape[0]} keypoints, target {t.keypoints.shape[0]}"
                )
            d = np.linalg.norm(p.keypoints[t.valid, :2] - t.keypoints[t.valid, :2], axis=1)
            out[i, j] = float(d.mean()) / size
    return out


def match_instances(
    preds: Sequence[Instance], targets: Sequence[Instance], config: MatchConfig | None = None
) -> list[Pair]:
    """Hungarian matching of predictions to targets (targets must have valid keypoints)."""
    config = config or MatchConfig()
    if not preds or not targets:
        return []
    dist = pair_distances(preds, targets, config.min_box_size)
    differ = np.array(
        [
            [
                p.handedness is not None and t.handedness is not None and p.handedness != t.handedness
                for t in targets
            ]
            for p in preds
        ],
        dtype=np.float64,
    )
    cost = dist + config.handedness_weight * differ
    # Pairs beyond the gate must never be chosen over a valid pair: give them one shared large cost.
    big = 1e6
    cost = np.where(dist <= config.gate, cost, big)
    rows, cols = linear_sum_assignment(cost)
    return [Pair(int(i), int(j), float(dist[i, j])) for i, j in zip(rows, cols) if dist[i, j] <= config.gate]


def wilson_interval(hits: np.ndarray, n: np.ndarray, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of the proportions hits / n (arrays); NaN where n == 0.

    Unlike the normal approximation it stays inside [0, 1] and is honest for small n and for
    proportions of 0 or 1, which is what per-keypoint figures on a few hands look like.
    """
    hits, n = np.asarray(hits, np.float64), np.asarray(n, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = hits / n
        denom = 1 + z**2 / n
        centre = (p + z**2 / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return centre - half, centre + half


def keypoint_summary(errors: np.ndarray, thresholds=(0.1, 0.2), z: float = 1.96) -> dict:
    """Per-keypoint figures of (M, K) normalised errors (NaN = keypoint not valid), JSON-ready.

    Keys (each a list of K values, None where no hand has that keypoint): ``n`` (valid keypoints),
    ``mean_error`` and ``sem_error`` (mean distance / box size and its standard error), and for each
    threshold a: ``pck_{a}`` with its Wilson interval ``pck_{a}_low`` / ``pck_{a}_high`` (z = 1.96: 95%).
    """
    errors = np.asarray(errors, dtype=np.float64)
    valid = np.isfinite(errors)
    n = valid.sum(axis=0)
    filled = np.where(valid, errors, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = filled.sum(axis=0) / n
        var = (np.where(valid, errors - mean, 0.0) ** 2).sum(axis=0) / np.maximum(n - 1, 1)
        sem = np.sqrt(var / n)

    def listed(a) -> list:
        return [float(v) if c > 0 and np.isfinite(v) else None for v, c in zip(a, n)]

    out = {
        "n": [int(v) for v in n],
        "mean_error": listed(mean),
        "sem_error": listed(np.where(n > 1, sem, np.nan)),
    }
    for a in thresholds:
        hits = (valid & (filled <= a)).sum(axis=0)
        low, high = wilson_interval(hits, n, z)
        out[f"pck_{a:g}"] = listed(hits / np.maximum(n, 1))
        out[f"pck_{a:g}_low"], out[f"pck_{a:g}_high"] = listed(low), listed(high)
    return out


@dataclass
class ImageResult:
    """Matching outcome of one image (kept for per-image reports and debugging)."""

    key: str
    num_targets: int
    num_preds: int
    pairs: list[Pair] = field(default_factory=list)


class PoseScorer:
    """Accumulates matches over images and computes the pose metrics of the module docstring.

    >>> scorer = PoseScorer("hand")
    >>> scorer.add("img0", preds=[Instance(kp_pred, "left", 0.9)], targets=[Instance(kp_true, "left")])
    >>> scorer.result()["pck_0.2"]
    """

    def __init__(
        self, kind: str = "hand", sigmas: np.ndarray | None = None, config: MatchConfig | None = None
    ):
        default_sigmas = {"hand": HAND_OKS_SIGMAS, "body": COCO_BODY_SIGMAS}
        if sigmas is None and kind not in default_sigmas:
            raise ValueError(
                f"unknown pose kind {kind!r}; expected one of {sorted(default_sigmas)} or pass sigmas"
            )
        self.kind = kind
        self.sigmas = np.asarray(default_sigmas[kind] if sigmas is None else sigmas, dtype=np.float64)
        self.config = config or MatchConfig()
        self.images: list[ImageResult] = []
        self._errors: list[np.ndarray] = []  # per matched target: (n_valid,) px distances
        self._normed: list[np.ndarray] = []  # the same divided by the target box size
        self._per_keypoint: list[
            np.ndarray
        ] = []  # per matched target: (K,) normalised errors, NaN if not valid
        self._missed_keypoints = 0
        self._handedness = [0, 0]  # [agree, both known]
        self._gt_anns: list[dict] = []
        self._dt_anns: list[dict] = []

    def add(self, key: str, preds: Sequence[Instance], targets: Sequence[Instance]) -> ImageResult:
        """Match one image's predictions to its targets and accumulate. Returns the image's result."""
        k = len(self.sigmas)
        for inst in list(preds) + list(targets):
            if inst.keypoints.shape[0] != k:
                raise ValueError(
                    f"{key}: {self.kind} instances need {k} keypoints, got {inst.keypoints.shape[0]}"
                )
        targets = [t for t in targets if t.num_valid > 0]
        pairs = match_instances(preds, targets, self.config)
        matched = {p.target for p in pairs}
        for pair in pairs:
            p, t = preds[pair.pred], targets[pair.target]
            err = np.linalg.norm(p.keypoints[t.valid, :2] - t.keypoints[t.valid, :2], axis=1)
            self._errors.append(err)
            self._normed.append(err / t.box_size(self.config.min_box_size))
            full = np.full(len(t.valid), np.nan)
            full[t.valid] = self._normed[-1]
            self._per_keypoint.append(full)
            if p.handedness is not None and t.handedness is not None:
                self._handedness[0] += int(p.handedness == t.handedness)
                self._handedness[1] += 1
        self._missed_keypoints += sum(t.num_valid for j, t in enumerate(targets) if j not in matched)
        image_id = len(self.images) + 1
        for t in targets:
            x0, y0, x1, y1 = t.box()
            kps = np.where(t.valid[:, None], t.keypoints[:, :2], 0.0)
            flat = np.concatenate([kps, np.where(t.valid, 2.0, 0.0)[:, None]], axis=1).ravel()
            self._gt_anns.append(
                {
                    "id": len(self._gt_anns) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "iscrowd": 0,
                    "keypoints": flat.tolist(),
                    "num_keypoints": t.num_valid,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": max((x1 - x0) * (y1 - y0), 1.0),
                }
            )
        for p in preds:
            flat = np.concatenate([p.keypoints[:, :2], np.ones((k, 1))], axis=1).ravel()
            self._dt_anns.append(
                {"image_id": image_id, "category_id": 1, "keypoints": flat.tolist(), "score": float(p.score)}
            )
        result = ImageResult(str(key), len(targets), len(preds), pairs)
        self.images.append(result)
        return result

    @property
    def num_targets(self) -> int:
        return sum(r.num_targets for r in self.images)

    @property
    def num_preds(self) -> int:
        return sum(r.num_preds for r in self.images)

    @property
    def num_matched(self) -> int:
        return sum(len(r.pairs) for r in self.images)

    def keypoint_errors(self) -> np.ndarray:
        """(M, K) float64: each matched target's keypoint distances / its box size; NaN where not valid."""
        if not self._per_keypoint:
            return np.zeros((0, len(self.sigmas)))
        return np.stack(self._per_keypoint)

    def per_keypoint(self) -> dict:
        """`keypoint_summary` of the matched targets: which keypoints are hardest."""
        return keypoint_summary(self.keypoint_errors(), self.config.pck_thresholds)

    def oks_ap(self) -> dict:
        """{"oks_ap": AP@[.5:.95], "oks_ap50": AP@.5} via pycocotools; None without targets."""
        if not self._gt_anns:
            return {"oks_ap": None, "oks_ap50": None}
        if not self._dt_anns:
            return {"oks_ap": 0.0, "oks_ap50": 0.0}
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        k = len(self.sigmas)
        gt = {
            "images": [{"id": i + 1} for i in range(len(self.images))],
            "annotations": self._gt_anns,
            "categories": [
                {"id": 1, "name": self.kind, "keypoints": [str(i) for i in range(k)], "skeleton": []}
            ],
        }
        # pycocotools prints progress on stdout; keep CLI output (and --json) clean.
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = COCO()
            coco_gt.dataset = gt
            coco_gt.createIndex()
            coco_dt = coco_gt.loadRes([dict(a) for a in self._dt_anns])
            ev = COCOeval(coco_gt, coco_dt, "keypoints")
            ev.params.kpt_oks_sigmas = self.sigmas
            ev.params.imgIds = [i + 1 for i in range(len(self.images))]
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        # -1 means "no ground truth in this area range"; report that as no value.
        ap, ap50 = (float(v) if v >= 0 else None for v in ev.stats[:2])
        return {"oks_ap": ap, "oks_ap50": ap50}

    def result(self) -> dict:
        """Metrics dict; values are None where undefined (e.g. PCK with nothing matched)."""
        n_t, n_p, n_m = self.num_targets, self.num_preds, self.num_matched
        normed = np.concatenate(self._normed) if self._normed else np.zeros(0)
        errors = np.concatenate(self._errors) if self._errors else np.zeros(0)
        total_kp = normed.size + self._missed_keypoints
        out = {
            "count": n_t,
            "predicted": n_p,
            "matched": n_m,
            "detected_share": n_m / n_t if n_t else None,
            "precision": n_m / n_p if n_p else None,
        }
        for a in self.config.pck_thresholds:
            hits = int((normed <= a).sum())
            out[f"pck_{a:g}"] = hits / normed.size if normed.size else None
            out[f"pck_all_{a:g}"] = hits / total_kp if total_kp else None
        out["mean_error_px"] = float(errors.mean()) if errors.size else None
        out["handedness_accuracy"] = (
            self._handedness[0] / self._handedness[1] if self._handedness[1] else None
        )
        out.update(self.oks_ap())
        return out
