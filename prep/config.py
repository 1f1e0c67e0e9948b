"""All settings of a prep run, as one plain dataclass. The CLI's options map 1:1 onto these fields.

Each field declares its help, its allowed values and its range once (`manifests.settings.setting`);
``--help``, `PrepConfig.validate` and the docs all come from that declaration. Fields marked
``runtime=True`` change how a run executes but not a single output row, so they are left out of the
fingerprint that decides whether an existing shard may be kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass

from manifests.geometry import DEFAULT_SIGMA
from manifests.settings import SettingError, Settings, setting

from .captions import template_problem
from .imageio import MAX_FILE_BYTES


def _source_names() -> tuple[str, ...]:
    from .sources import SOURCES

    return tuple(SOURCES)


# `auto` and `none` are policies over the registry `prep.masks.MASK_METHODS` (sam, grabcut); a test
# keeps the two equal without importing cv2 to build the CLI.
MASK_METHOD_CHOICES = ("auto", "sam", "grabcut", "none")
# The architectures of segment_anything.sam_model_registry (its "default" alias is vit_h); tested equal.
SAM_MODEL_TYPES = ("vit_b", "vit_l", "vit_h")
KEYPOINT_SOURCES = ("detect", "annotation")


@dataclass
class PrepConfig(Settings):
    # Input and output
    input: str | None = setting(
        None,
        "Input dataset: a folder (local path or fsspec URL) or, for coco, a keypoint JSON file "
        "(required; no default).",
        runtime=True,
    )
    out: str = setting(
        "out/manifest",
        "Output manifest root (local path or fsspec URL); rerunning on it resumes.",
        runtime=True,
    )
    format: str = setting("folder", "Source adapter.", choices=_source_names)
    label_from_dir: bool = setting(
        False, "folder format: take the gesture label from each image's parent folder name."
    )
    split: str | None = setting(
        None, "Force this split name on every image (default: the dataset's own; HaGRID by user_id)."
    )
    limit: int | None = setting(
        None, "Process only the first N images of the deterministic order (quick tries).", ge=1, runtime=True
    )
    overwrite: bool = setting(
        False,
        "Replace shards in --out written under other row-shaping settings, from another input, or beyond "
        "this run's input; they are deleted before any new shard is written, while shards already written "
        "under these settings are kept, so rerunning the same command resumes (default: refuse such a rerun).",
        runtime=True,
    )
    # Work partitioning
    shard_size: int = setting(
        64, "Images per shard: the unit of work, retry and resume.", ge=1, le=1_000_000, runtime=True
    )
    workers: int = setting(
        2,
        "Worker processes of the local Dask cluster (ignored with --scheduler).",
        ge=1,
        le=4096,
        runtime=True,
    )
    scheduler: str | None = setting(
        None,
        "Address of an existing Dask scheduler, e.g. tcp://host:8786 (default: start a LocalCluster).",
        runtime=True,
    )
    worker_timeout: float = setting(
        60.0,
        "With --scheduler: seconds to wait for a Dask worker when the cluster has none, at the start or when "
        "every worker has left mid-run, before the run stops saying how many there are.",
        gt=0,
        le=86400,
        runtime=True,
    )
    shared_filesystem: bool = setting(
        False,
        "With --scheduler: local paths (--input, --out, --sam-checkpoint, --annotations) are on a filesystem "
        "every worker sees at the same path (default: refuse local paths when a worker runs on another host).",
        runtime=True,
    )
    gpu_resource: bool = setting(
        False,
        "SAM shard tasks require a `GPU` Dask worker resource (local workers then advertise GPU=1).",
        runtime=True,
    )
    # Image decoding
    max_pixels: int = setting(
        40_000_000, "Refuse images with more pixels than this (decompression-bomb bound).", ge=1
    )
    max_file_bytes: int = setting(
        MAX_FILE_BYTES,
        "Refuse input files larger than this many bytes, before decoding (only regular files are read).",
        ge=1,
    )
    max_text_bytes: int = setting(
        64 * 2**10,
        "Longest caption or metadata value (img2dataset key, url, caption, status, .txt and .json members) "
        "read from an input, in bytes; a longer one makes the sample an error row, before it is copied.",
        ge=1,
        le=2**30,
    )
    max_image_side: int = setting(
        768,
        "Longest side of the JPEG stored in the images table's `image` column; larger photos are decoded at "
        "this size (JPEG draft mode) for detection and masks too, with full resolution only for small hands.",
        ge=16,
        le=16384,
    )
    # Hand keypoints
    keypoint_source: str = setting(
        "detect",
        "detect: MediaPipe; annotation: use the dataset's keypoints where present (no detector).",
        choices=KEYPOINT_SOURCES,
    )
    min_detection_confidence: float = setting(0.5, "MediaPipe Hands min_detection_confidence.", ge=0, le=1)
    min_hand_score: float = setting(
        0.5, "Drop detected hands whose handedness score is below this.", ge=0, le=1
    )
    max_hands: int = setting(4, "Most hands kept per image.", ge=1, le=64)
    wrist_refine: bool = setting(
        True, "Second detection pass on upscaled crops around the body pose's wrists (small hands)."
    )
    wrist_crop_scale: float = setting(
        0.35, "Side of the crop around a wrist, as a fraction of the image's longer side.", gt=0, le=1
    )
    # Body pose
    min_pose_confidence: float = setting(0.5, "MediaPipe Pose min_detection_confidence.", ge=0, le=1)
    # Masks
    mask_method: str = setting(
        "auto",
        "Hand masks: auto (sam with a checkpoint, else grabcut), sam, grabcut or none (no mask columns).",
        choices=MASK_METHOD_CHOICES,
    )
    sam_checkpoint: str | None = setting(
        None, "Segment Anything checkpoint (.pth) for --mask-method sam/auto."
    )
    sam_model_type: str = setting("vit_b", "SAM architecture of the checkpoint.", choices=SAM_MODEL_TYPES)
    device: str = setting("cpu", "Torch device for SAM (cpu, cuda, cuda:0, ...).", runtime=True)
    # Crops and heatmaps
    crop_size: int = setting(512, "Side of the square hand crops, in pixels.", ge=16, le=4096)
    crop_margin: float = setting(
        0.25,
        "Margin added around a hand's keypoint box before cropping, as a fraction of its size.",
        ge=0,
        le=4,
    )
    heatmap_size: int | None = setting(
        None, "Side of the keypoint heatmaps (default: crop_size // 8, the latent size).", ge=1, le=4096
    )
    sigma: float = setting(
        DEFAULT_SIGMA, "Gaussian sigma of the keypoint heatmaps, in heatmap pixels.", gt=0, le=1000
    )
    # Captions
    caption_template: str | None = setting(
        None,
        "Image caption template for every gesture label, e.g. 'a photo of someone making {gesture} with {hands}' "
        "(placeholders {gesture}, {hands}; default: prep.captions' templates).",
    )
    hand_caption_template: str | None = setting(
        None,
        "Hand-crop caption template for every gesture label, e.g. 'a close-up of a {side} hand making {gesture}' "
        "(placeholders {gesture}, {side}; default: prep.captions' templates).",
    )
    caption_templates: dict = setting(
        default_factory=dict,
        help="Per-label caption templates (label -> template, 'hand:label' for hand crops; a config file or "
        "Python); they win over --caption-template and --hand-caption-template.",
        cli=False,
    )
    # Sources (additions)
    annotations: str | None = setting(
        None, "coco/interhand: the annotation file to read (default: found under --input)."
    )
    parquet_image_column: str = setting(
        "jpg", "parquet: the column that holds each row's encoded image bytes (img2dataset: jpg)."
    )
    hagrid_split: str = setting(
        "user",
        "hagrid: split by a stable hash of user_id (user) or keep the annotation folder's split (annotation).",
        choices=("user", "annotation"),
    )
    split_fractions: dict = setting(
        default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1},
        help="hagrid --hagrid-split user: split name -> fraction (Python API only).",
        cli=False,
    )
    # Running (additions)
    annotator: str = setting(
        "prep.annotate:Annotator",
        "Per-image annotator: a name from prep.annotators.ANNOTATORS (mediapipe) or an explicit module:Class whose "
        "module also defines error_row. Only the user chooses it; evaluate never takes it from a manifest.",
    )
    retries: int = setting(
        2, "Extra attempts for a shard task that raised an exception.", ge=0, le=100, runtime=True
    )
    preview: str | None = setting(
        None, "Also write a preview sheet (PNG) of the finished manifest to this path.", runtime=True
    )
    progress: bool = setting(True, "Show a tqdm progress bar over images.", runtime=True)
    # Per-image annotation (additions)
    body_pose: bool = setting(True, "Run MediaPipe Pose (body_keypoints; also needed by --wrist-refine).")
    hand_model_complexity: int = setting(
        1, "MediaPipe Hands landmark model: 0 (lite, faster) or 1 (full).", choices=(0, 1)
    )
    wrist_min_visibility: float = setting(
        0.5, "Pose wrists with a lower visibility start no wrist-crop search.", ge=0, le=1
    )
    wrist_crop_retry: float = setting(
        1.3,
        "A wrist crop that finds nothing is retried at its side times and divided by this factor (1: no retry).",
        ge=1,
        le=10,
    )
    wrist_crop_min_size: int = setting(
        256, "Wrist crops are upscaled to at least this many pixels per side.", ge=16, le=4096
    )
    wrist_match_dist: float = setting(
        0.25,
        "Keep a wrist-crop hand only if its wrist is within this fraction of the crop side of a pose wrist.",
        gt=0,
        le=10,
    )
    wrist_min_hand_ratio: float = setting(
        0.2, "Drop wrist-crop hands smaller than this fraction of the body's shoulder width.", ge=0, le=100
    )
    pad_retry: float = setting(
        0.25,
        "If no hand is found, search again with the image inside a zero border of this fraction of its longer "
        "side (close-ups; 0: off).",
        ge=0,
        le=4,
    )
    max_outside: float = setting(
        0.25,
        "Drop detected hands whose keypoints reach further past the image border than this fraction of the "
        "hand size (mostly cut off).",
        ge=0,
        le=100,
    )
    dedupe_iou: float = setting(
        0.3, "Two detections whose keypoint boxes overlap by more than this IoU are one hand.", ge=0, le=1
    )
    grabcut_size: int = setting(
        160,
        "GrabCut masks: the hand region is worked on at its own resolution, at most this many pixels per side.",
        ge=8,
        le=4096,
    )
    grabcut_iters: int = setting(3, "GrabCut masks: iterations.", ge=1, le=100)
    grabcut_margin: float = setting(
        0.35,
        "GrabCut masks: the region is the keypoint box grown by this fraction of the hand size per side; "
        "outside is background.",
        ge=0,
        le=10,
    )
    jpeg_quality: int = setting(95, "JPEG quality of the stored images and hand crops.", ge=1, le=95)

    def validate(self) -> PrepConfig:
        """Raise `SettingError` naming the first setting outside its range; returns self."""
        super().validate()
        if self.heatmap_size is not None and self.heatmap_size > self.crop_size:
            raise SettingError(
                f"heatmap_size (--heatmap-size) must be <= crop_size ({self.crop_size}), got {self.heatmap_size}"
            )
        for name in ("caption_templates", "split_fractions"):
            if not isinstance(getattr(self, name), dict):
                raise SettingError(f"{name} must be a dict, got {type(getattr(self, name)).__name__}")
        bad = {
            k: v for k, v in self.caption_templates.items() if not (isinstance(k, str) and isinstance(v, str))
        }
        if bad:
            raise SettingError(f"caption_templates must map label strings to template strings, got {bad}")
        flags = {
            "*": "caption_template (--caption-template)",
            "hand:*": "hand_caption_template (--hand-caption-template)",
        }
        for key, template in self.all_caption_templates().items():
            problem = template_problem(template)
            if problem:
                raise SettingError(f"{flags.get(key, f'caption_templates[{key!r}]')}: {problem}")
        fractions = self.split_fractions
        valid = all(
            isinstance(k, str)
            and isinstance(v, (int, float))
            and not isinstance(v, bool)
            and math.isfinite(v)
            and v >= 0
            for k, v in fractions.items()
        )
        if not fractions or not valid or sum(fractions.values()) <= 0:
            raise SettingError(
                f"split_fractions must map split names to finite fractions >= 0 with a positive sum, got {fractions}"
            )
        return self

    def all_caption_templates(self) -> dict:
        """The run's caption templates for `prep.captions` (``*`` / ``hand:*`` are the two flags)."""
        flags = {"*": self.caption_template, "hand:*": self.hand_caption_template}
        return {**{k: v for k, v in flags.items() if v is not None}, **self.caption_templates}

    def fingerprint(self) -> str:
        """Hash of the settings that change a shard's rows; a shard written under another is redone."""
        fields = {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS}
        return hashlib.sha1(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def resolved_heatmap_size(self) -> int:
        return self.heatmap_size or max(1, self.crop_size // 8)

    def resolved_mask_method(self) -> str:
        """The mask method a run uses: ``auto`` is sam when a SAM checkpoint is given, else grabcut."""
        if self.mask_method == "auto":
            return "sam" if self.sam_checkpoint else "grabcut"
        return self.mask_method


# Settings that change how a run executes but not a single output row (excluded from fingerprint()).
RUNTIME_FIELDS = frozenset(f.name for f in dataclasses.fields(PrepConfig) if f.metadata.get("runtime"))
