"""All settings of a prep run, as one plain dataclass. The CLI's options map 1:1 onto these fields."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class PrepConfig:
    # Input and output
    input: str = "../shared/data/hagrid_mini"
    out: str = "out/manifest"
    format: str = "folder"  # folder | hagrid | coco | interhand
    label_from_dir: bool = False
    split: str | None = None  # force a split name; HaGRID derives it from user_id
    limit: int | None = None
    # Work partitioning
    shard_size: int = 64
    workers: int = 2
    scheduler: str | None = None  # tcp://host:8786 to use an existing Dask cluster
    gpu_resource: bool = False  # SAM tasks ask for a `GPU` worker resource
    # Image decoding
    max_pixels: int = 40_000_000  # decompression-bomb bound, in pixels
    max_image_side: int = 768  # the stored `image` column is resized to this longest side
    # Hand keypoints
    keypoint_source: str = "detect"  # detect | annotation (use the dataset's keypoints when present)
    min_detection_confidence: float = 0.5
    min_hand_score: float = 0.5
    max_hands: int = 4
    wrist_refine: bool = True  # second pass on upscaled crops around the body pose's wrists
    wrist_crop_scale: float = 0.35  # crop side around a wrist, as a fraction of the image's longer side
    # Body pose
    min_pose_confidence: float = 0.5
    # Masks
    mask_method: str = "auto"  # auto | sam | grabcut | none
    sam_checkpoint: str | None = None
    sam_model_type: str = "vit_b"
    device: str = "cpu"
    # Crops and heatmaps
    crop_size: int = 512
    crop_margin: float = 0.25
    heatmap_size: int | None = None  # default crop_size // 8, the latent size
    sigma: float = 1.5  # in heatmap pixels
    # Captions
    caption_templates: dict = field(default_factory=dict)  # label -> template override
    # Sources (additions)
    annotations: str | None = None  # coco/interhand annotation file; default: found under `input`
    hagrid_split: str = "user"  # user (hash of user_id) | annotation (the annotations/{split}/ folder)
    split_fractions: dict = field(default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1})
    # Running (additions)
    annotator: str = "prep.annotate:Annotator"  # module:Class; the module also defines error_row
    retries: int = 2  # extra attempts for a shard task that raised
    preview: str | None = None  # write a preview sheet (PNG) of the finished manifest here
    progress: bool = True  # tqdm bar over images
    # Per-image annotation (additions)
    body_pose: bool = True  # MediaPipe Pose; the wrist-guided hand pass needs it
    hand_model_complexity: int = 1  # MediaPipe Hands landmark model: 0 lite, 1 full
    wrist_min_visibility: float = 0.5  # pose wrists less visible than this start no wrist crop
    wrist_crop_retry: float = 1.3  # a wrist crop that finds nothing is retried at x and / this (1: off)
    wrist_crop_min_size: int = 256  # wrist crops are upscaled to at least this side (px)
    wrist_match_dist: float = 0.25  # wrist-crop hand to pose wrist distance bound (x crop side)
    wrist_min_hand_ratio: float = 0.2  # a wrist-crop hand must span this x the pose's shoulder width
    pad_retry: float = 0.25  # no hand found: search the image again inside a zero border of this x its side
    max_outside: float = 0.25  # drop detected hands reaching further past the frame than this x their size
    dedupe_iou: float = 0.3  # box IoU above which two detections are the same hand
    grabcut_size: int = 160  # GrabCut works on the hand region at most this many px per side
    grabcut_iters: int = 3
    grabcut_margin: float = 0.35  # GrabCut region: keypoint box grown by this x hand size on each side
    jpeg_quality: int = 95  # stored image and crop JPEGs

    def fingerprint(self) -> str:
        """Hash of the settings that change a shard's rows; a shard written under another is redone."""
        import hashlib
        import json

        fields = {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS}
        return hashlib.sha1(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def resolved_heatmap_size(self) -> int:
        return self.heatmap_size or max(1, self.crop_size // 8)

    def to_dict(self) -> dict:
        return asdict(self)


# Settings that change how a run executes but not a single output row (excluded from fingerprint()).
RUNTIME_FIELDS = frozenset(
    {
        "input",
        "out",
        "limit",
        "shard_size",
        "workers",
        "scheduler",
        "gpu_resource",
        "device",
        "retries",
        "preview",
        "progress",
    }
)

# Help text of every field: the CLI's --help is built from this, so the options are described in one place.
FIELD_HELP = {
    "input": "Input dataset: a folder (local path or fsspec URL) or, for coco, a keypoint JSON file.",
    "out": "Output manifest root (local path or fsspec URL); rerunning on it resumes.",
    "format": "Source adapter: folder, hagrid, coco or interhand.",
    "label_from_dir": "folder format: take the gesture label from each image's parent folder name.",
    "split": "Force this split name on every image (default: the dataset's own; HaGRID by user_id).",
    "limit": "Process only the first N images of the deterministic order (quick tries).",
    "shard_size": "Images per shard: the unit of work, retry and resume.",
    "workers": "Worker processes of the local Dask cluster (ignored with --scheduler).",
    "scheduler": "Address of an existing Dask scheduler, e.g. tcp://host:8786 (default: start a LocalCluster).",
    "gpu_resource": "SAM shard tasks require a `GPU` Dask worker resource (local workers then advertise GPU=1).",
    "max_pixels": "Refuse images with more pixels than this (decompression-bomb bound).",
    "max_image_side": "Longest side of the JPEG stored in the images table's `image` column.",
    "keypoint_source": "detect: MediaPipe; annotation: use the dataset's keypoints where present (no detector).",
    "min_detection_confidence": "MediaPipe Hands min_detection_confidence (0..1).",
    "min_hand_score": "Drop detected hands whose handedness score is below this (0..1).",
    "max_hands": "Most hands kept per image.",
    "wrist_refine": "Second detection pass on upscaled crops around the body pose's wrists (small hands).",
    "wrist_crop_scale": "Side of the crop around a wrist, as a fraction of the image's longer side.",
    "min_pose_confidence": "MediaPipe Pose min_detection_confidence (0..1).",
    "mask_method": "Hand masks: auto (sam with a checkpoint, else grabcut), sam, grabcut or none (no mask columns).",
    "sam_checkpoint": "Segment Anything checkpoint (.pth) for --mask-method sam/auto.",
    "sam_model_type": "SAM architecture of the checkpoint: vit_b, vit_l or vit_h.",
    "device": "Torch device for SAM (cpu, cuda, cuda:0, ...).",
    "crop_size": "Side of the square hand crops, in pixels.",
    "crop_margin": "Margin added around a hand's keypoint box before cropping, as a fraction of its size.",
    "heatmap_size": "Side of the keypoint heatmaps (default: crop_size // 8, the latent size).",
    "sigma": "Gaussian sigma of the keypoint heatmaps, in heatmap pixels.",
    "caption_templates": "Per-label caption template overrides (Python API only).",
    "annotations": "coco/interhand: the annotation file to read (default: found under --input).",
    "hagrid_split": "hagrid: split by a stable hash of user_id (user) or keep the annotation folder's split (annotation).",
    "split_fractions": "hagrid --hagrid-split user: split name -> fraction (Python API only).",
    "annotator": "Per-image annotator as module:Class (the module also defines error_row).",
    "retries": "Extra attempts for a shard task that raised an exception.",
    "preview": "Also write a preview sheet (PNG) of the finished manifest to this path.",
    "progress": "Show a tqdm progress bar over images.",
    "body_pose": "Run MediaPipe Pose (body_keypoints; also needed by --wrist-refine).",
    "hand_model_complexity": "MediaPipe Hands landmark model: 0 (lite, faster) or 1 (full).",
    "wrist_min_visibility": "Pose wrists with a lower visibility (0..1) start no wrist-crop search.",
    "wrist_crop_retry": "A wrist crop that finds nothing is retried at its side times and divided by this factor (1: no retry).",
    "wrist_crop_min_size": "Wrist crops are upscaled to at least this many pixels per side.",
    "wrist_match_dist": "Keep a wrist-crop hand only if its wrist is within this fraction of the crop side of a pose wrist.",
    "wrist_min_hand_ratio": "Drop wrist-crop hands smaller than this fraction of the body's shoulder width.",
    "pad_retry": "If no hand is found, search again with the image inside a zero border of this fraction of its longer side (close-ups; 0: off).",
    "max_outside": "Drop detected hands whose keypoints reach further past the image border than this fraction of the hand size (mostly cut off).",
    "dedupe_iou": "Two detections whose keypoint boxes overlap by more than this IoU are one hand.",
    "grabcut_size": "GrabCut masks: the hand region is worked on at its own resolution, at most this many pixels per side.",
    "grabcut_iters": "GrabCut masks: iterations.",
    "grabcut_margin": "GrabCut masks: the region is the keypoint box grown by this fraction of the hand size per side; outside is background.",
    "jpeg_quality": "JPEG quality of the stored images and hand crops (1..95).",
}

# Allowed values of the fields that take one of a fixed set (the CLI offers them as choices).
FIELD_CHOICES = {
    "format": ("folder", "hagrid", "coco", "interhand"),
    "keypoint_source": ("detect", "annotation"),
    "mask_method": ("auto", "sam", "grabcut", "none"),
    "sam_model_type": ("vit_b", "vit_l", "vit_h"),
    "hagrid_split": ("user", "annotation"),
}
