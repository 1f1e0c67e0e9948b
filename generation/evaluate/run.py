"""`evaluate(manifest, generated | "real", out)`: pose accuracy, image quality and CLIP score in one report.

Steps:

1. **Select** the manifest's images with `generation.selection` (what `handfirst-gen generate
   --from-manifest` takes with the same split and limit): status ok, plus no_hands with
   `include_no_hands`; split "test" by default ("all" or None: every split); manifest order; the
   first `limit`, reading no row group past the one that fills it. With a generated folder, an image without ``<image_id>.png`` is *missing*: it is counted and left out of every
   metric, and the report says so. An unreadable generated file is scored as an image in which
   nothing was detected.
2. **Detect** hands and bodies in each image with the chosen detector (`detect.DETECTORS`; by default
   prep's annotator `prep.annotate.Annotator`, loaded once per worker through prep's own cache), one
   task per row group of the images table, in this process or on Dask (`workers > 1` or a
   `scheduler`). The detection thresholds and switches are the ones the manifest was made with (its
   ``_manifest.json`` config), overridable with `detection`; a manifest never chooses the detector or
   any other code, file or address (see `detection_prep_config`). When the detector is the annotator the
   manifest records, the report notes the evaluator bias.
3. **Score** with the metric registry (`generation.evaluate.metrics`, one file per metric): the
   ``detections`` metrics get each image's detections and targets (pose accuracy against the
   manifest's hands and bodies, hand confidence, wrist gap); then, when some ``pixels`` metric has its
   weights, one pass over the real and generated pixels feeds them (FID/KID, FID-H/KID-H on hand
   crops, CLIP score). A metric that is not computed is null, with the reason in ``reasons``.
4. Write ``report.json``, ``report.md`` and ``per_image.jsonl`` to `out`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass

from manifests.matching import MatchConfig
from manifests.settings import SettingError, Settings, setting

from ..selection import DEFAULT_SPLIT, SelectionError, nothing_selected
from .detect import DEFAULT_DETECTOR, REAL, detector_names
from .detection import choose_detector, detection_prep_config, evaluator_bias, run_detection
from .report import write_report, write_report_picture
from .rows import hand_targets, plan_rows, statuses
from .scoring import aspect_note, metric_results, pixel_pass, score_detections, start_metrics

logger = logging.getLogger(__name__)

# The detection settings a report records.
DETECTION_SETTINGS = (
    "min_detection_confidence",
    "min_hand_score",
    "max_hands",
    "wrist_refine",
    "hand_model_complexity",
    "min_pose_confidence",
    "body_pose",
)


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
    detector: str = setting(
        DEFAULT_DETECTOR,
        "detector that scores the images (generation.evaluate.detect.DETECTORS; default: prep's MediaPipe "
        "annotator)",
        choices=detector_names,
    )
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
    prep_config = detection_prep_config(m, config)
    detector = choose_detector(config)
    reasons: dict[str, str] = {}  # metric column -> why it is null
    ctx, runs = start_metrics(config, generated, reasons, detector, prep_config)
    notes = ctx.notes
    bias = evaluator_bias(m, detector)
    if bias:
        notes.append(bias)

    plan, rows, missing = plan_rows(m, config, generated)
    if not rows:
        raise SelectionError(
            f"nothing to evaluate: {len(missing)} selected images of {manifest} have no generated "
            f"image in {generated}"
            if missing
            else f"nothing to evaluate: {nothing_selected(m, config.split, statuses(config))}"
        )
    if missing:
        logger.warning(
            "%d of %d selected images have no generated image in %s; they are not scored",
            len(missing),
            len(missing) + len(rows),
            generated,
        )
    targets, boxes = hand_targets(m, set(rows))

    t0 = time.perf_counter()
    detections = run_detection(m, plan, generated, prep_config, config, detector)
    detect_s = time.perf_counter() - t0

    on_detections = [(mt, acc) for mt, acc in runs if acc is not None and mt.source == "detections"]
    on_pixels = [(mt, acc) for mt, acc in runs if acc is not None and mt.source == "pixels"]
    per_image, unreadable, stretched, errors = score_detections(
        detections, rows, targets, on_detections, config
    )
    if stretched:
        notes.append(aspect_note(stretched))

    t1 = time.perf_counter()
    if on_pixels:
        pixel_fields = pixel_pass(m, plan, rows, boxes, targets, generated, on_pixels, config)
        for record in per_image:
            record.update(pixel_fields.get(record["image_id"], {}))
    results = metric_results(runs, reasons)
    quality_s = time.perf_counter() - t1

    label = config.label or (REAL if generated == REAL else os.path.basename(os.path.normpath(generated)))
    report = {
        "label": label,
        **results,
        "reasons": reasons,
        "notes": notes,
        "images": {"evaluated": len(rows), "missing": len(missing), "unreadable": len(unreadable)},
        "settings": {
            "manifest": str(manifest),
            "generated": generated,
            **run_settings(config, prep_config, detector, bias is not None, runs),
        },
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
    write_report_picture(m, generated, out, errors, rows, targets, detections, label)
    return report


def run_settings(config: EvalConfig, prep_config, detector, bias: bool, runs: list) -> dict:
    """The report's settings after the manifest and folder: the run's, the matching's, the detection's
    thresholds and switches, the detector and the metrics computed."""
    return {
        **{k: v for k, v in config.to_dict().items() if k not in ("match", "progress", "label")},
        **{k: v for k, v in config.match.to_dict().items()},
        "detection_settings": {k: v for k, v in prep_config.to_dict().items() if k in DETECTION_SETTINGS},
        "body_layout": "COCO-17 from MediaPipe Pose 33",
        "hand_sigmas": "COCO-WholeBody hand",
        "detector": detector.name,
        "detector_description": detector.description,
        "evaluator_bias": bias,
        "metrics": [mt.name for mt, acc in runs if acc is not None],
    }
