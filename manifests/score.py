"""Annotation quality: a manifest's hand keypoints scored against COCO-style ground truth.

``handfirst-manifests score MANIFEST --truth coco_keypoints.json [--json]``

- **Pairing images.** A ground-truth image is paired with the manifest image whose ``source_uri``
  has the same base name as the truth's ``file_name`` (``.../freihand/00017620.jpg`` <->
  ``00017620.jpg``). A base name that occurs twice on either side is an error (the pairing would be
  ambiguous). Truth images with no manifest row are left out of every figure and counted in
  ``images.not_in_manifest`` (e.g. a run made with ``--limit``); manifest images without truth are
  ignored (``images.without_truth``). A manifest image with ``status=error`` has no predicted hands,
  so its truth hands count as misses.
- **Ground truth.** Each annotation's ``keypoints`` is a flat list of 21 ``[x, y, v]`` in pixels,
  MediaPipe order; ``v > 0`` marks a labelled keypoint. Annotations with ``iscrowd`` or without any
  labelled keypoint are skipped. Handedness is read from ``handedness`` or ``hand_type`` ("left" /
  "right") when present.
- **Metrics** come from `manifests.matching` (the same code `handfirst-gen evaluate` uses): recall
  (share of truth hands matched), precision (share of manifest hands matched), PCK@0.1/0.2 over
  matched hands normalised by the truth hand's box size, mean keypoint error in pixels, OKS AP.
"""

from __future__ import annotations

import logging
import posixpath
from collections import defaultdict
from collections.abc import Mapping

import numpy as np

from .matching import Instance, MatchConfig, PoseScorer
from .reader import open_manifest
from .schema import NUM_HAND_KEYPOINTS
from .storage import filesystem, read_json

logger = logging.getLogger(__name__)


class TruthError(ValueError):
    """The ground-truth file is malformed (the message names the file and the entry)."""


def basename(uri: str) -> str:
    return posixpath.basename(str(uri).replace("\\", "/"))


def load_truth(path: str) -> tuple[dict[str, list[Instance]], dict[str, int]]:
    """COCO keypoints JSON -> ({file base name: hand instances}, {file base name: image id})."""
    fs, p = filesystem(path)
    try:
        data = read_json(fs, p)
    except (OSError, ValueError) as exc:
        raise TruthError(f"{path}: cannot read COCO keypoints JSON ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, Mapping) or not isinstance(data.get("images"), list):
        raise TruthError(f"{path}: not a COCO file (no 'images' list)")
    names: dict[int, str] = {}
    ids: dict[str, int] = {}
    for i, im in enumerate(data["images"]):
        try:
            name, image_id = basename(im["file_name"]), im["id"]
        except (KeyError, TypeError) as exc:
            raise TruthError(f"{path}: images[{i}] lacks file_name or id") from exc
        if name in ids:
            raise TruthError(f"{path}: file name {name!r} occurs twice (images {ids[name]} and {image_id})")
        names[image_id], ids[name] = name, image_id
    hands: dict[str, list[Instance]] = {name: [] for name in ids}
    for i, ann in enumerate(data.get("annotations", [])):
        where = f"{path}: annotations[{i}] (id {ann.get('id')})"
        if ann.get("iscrowd"):
            continue
        if ann.get("image_id") not in names:
            raise TruthError(f"{where}: image_id {ann.get('image_id')!r} is not in 'images'")
        kps = np.asarray(ann.get("keypoints") or [], dtype=np.float64)
        if kps.size != NUM_HAND_KEYPOINTS * 3:
            raise TruthError(f"{where}: expected {NUM_HAND_KEYPOINTS * 3} keypoint values, got {kps.size}")
        kps = kps.reshape(NUM_HAND_KEYPOINTS, 3)
        handed = ann.get("handedness") or ann.get("hand_type")
        handed = handed.lower() if isinstance(handed, str) and handed.lower() in ("left", "right") else None
        inst = Instance(kps, handed)
        if inst.num_valid:
            hands[names[ann["image_id"]]].append(inst)
    return hands, ids


def _manifest_hands(manifest_path: str):
    """({base name: image_id}, {image_id: status}, {image_id: [Instance]}) from a manifest."""
    m = open_manifest(manifest_path)
    images = m.read("images", columns=["image_id", "source_uri", "status"]).to_pylist()
    by_name: dict[str, str] = {}
    status: dict[str, str] = {}
    for row in images:
        name = basename(row["source_uri"])
        if name in by_name:
            raise ValueError(
                f"{manifest_path}: images {by_name[name]!r} and {row['image_id']!r} share the file name {name!r}; "
                "cannot pair them with the truth by file name"
            )
        by_name[name] = row["image_id"]
        status[row["image_id"]] = row["status"]
    preds: dict[str, list[Instance]] = defaultdict(list)
    cols = ["hand_id", "image_id", "keypoints", "handedness", "handedness_score"]
    for row in m.read("hands", columns=cols).to_pylist():
        if row["keypoints"] is None:
            continue
        kps = np.asarray(row["keypoints"], dtype=np.float64)
        if kps.shape != (NUM_HAND_KEYPOINTS, 3):
            raise ValueError(
                f"{manifest_path}: hand {row['hand_id']}: keypoints shape {kps.shape}, expected (21, 3)"
            )
        score = row["handedness_score"] if row["handedness_score"] is not None else 1.0
        # Every predicted keypoint is used; validity only restricts the truth side.
        preds[row["image_id"]].append(
            Instance(kps, row["handedness"], score, valid=np.ones(NUM_HAND_KEYPOINTS, bool))
        )
    return by_name, status, preds


def score_manifest(
    manifest: str, truth: str, config: MatchConfig | None = None, scorer: PoseScorer | None = None
) -> dict:
    """Score `manifest`'s hands against the COCO keypoints file `truth`. See the module docstring.

    `scorer`: accumulate into this `PoseScorer` (its own config is used) instead of a new one, to pool
    several (manifest, truth) pairs; the figures returned then cover everything the scorer holds.
    """
    config = scorer.config if scorer is not None else (config or MatchConfig())
    truth_hands, _ = load_truth(truth)
    by_name, status, preds = _manifest_hands(manifest)
    scorer = scorer if scorer is not None else PoseScorer("hand", config=config)
    not_in_manifest = sorted(n for n in truth_hands if n not in by_name)
    already = len(scorer.images)
    errors = []
    for name in sorted(truth_hands):
        if name not in by_name:
            continue
        image_id = by_name[name]
        if status[image_id] == "error":
            errors.append(image_id)
        scorer.add(image_id, preds.get(image_id, []), truth_hands[name])
    if len(scorer.images) == already:
        raise TruthError(
            f"no image of {truth} pairs with an image of {manifest} by file name "
            f"(truth e.g. {sorted(truth_hands)[:3]}, manifest e.g. {sorted(by_name)[:3]})"
        )
    r = scorer.result()
    result = {
        "recall": r["detected_share"],
        "precision": r["precision"],
        **{k: v for k, v in r.items() if k.startswith("pck_")},
        "mean_error_px": r["mean_error_px"],
        "matched": r["matched"],
        "truth_hands": r["count"],
        "manifest_hands": r["predicted"],
        "oks_ap": r["oks_ap"],
        "oks_ap50": r["oks_ap50"],
        "handedness_accuracy": r["handedness_accuracy"],
        "per_keypoint": scorer.per_keypoint(),
        "images": {
            "scored": len(scorer.images),
            "not_in_manifest": len(not_in_manifest),
            "without_truth": len(set(by_name) - set(truth_hands)),
            "error": len(errors),
        },
        "per_image": [
            {"image_id": im.key, "truth": im.num_targets, "manifest": im.num_preds, "matched": len(im.pairs)}
            for im in scorer.images
        ],
        "not_in_manifest": not_in_manifest,
        "manifest": str(manifest),
        "truth": str(truth),
        "settings": {
            **config.to_dict(),
            "pairing": "source_uri base name == truth file_name",
            "normaliser": "max side of the truth keypoint box",
            "oks_sigmas": "COCO-WholeBody hand",
        },
    }
    return result


def _fmt(v, pct: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.1f}%" if pct else f"{v:.2f}"


def format_score(result: dict) -> str:
    """Readable summary of `score_manifest`'s result."""
    im = result["images"]
    lines = [
        f"manifest {result['manifest']}  vs  truth {result['truth']}",
        f"images: {im['scored']} scored, {im['not_in_manifest']} truth images not in the manifest, "
        f"{im['without_truth']} manifest images without truth, {im['error']} with status=error",
        f"hands:  {result['truth_hands']} in truth, {result['manifest_hands']} in manifest, {result['matched']} matched",
        f"recall {_fmt(result['recall'], True)}   precision {_fmt(result['precision'], True)}",
    ]
    pcks = [k for k in result if k.startswith("pck_") and not k.startswith("pck_all_")]
    lines.append(
        "   ".join(f"PCK@{k[4:]} {_fmt(result[k], True)}" for k in pcks)
        + "   (matched hands, truth box size)"
    )
    lines.append(
        f"mean error {_fmt(result['mean_error_px'])} px   OKS AP {_fmt(result['oks_ap'])}   "
        f"handedness accuracy {_fmt(result['handedness_accuracy'], True)}"
    )
    return "\n".join(lines)
