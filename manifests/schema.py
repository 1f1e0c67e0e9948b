"""The manifest contract: two Parquet tables, `images` and `hands`, with explicit pyarrow schemas.

Coordinates are pixels of the *original* image after EXIF orientation was applied (origin top-left,
x right, y down) unless a field says "crop". Every field is documented in ``docs/manifest.md``;
`FIELD_DOCS` below is the single source that document is checked against.
"""

from __future__ import annotations

import logging

import pyarrow as pa

logger = logging.getLogger(__name__)

SCHEMA_VERSION = "1.2"

# Fields each minor version added, by table: a shard of an older minor version lacks them, and a
# reader gives them as nulls (`missing_allowed`).
FIELDS_ADDED = {
    (1, 1): {"images": ("source_key", "source_url", "source_caption")},
    (1, 2): {"hands": ("source_caption",)},
}

TABLES = ("images", "hands")
STATUSES = ("ok", "no_hands", "error")

# `mask_method` of a hand prep made no mask for (`--mask-method none`): its `mask` is null.
NO_MASK = "none"

NUM_HAND_KEYPOINTS = 21
NUM_BODY_KEYPOINTS = 33

_kp = pa.list_(pa.list_(pa.float32()))  # (N, 3) rows of [x, y, score]
_box = pa.list_(pa.float32())  # [x0, y0, x1, y1]

IMAGES_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("split", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("label", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("subject_id", pa.string()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("num_hands", pa.int16()),
        pa.field("body_keypoints", _kp),
        pa.field("body_score", pa.float32()),
        pa.field("hands_mask", pa.binary()),
        pa.field("image", pa.binary()),
        pa.field("image_width", pa.int32()),
        pa.field("image_height", pa.int32()),
        pa.field("source_key", pa.string()),
        pa.field("source_url", pa.string()),
        pa.field("source_caption", pa.string()),
    ],
    metadata={"handfirst.table": "images", "handfirst.schema_version": SCHEMA_VERSION},
)

HANDS_SCHEMA = pa.schema(
    [
        pa.field("hand_id", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("hand_index", pa.int16()),
        pa.field("handedness", pa.string()),
        pa.field("handedness_score", pa.float32()),
        pa.field("keypoints", _kp),
        pa.field("keypoint_source", pa.string()),
        pa.field("bbox", _box),
        pa.field("hand_size", pa.float32()),
        pa.field("crop_box", _box),
        pa.field("crop_size", pa.int32()),
        pa.field("crop", pa.binary()),
        pa.field("crop_keypoints", _kp),
        pa.field("mask", pa.binary()),
        pa.field("mask_method", pa.string()),
        pa.field("mask_score", pa.float32()),
        pa.field("heatmap", pa.binary()),
        pa.field("heatmap_shape", pa.list_(pa.int32())),
        pa.field("heatmap_dtype", pa.string()),
        pa.field("heatmap_sigma", pa.float32()),
        pa.field("label", pa.string()),
        pa.field("split", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("source_caption", pa.string()),
    ],
    metadata={"handfirst.table": "hands", "handfirst.schema_version": SCHEMA_VERSION},
)

SCHEMAS = {"images": IMAGES_SCHEMA, "hands": HANDS_SCHEMA}

FIELD_DOCS = {
    "images": {
        "image_id": "Stable id, unique in the manifest (the dataset's own id where it has one); a safe file "
        "name (`manifests.names`), since it names generated files.",
        "source_uri": "fsspec URI or path of the input image as it was read.",
        "dataset": "Source adapter name: folder, hagrid, coco, interhand, webdataset, parquet.",
        "split": "train / val / test. HaGRID splits follow user_id so no person is in two splits.",
        "width": "Original image width in pixels, after EXIF orientation.",
        "height": "Original image height in pixels, after EXIF orientation.",
        "label": "Gesture label (HaGRID class, folder name) or null.",
        "caption": "Natural-language caption built from the label and the detected hands.",
        "subject_id": "Person id where the dataset has one (HaGRID user_id), else null.",
        "status": "ok (hands found) / no_hands (image read, no hand) / error (see `error`).",
        "error": "Why the image failed (exception type and message); null unless status == error.",
        "num_hands": "Number of rows for this image in the hands table.",
        "body_keypoints": "MediaPipe Pose 33 x [x, y, visibility] in original pixels, or null if no body.",
        "body_score": "Mean landmark visibility of the body pose (0..1), or null.",
        "hands_mask": "PNG, mode L (0 or 255), union of all hand masks at (image_height, image_width).",
        "image": "JPEG of the image resized so its longest side is at most the configured bound.",
        "image_width": "Width of the stored `image` (pixels). Scale to original = image_width / width.",
        "image_height": "Height of the stored `image` (pixels).",
        "source_key": "The sample's key in its source (img2dataset `key`), or null. Added in 1.1.",
        "source_url": "Where the source downloaded the image from (img2dataset `url`), or null. Added in 1.1.",
        "source_caption": "The source's own caption (img2dataset `.txt`), kept beside `caption`, or null. "
        "Added in 1.1.",
    },
    "hands": {
        "hand_id": "`{image_id}_h{hand_index}`.",
        "image_id": "The image row this hand belongs to.",
        "hand_index": "0-based index of the hand within its image.",
        "handedness": "left / right, as seen from the person (mirroring corrected).",
        "handedness_score": "Classifier confidence of `handedness` (0..1).",
        "keypoints": "21 x [x, y, score] in original image pixels, MediaPipe order (0 wrist, 1-4 thumb, ... 17-20 little).",
        "keypoint_source": "mediapipe / mediapipe_wrist_crop / annotation.",
        "bbox": "[x0, y0, x1, y1] tight box of the keypoints in original pixels.",
        "hand_size": "max(bbox width, bbox height) in original pixels; used by size filters.",
        "crop_box": "[x0, y0, x1, y1] square crop region in original pixels; may extend past the image (padded).",
        "crop_size": "Side of the stored crop in pixels (crop is crop_size x crop_size).",
        "crop": "JPEG of the crop, RGB, crop_size x crop_size; out-of-image area is zero padded.",
        "crop_keypoints": "21 x [x, y, score] in crop pixels: (kp - crop_box[:2]) * crop_size / box side.",
        "mask": "PNG, mode L (0 or 255), hand mask in crop coordinates, crop_size x crop_size; null when mask_method is none.",
        "mask_method": "Which method made the mask: sam_vit_b / sam_vit_l / sam_vit_h / grabcut, or none (no mask made).",
        "mask_score": "Method's quality score (SAM predicted IoU; GrabCut keypoint coverage), 0..1; null without a mask.",
        "heatmap": "Raw C-order bytes of a (21, H, W) array, one Gaussian per keypoint, peak 1.",
        "heatmap_shape": "[21, H, W] of `heatmap`.",
        "heatmap_dtype": "numpy dtype string of `heatmap` (float16).",
        "heatmap_sigma": "Gaussian sigma in heatmap pixels.",
        "label": "Gesture label of the image.",
        "split": "Split of the image (copied from its images row so hand crops filter without a join).",
        "caption": "Caption for this hand crop.",
        "source_caption": "The source's own caption of the image (copied from its images row), or null. "
        "Added in 1.2.",
    },
}


def missing_allowed(version: tuple[int, ...], table: str) -> set[str]:
    """Fields of `table` that a shard of schema `version` (same major) may lack: those added since."""
    return {
        name
        for added, tables in FIELDS_ADDED.items()
        if added[0] == version[0] and added > tuple(version)
        for name in tables.get(table, ())
    }


def schema_for(table: str) -> pa.Schema:
    try:
        return SCHEMAS[table]
    except KeyError:
        raise ValueError(f"unknown manifest table {table!r}; expected one of {TABLES}") from None


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in str(version).split("."))


def _norm_type(t: pa.DataType) -> pa.DataType:
    """List types compare by value type only (Parquet round trips may rename the list's item field)."""
    if pa.types.is_list(t):
        return pa.list_(_norm_type(t.value_type))
    return t


def schema_problems(schema: pa.Schema, table: str) -> list[str]:
    """Reasons why a shard's arrow `schema` does not match this code's `table` schema (empty if it does).

    A shard must carry `handfirst.schema_version` metadata with our major version and every field of
    the schema with the same type. Extra fields are accepted only from a newer minor version (an
    additive change); with the same version they mean the writer and the schema disagree.
    """
    reasons = []
    md = schema.metadata or {}
    raw_version = md.get(b"handfirst.schema_version")
    version = raw_version.decode() if raw_version else None
    if version is None:
        reasons.append(
            "no 'handfirst.schema_version' in the Parquet schema metadata (not written by handfirst?)"
        )
    else:
        try:
            ours, theirs = version_tuple(SCHEMA_VERSION), version_tuple(version)
        except ValueError:
            ours, theirs = (0,), (-1,)
        if theirs[:1] != ours[:1]:
            reasons.append(
                f"schema version {version}, but this code reads version {SCHEMA_VERSION} (major {ours[0]})"
            )
    raw_table = md.get(b"handfirst.table")
    if raw_table is not None and raw_table.decode() != table:
        reasons.append(f"holds table {raw_table.decode()!r}, expected {table!r}")
    expected = schema_for(table)
    try:
        older = missing_allowed(version_tuple(version), table) if version else set()
    except ValueError:
        older = set()
    for f in expected:
        if f.name not in schema.names:
            if f.name not in older:  # a field added after the shard's minor version reads as nulls
                reasons.append(f"field {f.name!r} is missing")
        elif _norm_type(schema.field(f.name).type) != _norm_type(f.type):
            reasons.append(f"field {f.name!r} has type {schema.field(f.name).type}, expected {f.type}")
    extra = [n for n in schema.names if n not in expected.names]
    if extra:
        newer_minor = version is not None and version != SCHEMA_VERSION and not reasons
        if newer_minor:
            logger.info("ignoring fields %s of schema version %s", extra, version)
        else:
            reasons.append(f"fields not in schema {SCHEMA_VERSION}: {extra}")
    return reasons
