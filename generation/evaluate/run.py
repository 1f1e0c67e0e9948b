"""`evaluate(manifest, generated | "real", out)`: pose accuracy, image quality and CLIP score in one report.

Steps:

1. **Select** the manifest's images with `generation.selection` (what `handfirst-gen generate
   --from-manifest` takes with the same split and limit): status ok, plus no_hands with
   `include_no_hands`; split "test" by default ("all" or None: every split); manifest order; the
   first `limit`, reading no row group past the one that fills it. With a generated folder, an image without ``<image_id>.png`` is *missing*: it is counted and left out of every
   metric, and the report says so. An unreadable generated file is scored as an image in which
   nothing was detected.
2. **Detect** hands and bodies in each image with prep's annotator (`prep.annotate.Annotator`, loaded
   once per worker through prep's own cache; see `detect`), one task per row group of the images table, in this process
   or on Dask (`workers > 1` or a `scheduler`). The detection thresholds and switches are the ones the
   manifest was made with (its ``_manifest.json`` config), overridable with `detection`; a manifest
   never chooses the annotator or any other code, file or address (see `_prep_config`).
3. **Match and score** with `manifests.matching` against the manifest's target hands (21 keypoints,
   handedness) and bodies (MediaPipe 33 -> COCO 17; a target body keypoint counts when its visibility
   is at least `min_body_visibility`).
4. **Image quality** (only with the weights given): FID/KID between the generated images and the
   manifest's stored real images, FID-H/KID-H on square hand crops cut at the target hands' crop boxes
   from both, CLIP score of the generated images against the manifest captions. A metric that is not
   computed is null, with the reason in ``reasons``.
5. Write ``report.json``, ``report.md`` and ``per_image.jsonl`` to `out`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass

import numpy as np

from manifests.matching import Instance, MatchConfig, PoseScorer, mediapipe33_to_coco17
from manifests.names import UnsafeNameError
from manifests.settings import SettingError, Settings, setting

from ..selection import DEFAULT_SPLIT, SelectionError, iter_selected, nothing_selected
from .detect import REAL, ImageDetections, detect_unit, find_generated, load_generated, load_real
from .report import markdown_table

logger = logging.getLogger(__name__)

# A generated image whose aspect ratio differs from its target frame's by more than this is noted.
ASPECT_TOLERANCE = 0.02


@dataclass
class EvalConfig(Settings):
    """Every setting of an evaluation run (recorded in the report's ``settings``)."""

    label: str | None = setting(
        None, "row name in the tables (default: 'real' or the generated folder's name)"
    )
    split: str | None = setting(
        DEFAULT_SPLIT,
        "split to evaluate: auto = test, or every row when the manifest has no splits; all = every split "
        "(as generate --from-manifest)",
    )
    # no_hands rows have a body target but no hand target, so they are evaluated only on request.
    include_no_hands: bool = setting(
        False, "also evaluate rows with status no_hands (default: status ok only)"
    )
    limit: int | None = setting(
        None,
        "evaluate the first N selected images in manifest order (the N generate --limit N takes)",
        ge=1,
    )
    # Detection
    detection: dict = setting(
        default_factory=dict,
        help="prep detection setting overrides (thresholds, wrist_refine, ...); the CLI's --detect KEY=VALUE",
        cli=False,
    )
    workers: int = setting(1, "detector processes; >1 starts a Dask LocalCluster", ge=1, le=4096)
    scheduler: str | None = setting(None, "address of an existing Dask scheduler (tcp://host:8786)")
    # Matching
    match: MatchConfig = setting(default_factory=MatchConfig, help="keypoint matching settings", cli=False)
    min_body_visibility: float = setting(
        0.5, "target body keypoints below this visibility are not scored", ge=0, le=1
    )
    # Image quality
    inception: str | None = setting(None, "local FID InceptionV3 weights (.pth); without it FID/KID are null")
    clip: str | None = setting(
        None, "local CLIP model folder (CLIPModel.from_pretrained); without it CLIP score is null"
    )
    batch_size: int = setting(16, "images per Inception/CLIP batch", ge=1, le=4096)
    hand_crop_size: int = setting(
        299, "hand crops are resampled to this side before the Inception resize", ge=8, le=4096
    )
    kid_subsets: int = setting(100, "KID: random subsets averaged", ge=1, le=100_000)
    kid_subset_size: int = setting(1000, "KID: images per subset (capped by the image count)", ge=2)
    device: str = setting("cpu", "torch device for Inception and CLIP")
    seed: int = setting(0, "seed of KID's random subsets", ge=0, le=2**32 - 1)
    progress: bool = setting(True, "progress bars")

    def validate(self) -> EvalConfig:
        super().validate()
        if not isinstance(self.detection, dict):
            raise SettingError(
                f"detection must be a dict of prep settings, got {type(self.detection).__name__}"
            )
        if not (math.isfinite(self.match.gate) and self.match.gate > 0):
            raise SettingError(f"gate (--gate) must be a finite number > 0, got {self.match.gate}")
        return self


# ----------------------------------------------------------------------------------------------------
# Targets


def hand_targets(
    manifest, image_ids: set[str]
) -> tuple[dict[str, list[Instance]], dict[str, list[list[float]]]]:
    """({image_id: target hand instances}, {image_id: crop boxes}) from the hands rows of `image_ids`.

    Only those rows are materialised (an ``isin`` filter on image_id), not the whole hands table.
    """
    import pyarrow.compute as pc

    hands: dict[str, list[Instance]] = {i: [] for i in image_ids}
    boxes: dict[str, list[list[float]]] = {i: [] for i in image_ids}
    if not hands:
        return hands, boxes
    cols = ["hand_id", "image_id", "keypoints", "handedness", "crop_box"]
    selected = pc.field("image_id").isin(sorted(hands))
    for row in manifest.read("hands", columns=cols, filter=selected).to_pylist():
        if row["keypoints"] is None:
            continue
        kps = np.asarray(row["keypoints"], dtype=np.float64)
        if kps.shape != (21, 3):
            raise ValueError(
                f"{manifest.url}: hand {row['hand_id']}: keypoints shape {kps.shape}, expected (21, 3)"
            )
        hands[row["image_id"]].append(Instance(kps, row["handedness"]))
        if row["crop_box"] is not None:
            boxes[row["image_id"]].append(list(row["crop_box"]))
    return hands, boxes


def body_target(keypoints, min_visibility: float) -> list[Instance]:
    if keypoints is None:
        return []
    coco = mediapipe33_to_coco17(np.asarray(keypoints, dtype=np.float64))
    return [Instance(coco, valid=coco[:, 2] >= min_visibility)]


def hand_predictions(det: ImageDetections) -> list[Instance]:
    return [Instance(h.keypoints, h.handedness, h.score) for h in det.hands]


def body_predictions(det: ImageDetections) -> list[Instance]:
    if det.body is None:
        return []
    coco = mediapipe33_to_coco17(det.body)
    # Every predicted keypoint is a position (MediaPipe always places all 33); validity is the target's.
    return [Instance(coco, score=det.body_score or 1.0, valid=np.ones(17, bool))]


# ----------------------------------------------------------------------------------------------------
# Detection


def _plain(value) -> bool:
    return value is None or isinstance(value, (bool, int, float))


def _prep_config(manifest, config: EvalConfig):
    """The PrepConfig of the detector: the manifest's recorded settings, then the user's `detection`.

    A manifest may come from anyone, so only its plain values (numbers, booleans, nulls: thresholds,
    sizes and switches) are taken. A recorded string (the annotator's "module:Class", a SAM checkpoint,
    a path, a scheduler address) is never used: the annotator is prep's registry default unless the
    user names one on the command line (``--detect annotator=...``).
    """
    from prep.config import PrepConfig

    names = {f.name for f in dataclasses.fields(PrepConfig)}
    recorded = {k: v for k, v in manifest.config.items() if k in names and _plain(v)}
    ignored = sorted(k for k, v in manifest.config.items() if k in names and not _plain(v))
    if ignored:
        logger.debug("detection ignores the manifest's recorded %s (a manifest never chooses code or files)",
                     ignored)  # fmt: skip
    unknown = sorted(set(config.detection) - names)
    if unknown:
        raise ValueError(f"unknown detection settings {unknown}; expected PrepConfig fields")
    settings = {**recorded, **config.detection, "workers": max(1, config.workers), "scheduler": config.scheduler,
                "progress": False, "device": config.device}  # fmt: skip
    return PrepConfig(**settings)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc=desc, disable=not enabled, smoothing=0.1)


def run_detection(manifest, plan, generated: str, prep_config, config: EvalConfig) -> list[ImageDetections]:
    """Detect in every planned image; `plan` is [(unit, [image_id, ...]), ...]. Dask when asked for."""
    total = sum(len(ids) for _, ids in plan)
    results: list[ImageDetections] = []
    with _progress(total, "detect", config.progress) as bar:
        if config.workers <= 1 and not config.scheduler:
            for unit, ids in plan:
                part = detect_unit(manifest.images, unit, ids, generated, prep_config)
                results += part
                bar.update(len(part))
            return results
        from distributed import as_completed

        from prep.runner import dask_client

        with dask_client(prep_config) as client:
            logger.info("Dask scheduler %s, dashboard %s", client.scheduler.address, client.dashboard_link)
            # The opened table (shard list, row groups) goes to every worker once, not with every task.
            [table] = client.scatter([manifest.images], broadcast=True, hash=False)
            futures = [client.submit(detect_unit, table, unit, ids, generated, prep_config, pure=False,
                                     retries=prep_config.retries) for unit, ids in plan]  # fmt: skip
            for fut in as_completed(futures):
                part = fut.result()
                results += part
                bar.update(len(part))
    return results


# ----------------------------------------------------------------------------------------------------
# Image quality


def _crop(image: np.ndarray, box, frame: tuple[int, int], size: int) -> np.ndarray:
    """Cut `box` ([x0, y0, x1, y1] in target-frame pixels) out of `image` (any size showing the frame)."""
    from PIL import Image

    h, w = image.shape[:2]
    sx, sy = w / frame[0], h / frame[1]
    x0, y0, x1, y1 = box
    return np.asarray(Image.fromarray(image).transform((size, size), Image.EXTENT, (x0 * sx, y0 * sy, x1 * sx, y1 * sy),
                                                       resample=Image.BILINEAR, fillcolor=0))  # fmt: skip


class QualityPass:
    """FID/KID on images and hand crops, and the CLIP score, accumulated batch by batch."""

    def __init__(self, config: EvalConfig, reasons: dict):
        from .quality import DistributionDistance, KIDSettings, load_inception

        self.config = config
        self.reasons = reasons
        self.full = self.hands = self.clip = None
        kid = KIDSettings(subsets=config.kid_subsets, subset_size=config.kid_subset_size)
        if config.inception:
            net = load_inception(config.inception, config.device)
            self.full = DistributionDistance(net, net.num_features, kid=kid, device=config.device)
            self.hands = DistributionDistance(net, net.num_features, kid=kid, device=config.device)
        else:
            why = "no Inception weights given (--inception PATH to a local FID InceptionV3 .pth)"
            for key in ("fid", "kid", "fid_hands", "kid_hands"):
                reasons[key] = why
        if config.clip:
            from .clip_score import ClipScorer

            self.clip = ClipScorer(config.clip, config.device)
        else:
            reasons["clip_score"] = "no CLIP checkpoint given (--clip PATH to a local CLIP model folder)"
        self.clip_scores: list[float] = []
        self.no_caption = 0
        self._batch: list[tuple] = []

    @property
    def active(self) -> bool:
        return self.full is not None or self.clip is not None

    def add(self, real: np.ndarray, fake: np.ndarray, frame: tuple[int, int], boxes, caption: str | None):
        self._batch.append((real, fake, frame, boxes, caption))
        if len(self._batch) >= self.config.batch_size:
            self.flush()

    def flush(self):
        batch, self._batch = self._batch, []
        if not batch:
            return
        if self.full is not None:
            # generated = real passes the same arrays on both sides: extract their features once.
            same = all(b[0] is b[1] for b in batch)
            self._both(self.full, [b[0] for b in batch], [b[1] for b in batch], same)
            size = self.config.hand_crop_size
            real_crops = [_crop(b[0], box, b[2], size) for b in batch for box in b[3]]
            fake_crops = real_crops if same else [_crop(b[1], box, b[2], size) for b in batch for box in b[3]]
            step = self.config.batch_size
            for i in range(0, len(real_crops), step):
                self._both(self.hands, real_crops[i : i + step], fake_crops[i : i + step], same)
        if self.clip is not None:
            with_text = [(b[1], b[4]) for b in batch if b[4]]
            self.no_caption += len(batch) - len(with_text)
            if with_text:
                self.clip_scores += self.clip.scores(
                    [t[0] for t in with_text], [t[1] for t in with_text]
                ).tolist()

    @staticmethod
    def _both(dd, real: list[np.ndarray], fake: list[np.ndarray], same: bool) -> None:
        feats = dd.features(real)
        dd.update_features(feats, real=True)
        dd.update_features(feats if same else dd.features(fake), real=False)

    def results(self) -> dict:
        self.flush()
        out = {"fid": None, "kid": None, "kid_std": None, "fid_hands": None, "kid_hands": None, "kid_hands_std": None,
               "clip_score": None}  # fmt: skip
        for name, dd, suffix in (("images", self.full, ""), ("hand crops", self.hands, "_hands")):
            if dd is None:
                continue
            try:
                r = dd.compute(seed=self.config.seed)
            except ValueError as exc:
                self.reasons[f"fid{suffix}"] = self.reasons[f"kid{suffix}"] = f"{name}: {exc}"
                continue
            out[f"fid{suffix}"], out[f"kid{suffix}"], out[f"kid{suffix}_std"] = (
                r["fid"],
                r["kid"],
                r["kid_std"],
            )
        if self.clip is not None:
            if self.clip_scores:
                out["clip_score"] = float(np.mean(self.clip_scores))
            else:
                self.reasons["clip_score"] = "no evaluated image has a caption"
        return out


# ----------------------------------------------------------------------------------------------------
# The run


def _statuses(config: EvalConfig) -> tuple[str, ...]:
    return ("ok", "no_hands") if config.include_no_hands else ("ok",)


def _plan(manifest, config: EvalConfig, generated: str):
    """([(unit, ids)], {image_id: light row}, [missing ids]) in manifest order (`generation.selection`)."""
    cols = ["image_id", "status", "split", "width", "height", "caption", "body_keypoints"]
    plan, rows, missing = [], {}, []
    for unit, selected in iter_selected(manifest, cols, config.split, _statuses(config), config.limit):
        ids = []
        for row in selected:
            if row["width"] is None or row["height"] is None:
                raise ValueError(
                    f"{manifest.url}: image {row['image_id']} has status {row['status']} but no width/height"
                )
            if generated != REAL:
                try:
                    found = find_generated(generated, row["image_id"])
                except UnsafeNameError as exc:  # it could name a file outside the generated folder
                    raise UnsafeNameError(f"{manifest.url}: {exc}") from None
                if found is None:
                    missing.append(row["image_id"])
                    continue
            rows[row["image_id"]] = row
            ids.append(row["image_id"])
        if ids:
            plan.append((unit, ids))
    return plan, rows, missing


def _quality_pass(manifest, plan, rows, boxes, generated: str, quality: QualityPass, config: EvalConfig):
    total = sum(len(ids) for _, ids in plan)
    with _progress(total, "quality", config.progress) as bar:
        for unit, ids in plan:
            wanted = set(ids)
            table = manifest.images.read_unit(unit, ["image_id", "image", "image_width", "image_height"])
            for row in table.to_pylist():
                if row["image_id"] not in wanted:
                    continue
                info = rows[row["image_id"]]
                real = load_real(row)
                if generated == REAL:
                    fake = real
                else:
                    try:
                        fake = load_generated(find_generated(generated, row["image_id"]))
                    except Exception as exc:  # noqa: BLE001 - already counted as unreadable by detection
                        logger.warning("quality pass skips %s: %s", row["image_id"], exc)
                        bar.update(1)
                        continue
                quality.add(
                    real,
                    fake,
                    (info["width"], info["height"]),
                    boxes.get(row["image_id"], []),
                    info["caption"],
                )
                bar.update(1)


def evaluate(manifest: str, generated: str, out: str, config: EvalConfig | None = None, **kwargs) -> dict:
    """Evaluate `generated` (a folder of ``<image_id>.png`` or "real") against `manifest`; write to `out`.

    Keyword arguments override `config`'s fields. Returns the report dict (also in ``out/report.json``).
    """
    from manifests.reader import open_manifest

    config = dataclasses.replace(config or EvalConfig(), **kwargs).validate()
    generated = str(generated)
    if generated != REAL and not os.path.isdir(generated):
        raise FileNotFoundError(f"generated images folder {generated} does not exist (or pass 'real')")
    t_start = time.perf_counter()
    m = open_manifest(manifest)
    prep_config = _prep_config(m, config)
    reasons: dict[str, str] = {}  # metric -> why it is null
    notes: list[str] = []
    quality = QualityPass(config, reasons)  # loads the weights first: a bad path fails before the long pass

    plan, rows, missing = _plan(m, config, generated)
    if not rows:
        raise SelectionError(f"nothing to evaluate: {len(missing)} selected images of {manifest} have no generated "
                             f"image in {generated}" if missing else
                             f"nothing to evaluate: {nothing_selected(m, config.split, _statuses(config))}")  # fmt: skip
    if missing:
        logger.warning("%d of %d selected images have no generated image in %s; they are not scored",
                       len(missing), len(missing) + len(rows), generated)  # fmt: skip
    targets, boxes = hand_targets(m, set(rows))

    t0 = time.perf_counter()
    detections = run_detection(m, plan, generated, prep_config, config)
    detect_s = time.perf_counter() - t0

    hands = PoseScorer("hand", config=config.match)
    body = PoseScorer("body", config=config.match)
    per_image, unreadable, stretched = [], [], []
    for det in sorted(detections, key=lambda d: d.image_id):
        row = rows[det.image_id]
        if det.error:
            unreadable.append(det.image_id)
        elif abs(det.size[0] / det.size[1] * row["height"] / row["width"] - 1.0) > ASPECT_TOLERANCE:
            stretched.append(det.image_id)
        h = hands.add(det.image_id, hand_predictions(det), targets[det.image_id])
        b = body.add(
            det.image_id,
            body_predictions(det),
            body_target(row["body_keypoints"], config.min_body_visibility),
        )
        per_image.append({"image_id": det.image_id, "target_hands": h.num_targets, "detected_hands": h.num_preds,
                          "matched_hands": len(h.pairs), "target_body": b.num_targets, "detected_body": b.num_preds,
                          "matched_body": len(b.pairs), "error": det.error})  # fmt: skip

    t1 = time.perf_counter()
    metrics = {"fid": None, "kid": None, "kid_std": None, "fid_hands": None, "kid_hands": None,
               "kid_hands_std": None, "clip_score": None}  # fmt: skip
    if quality.active:
        _quality_pass(m, plan, rows, boxes, generated, quality, config)
        metrics = quality.results()
        if generated == REAL and quality.full is not None:
            notes.append(
                "generated = real: FID/KID compare the real images with themselves (0 by construction)"
            )
    quality_s = time.perf_counter() - t1
    if stretched:
        notes.append(f"{len(stretched)} generated images differ from their target frame's aspect ratio by more than "
                     f"{100 * ASPECT_TOLERANCE:.0f}%; their keypoints were rescaled per axis (e.g. {stretched[:3]})")  # fmt: skip
    if quality.no_caption:
        notes.append(f"{quality.no_caption} images without a caption were left out of the CLIP score")

    label = config.label or (REAL if generated == REAL else os.path.basename(os.path.normpath(generated)))
    report = {
        "label": label,
        "hands": hands.result(),
        "body": body.result(),
        **metrics,
        "reasons": reasons,
        "notes": notes,
        "images": {"evaluated": len(rows), "missing": len(missing), "unreadable": len(unreadable)},
        "settings": {
            "manifest": str(manifest),
            "generated": generated,
            **{k: v for k, v in config.to_dict().items() if k not in ("match", "progress", "label")},
            **{k: v for k, v in config.match.to_dict().items()},
            "detection_settings": {
                k: v
                for k, v in prep_config.to_dict().items()
                if k
                in (
                    "min_detection_confidence",
                    "min_hand_score",
                    "max_hands",
                    "wrist_refine",
                    "hand_model_complexity",
                    "min_pose_confidence",
                    "body_pose",
                )
            },
            "body_layout": "COCO-17 from MediaPipe Pose 33",
            "hand_sigmas": "COCO-WholeBody hand",
            "detector": "prep.annotate.Annotator: MediaPipe Pose, then MediaPipe Hands + wrist pass",
        },  # fmt: skip
        "timing": {
            "detect_s": round(detect_s, 3),
            "images_per_s": round(len(rows) / detect_s, 3) if detect_s > 0 else None,
            "quality_s": round(quality_s, 3),
            "total_s": round(time.perf_counter() - t_start, 3),
            "detector_workers": sorted({d.worker_pid for d in detections if d.worker_pid}),
        },
        "missing_images": missing[:100],
        "unreadable_images": unreadable[:100],
    }
    write_report(report, out, per_image)
    return report


def write_report(report: dict, out: str, per_image: list[dict] | None = None) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, default=float)
    with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
        f.write(markdown_table([report], title=f"Evaluation: {report['label']}"))
    if per_image is not None:
        with open(os.path.join(out, "per_image.jsonl"), "w", encoding="utf-8") as f:
            for row in per_image:
                f.write(json.dumps(row) + "\n")
