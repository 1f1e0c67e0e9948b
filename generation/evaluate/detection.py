"""Detection for an evaluation: the detector the user chose, the prep settings it runs with (the
manifest's recorded thresholds, never its code or files), the evaluator-bias note, and the detection
pass over the planned rows, in this process or on Dask."""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from .detect import DEFAULT_DETECTOR, AnnotatorDetector, ImageDetections, detect_unit, detectors

if TYPE_CHECKING:
    from .run import EvalConfig

logger = logging.getLogger(__name__)


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


def image_progress(total: int, desc: str, enabled: bool):
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
    with image_progress(total, "detect", config.progress) as bar:
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
