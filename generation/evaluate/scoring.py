"""Scoring for an evaluation: the metric registry's accumulators started (weights loaded once, before
any image is read), each image's detections scored against its targets, the pass over the real and
generated pixels, and each metric's report entries."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from manifests.decode import hands_mask_array

from .detect import REAL, find_generated, load_generated, load_real
from .detection import image_progress
from .framing import FrameMap, frame_map, visible_targets
from .metrics import ordered
from .metrics.pose import hand_predictions
from .pictures import hand_error
from .registry import WEIGHTS, Context, MetricUnavailable, PixelSample, PoseSample, merge

if TYPE_CHECKING:
    from .run import EvalConfig

logger = logging.getLogger(__name__)

# A generated image whose aspect ratio differs from its target frame's by more than this is noted.
ASPECT_TOLERANCE = 0.02


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


def pixel_pass(manifest, plan, rows, boxes, targets, generated: str, metrics: list, config: EvalConfig):
    """Feed each evaluated image's real and generated pixels to the ``pixels`` metrics; returns
    {image_id: the per-image fields they gave}."""
    fields: dict[str, dict] = {}
    total = sum(len(ids) for _, ids in plan)
    with image_progress(total, "quality", config.progress) as bar:
        for unit, ids in plan:
            wanted = set(ids)
            columns = ["image_id", "image", "image_width", "image_height", "width", "height", "hands_mask"]
            table = manifest.images.read_unit(unit, columns)
            for row in table.to_pylist():
                if row["image_id"] not in wanted:
                    continue
                info = rows[row["image_id"]]
                real = load_real(row)
                frame = (info["width"], info["height"])
                hands, hand_boxes = targets.get(row["image_id"], []), boxes.get(row["image_id"], [])
                if generated == REAL:
                    fake, fmap = real, FrameMap.whole(frame, real.shape[1::-1])
                else:
                    try:
                        fake = load_generated(find_generated(generated, row["image_id"]))
                        fmap = frame_map(generated, row["image_id"], frame, fake.shape[1::-1])
                    except Exception as exc:  # noqa: BLE001 - already counted as unreadable by detection
                        logger.warning("quality pass skips %s: %s", row["image_id"], exc)
                        bar.update(1)
                        continue
                    hands, hand_boxes, _ = visible_targets(fmap, hands, hand_boxes, None)
                sample = PixelSample(
                    row["image_id"],
                    real,
                    fake,
                    frame,
                    hand_boxes,
                    info["caption"],
                    hands,
                    hands_mask_array(row) if row.get("hands_mask") is not None else None,
                    fmap,
                )
                for _, acc in metrics:
                    fields.setdefault(row["image_id"], {}).update(acc.update(sample) or {})
                bar.update(1)
    return fields


def score_detections(detections, rows: dict, targets: dict, metrics: list, config: EvalConfig):
    """Feed each image's detections and targets to the ``detections`` metrics, in image_id order:
    (per-image records, unreadable image ids, ids whose aspect ratio differs from their target frame's
    by more than `ASPECT_TOLERANCE`, {image_id: hand error} of the readable images)."""
    per_image, unreadable, stretched, errors = [], [], [], {}
    for det in sorted(detections, key=lambda d: d.image_id):
        row = rows[det.image_id]
        hands, body = targets[det.image_id], row["body_keypoints"]
        if det.error:
            unreadable.append(det.image_id)
        elif det.frame_map is not None and det.frame_map.windowed:
            hands, _, body = visible_targets(det.frame_map, hands, [], body)
        elif abs(det.size[0] / det.size[1] * row["height"] / row["width"] - 1.0) > ASPECT_TOLERANCE:
            stretched.append(det.image_id)
        sample = PoseSample(det.image_id, det, hands, body)
        record = {"image_id": det.image_id}
        for _, acc in metrics:
            record.update(acc.update(sample) or {})
        if not det.error:
            errors[det.image_id] = hand_error(hand_predictions(det), hands, config.match)
        per_image.append({**record, "hand_error": errors.get(det.image_id), "error": det.error})
    return per_image, unreadable, stretched, errors


def aspect_note(stretched: list[str]) -> str:
    """The report note for generated images stretched away from their target frame's aspect ratio."""
    return (
        f"{len(stretched)} generated images differ from their target frame's aspect ratio by more than "
        f"{100 * ASPECT_TOLERANCE:.0f}%; their keypoints were rescaled per axis (e.g. {stretched[:3]})"
    )
