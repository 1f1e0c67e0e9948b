"""The rows an evaluation scores: the manifest's selected images in manifest order (`generation.selection`),
those without a generated image set aside as missing, and the target hands of the rows kept."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from manifests.matching import Instance
from manifests.names import UnsafeNameError

from ..selection import iter_selected
from .detect import REAL, find_generated

if TYPE_CHECKING:
    from .run import EvalConfig


def statuses(config: EvalConfig) -> tuple[str, ...]:
    """The row statuses evaluated: ok, plus no_hands with `include_no_hands`."""
    return ("ok", "no_hands") if config.include_no_hands else ("ok",)


def plan_rows(manifest, config: EvalConfig, generated: str):
    """([(unit, ids)], {image_id: light row}, [missing ids]) in manifest order (`generation.selection`)."""
    cols = ["image_id", "status", "split", "width", "height", "caption", "body_keypoints"]
    plan, rows, missing = [], {}, []
    for unit, selected in iter_selected(manifest, cols, config.split, statuses(config), config.limit):
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
