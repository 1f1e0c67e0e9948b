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
import json
import logging
import math
import os
import time
from dataclasses import dataclass

import numpy as np

from manifests.decode import hands_mask_array
from manifests.matching import Instance, MatchConfig
from manifests.names import UnsafeNameError
from manifests.settings import SettingError, Settings, setting

from ..selection import DEFAULT_SPLIT, SelectionError, iter_selected, nothing_selected
from .detect import (
    DEFAULT_DETECTOR,
    REAL,
    AnnotatorDetector,
    ImageDetections,
    detect_unit,
    detector_names,
    detectors,
    find_generated,
    load_generated,
    load_real,
)
from .metrics import ordered
from .metrics.pose import hand_predictions
from .pictures import hand_error
from .registry import WEIGHTS, Context, MetricUnavailable, PixelSample, PoseSample, merge
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


# ----------------------------------------------------------------------------------------------------
# Detection


def _plain(value) -> bool:
    return value is None or isinstance(value, (bool, int, float))


def detection_prep_config(manifest, config: EvalConfig):
    """The PrepConfig of the detector: the manifest's recorded settings, then the user's `detection`.

    A manifest may come from anyone, so only its plain values (numbers, booleans, nulls: thresholds,
    sizes and switches) are taken. A recorded string (the annotator's "module:Class", a SAM checkpoint,
    a path, a scheduler address) is never used: the annotator is prep's registry default unless the
    user names one on the command line (``--detect annotator=...``).
    """
    from prep import PrepConfig

    names = {f.name for f in dataclasses.fields(PrepConfig)}
    recorded = {k: v for k, v in manifest.config.items() if k in names and _plain(v)}
    ignored = sorted(k for k, v in manifest.config.items() if k in names and not _plain(v))
    if ignored:
        logger.debug(
            "detection ignores the manifest's recorded %s (a manifest never chooses code or files)", ignored
        )
    unknown = sorted(set(config.detection) - names)
    if unknown:
        raise ValueError(f"unknown detection settings {unknown}; expected PrepConfig fields")
    settings = {
        **recorded,
        **config.detection,
        "workers": max(1, config.workers),
        "scheduler": config.scheduler,
        "progress": False,
        "device": config.device,
    }
    return PrepConfig(**settings)


def _progress(total: int, desc: str, enabled: bool):
    from manifests.progress import progress_bar

    return progress_bar(total=total, unit="img", desc=desc, enabled=enabled, smoothing=0.1)


def choose_detector(config: EvalConfig):
    """The detector entry: ``--detector NAME``, or the prep annotator ``--detect annotator=...`` names.

    Both come from the user, never from a manifest. Naming two different detectors is an error.
    """
    named = config.detection.get("annotator")
    if named is None or named == config.detector:
        return detectors()[config.detector]
    if config.detector != DEFAULT_DETECTOR:
        raise ValueError(
            f"two detectors named: --detector {config.detector} and --detect annotator={named}; give one"
        )
    return detectors().get(named) or AnnotatorDetector(str(named), f"prep annotator {named}")


def evaluator_bias(manifest, detector) -> str | None:
    """The note for a report whose detector is the annotator that made the manifest's targets, or None.

    The manifest's recorded ``annotator`` and ``keypoint_source`` are compared as strings, after
    mapping registry names to their ``module:Class`` (`prep.ANNOTATORS`); nothing they name
    is imported.
    """
    from prep import ANNOTATORS

    ours = getattr(detector, "annotator", None)
    theirs = manifest.config.get("annotator")
    if ours is None or not isinstance(theirs, str):
        return None
    if ANNOTATORS.get(ours, ours) != ANNOTATORS.get(theirs, theirs):
        return None
    made = "target poses"
    if manifest.config.get("keypoint_source") == "annotation":
        made = "target bodies (its hands come from the dataset's keypoints where it had them)"
    return (
        f"evaluator bias: the scoring detector ({detector.name}) is the annotator that made this manifest's "
        f"{made}, so the pose columns favour what it finds easy; score with another --detector for an "
        "independent view"
    )


def run_detection(
    manifest, plan, generated: str, prep_config, config: EvalConfig, detector=None
) -> list[ImageDetections]:
    """Detect in every planned image; `plan` is [(unit, [image_id, ...]), ...]. Dask when asked for."""
    total = sum(len(ids) for _, ids in plan)
    results: list[ImageDetections] = []
    with _progress(total, "detect", config.progress) as bar:
        if config.workers <= 1 and not config.scheduler:
            for unit, ids in plan:
                part = detect_unit(manifest.images, unit, ids, generated, prep_config, detector)
                results += part
                bar.update(len(part))
            return results
        from distributed import as_completed

        from prep import dask_client, log_cluster

        with dask_client(prep_config) as client:
            log_cluster(client)
            # The opened table (shard list, row groups) goes to every worker once, not with every task.
            [table] = client.scatter([manifest.images], broadcast=True, hash=False)
            futures = [
                client.submit(
                    detect_unit,
                    table,
                    unit,
                    ids,
                    generated,
                    prep_config,
                    detector,
                    pure=False,
                    retries=prep_config.retries,
                )
                for unit, ids in plan
            ]
            for fut in as_completed(futures):
                part = fut.result()
                results += part
                bar.update(len(part))
    return results


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


# ----------------------------------------------------------------------------------------------------
# Metrics


def start_metrics(
    config: EvalConfig, generated: str, reasons: dict, detector=None, prep_config=None
) -> tuple[Context, list]:
    """(context, [(metric, accumulator)] in table order); the accumulator is None for a metric whose
    weights were not given, and its reasons are set here.

    Each weights file that a metric needs is loaded once, before any image is read, so that a bad path
    fails before the long passes.
    """
    metrics = ordered()
    ctx = Context(config, generated, detector=detector, prep_config=prep_config)
    for key in dict.fromkeys(m.weights for m in metrics if m.weights):
        path = getattr(config, key)
        if path:
            ctx.models[key] = WEIGHTS[key].load(path, config.device)
    runs = []
    for m in metrics:
        if m.weights and m.weights not in ctx.models:
            reasons.update(dict.fromkeys((c.key for c in m.columns), WEIGHTS[m.weights].missing))
            runs.append((m, None))
        else:
            runs.append((m, m.make(ctx)))
    return ctx, runs


def metric_results(runs: list, reasons: dict) -> dict:
    """The report entries of every metric of `runs`; a metric without a value reports its nulls."""
    out: dict = {}
    for metric, acc in runs:
        if acc is None:
            merge(out, metric.null)
            continue
        try:
            merge(out, acc.result())
        except MetricUnavailable as exc:
            merge(out, metric.null)
            merge(out, exc.entries)
            reasons.update(dict.fromkeys((c.key for c in metric.columns), str(exc)))
    return out


def _pixel_pass(manifest, plan, rows, boxes, targets, generated: str, metrics: list, config: EvalConfig):
    """Feed each evaluated image's real and generated pixels to the ``pixels`` metrics; returns
    {image_id: the per-image fields they gave}."""
    fields: dict[str, dict] = {}
    total = sum(len(ids) for _, ids in plan)
    with _progress(total, "quality", config.progress) as bar:
        for unit, ids in plan:
            wanted = set(ids)
            columns = ["image_id", "image", "image_width", "image_height", "width", "height", "hands_mask"]
            table = manifest.images.read_unit(unit, columns)
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
                sample = PixelSample(
                    row["image_id"],
                    real,
                    fake,
                    (info["width"], info["height"]),
                    boxes.get(row["image_id"], []),
                    info["caption"],
                    targets.get(row["image_id"], []),
                    hands_mask_array(row) if row.get("hands_mask") is not None else None,
                )
                for _, acc in metrics:
                    fields.setdefault(row["image_id"], {}).update(acc.update(sample) or {})
                bar.update(1)
    return fields


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

    plan, rows, missing = _plan(m, config, generated)
    if not rows:
        raise SelectionError(
            f"nothing to evaluate: {len(missing)} selected images of {manifest} have no generated "
            f"image in {generated}"
            if missing
            else f"nothing to evaluate: {nothing_selected(m, config.split, _statuses(config))}"
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
    per_image, unreadable, stretched, errors = [], [], [], {}
    for det in sorted(detections, key=lambda d: d.image_id):
        row = rows[det.image_id]
        if det.error:
            unreadable.append(det.image_id)
        elif abs(det.size[0] / det.size[1] * row["height"] / row["width"] - 1.0) > ASPECT_TOLERANCE:
            stretched.append(det.image_id)
        sample = PoseSample(det.image_id, det, targets[det.image_id], row["body_keypoints"])
        record = {"image_id": det.image_id}
        for _, acc in on_detections:
            record.update(acc.update(sample) or {})
        if not det.error:
            errors[det.image_id] = hand_error(hand_predictions(det), targets[det.image_id], config.match)
        per_image.append({**record, "hand_error": errors.get(det.image_id), "error": det.error})
    if stretched:
        notes.append(
            f"{len(stretched)} generated images differ from their target frame's aspect ratio by more than "
            f"{100 * ASPECT_TOLERANCE:.0f}%; their keypoints were rescaled per axis (e.g. {stretched[:3]})"
        )

    t1 = time.perf_counter()
    if on_pixels:
        pixel_fields = _pixel_pass(m, plan, rows, boxes, targets, generated, on_pixels, config)
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
            "detector": detector.name,
            "detector_description": detector.description,
            "evaluator_bias": bias is not None,
            "metrics": [mt.name for mt, acc in runs if acc is not None],
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


def write_report_picture(
    manifest, generated: str, out: str, errors, rows, targets, detections, label
) -> None:
    """``out/report.png`` (`pictures.report_picture`); a failure to draw is logged, never raised."""
    import pyarrow.compute as pc

    from .pictures import report_picture, worst_and_best

    def load_image(image_id: str):
        if generated != REAL:
            return load_generated(find_generated(generated, image_id))
        [row] = manifest.read("images", filter=pc.field("image_id") == image_id).to_pylist()
        return load_real(row)

    shown = set(sum(worst_and_best(errors), []))
    frames = {i: (rows[i]["width"], rows[i]["height"]) for i in shown}
    try:
        report_picture(out, errors, load_image, frames, targets, {d.image_id: d for d in detections}, label)
    except Exception as exc:  # noqa: BLE001 - the numbers are written; a picture must not undo that
        logger.warning("could not draw %s/report.png: %s", out, exc)


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
